"""sbatch_benchmarking.sh for Megatron-MoE-ModelZoo users: its environment variables and trailing
Megatron flags, translated into moe-launch overrides; moe-launch does everything else.

    NNODES=32 MODEL=Qwen3-235B-A22B PP=8 VPP=4 TP=4 EP=8 CP=2 GBS=256 SEQ_LEN=32768 PR=bf16 \\
        bash sbatch_benchmarking.sh --recompute-granularity selective --recompute-modules layernorm moe

prints the equivalent `moe-launch ...` command, then runs it (cluster=slurm). Unset variables take the
model's ModelZoo benchmark defaults (DEFAULTS). Trailing flags that a config field owns become that
field's override (via megatron_args.TABLE, so the schema stays the single owner); all others go to
megatron.raw, where Megatron's own parser checks them. Any value we cannot translate is an error.
"""
from __future__ import annotations

import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Mapping, Optional

from launcher.errors import ConfigError, closest

MODELS = {"Qwen3-30B-A3B": "qwen3_30b_a3b", "Qwen3-235B-A22B": "qwen3_235b_a22b", "Mixtral-8x7B": "mixtral_8x7b",
          "Mixtral-8x22B": "mixtral_8x22b", "DeepSeek-V2": "deepseek_v2", "DeepSeek-V2-Lite": "deepseek_v2_lite",
          "DeepSeek-V3": "deepseek_v3"}


def _zoo(tp, pp, ep, cp, vpp, mbs, gbs, nnodes, run_time, dispatcher) -> dict:
    return dict(TP=tp, PP=pp, EP=ep, CP=cp, VPP=vpp, MBS=mbs, GBS=gbs, NNODES=nnodes, SEQ_LEN=4096,
                RUN_TIME=run_time, DISPATCHER=dispatcher)


# ModelZoo's runtime.conf benchmark layout per model (TP PP EP CP VPP MBS GBS NNODES RUN_TIME dispatcher,
# seq 4096), used for variables the caller leaves unset; its flex dispatcher is DeepEP
DEFAULTS = {
    "qwen3_30b_a3b": _zoo(1, 1, 8, 1, 1, 1, 256, 4, "00:20:00", "alltoall"),
    "qwen3_235b_a22b": _zoo(2, 8, 32, 1, 4, 1, 256, 32, "00:20:00", "deepep"),
    "mixtral_8x7b": _zoo(1, 4, 8, 1, 8, 1, 256, 8, "00:20:00", "alltoall"),
    "mixtral_8x22b": _zoo(2, 8, 8, 1, 1, 1, 256, 16, "00:20:00", "alltoall"),
    "deepseek_v2": _zoo(1, 16, 8, 1, 2, 1, 1024, 32, "00:20:00", "alltoall"),
    "deepseek_v2_lite": _zoo(1, 1, 8, 1, 1, 1, 512, 1, "00:20:00", "alltoall"),
    "deepseek_v3": _zoo(1, 16, 64, 1, 1, 1, 8192, 128, "00:40:00", "deepep"),
}
PRECISIONS = {"bf16": "bf16", "fp8": "fp8_blockwise", "mxfp8": "mxfp8"}
DISPATCHERS = ("alltoall", "allgather", "deepep", "hybridep", "ncclep")
INTS = {"NNODES": "cluster.nodes", "TP": "parallel.tp", "PP": "parallel.pp", "EP": "parallel.ep",
        "ETP": "parallel.etp", "CP": "parallel.cp", "MBS": "train.micro_batch_size",
        "GBS": "train.global_batch_size", "SEQ_LEN": "train.seq_length", "TRAIN_ITERS": "train.train_iters",
        "PROFILE_STEP_START": "train.profile_step_start", "PROFILE_STEP_END": "train.profile_step_end"}
STRINGS = {"RUN_TIME": "cluster.time", "ACCOUNT": "cluster.account", "PARTITION": "cluster.partition",
           "CONTAINER_IMAGE": "cluster.container_image", "RUN_NAME": "launch.name", "SEGMENT": "cluster.segment"}
# ModelZoo variables with no meaning here, and why (a note, not an error: they are often exported globally)
IGNORED = {"CLUSTER": "cluster settings come from ACCOUNT/PARTITION/CONTAINER_* here",
           "MEGATRON_PATH": "megatron-core is the pinned pip package", "MCORE_RELEASE_VERSION": "pinned: 0.19.2",
           "WANDB_PROJECT": "not wired", "WANDB_API_KEY": "not wired", "PRETRAIN": "runs train from scratch",
           "DATASET": "use DATA_PATH", "COMMENT": "not wired", "TRAINING_PARAMS_PATH": "configs are conf/",
           "BINDPCIE_PATH": "not wired"}
NSYS = ["nsys", "profile", "--sample=none", "--cpuctxsw=none", "-t", "cuda,nvtx", "--capture-range=cudaProfilerApi",
        "--capture-range-end=stop", "-f", "true", "-x", "true"]


def hydra_quote(value: str) -> str:
    """A Hydra override value that stays this literal string: quotes and backslashes before them escaped,
    `${` escaped so it is not an interpolation."""
    out = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
    out = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", out)
    out = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, out)
    return f"'{out}'"


# left unquoted (readable): a whole number as Hydra reads it back, or a word that starts with a letter
# or / and holds no Hydra syntax and is not one Hydra would type (null, true, ...)
PLAIN = re.compile(r"0|[1-9][0-9]*|[A-Za-z/][A-Za-z0-9_./:@%+-]*")
TYPED_WORDS = ("null", "true", "false", "nan", "inf")


def hydra_value(value: str) -> str:
    """`value` as a Hydra override value that arrives as this exact string."""
    return value if PLAIN.fullmatch(value) and value.lower() not in TYPED_WORDS else hydra_quote(value)


def _list(values: list[str]) -> str:
    return "[" + ",".join(hydra_value(v) for v in values) + "]"


class Overrides:
    """moe-launch overrides in order; the same key from two places must agree (no silent last-wins)."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[str, str]] = {}  # key -> (override text, where it came from)
        self.weak: set[str] = set()  # keys set from a model default: an explicit value replaces them

    def set(self, key: str, text: str, source: str, weak: bool = False) -> None:
        if key in self.items and self.items[key][0] != text and key not in self.weak:
            raise ConfigError(source, text.split("=", 1)[1], f"sets {key}, which {self.items[key][1]} already set "
                              f"to {self.items[key][0].split('=', 1)[1]}", "give it once")
        if key in self.items and key not in self.weak and weak:
            return
        self.items[key] = (text, source)
        (self.weak.add if weak else self.weak.discard)(key)

    def value(self, key: str, text: str, source: str, weak: bool = False) -> None:
        self.set(key, f"{key}={hydra_value(text)}", source, weak)

    def argv(self) -> list[str]:
        return [text for text, _ in self.items.values()]


def _int(env: Mapping[str, str], name: str) -> Optional[int]:
    raw = env.get(name, "")
    if raw == "":
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(name, raw, "must be a positive integer", f"e.g. {name}=1")
    return int(raw)


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "0") or "0"
    if raw not in ("0", "1"):
        raise ConfigError(name, raw, "must be 0 or 1", f"set {name}=1 to turn it on")
    return raw == "1"


def _model(env: Mapping[str, str]) -> str:
    from launcher.config.compose import group_options

    name = env.get("MODEL", "")
    ours = group_options("model")
    if name in MODELS:
        return MODELS[name]
    if name in ours:
        return name
    near = closest(name, [*MODELS, *ours])
    raise ConfigError("MODEL", name, f"is not a known model ({', '.join(MODELS)}; or {', '.join(ours)})",
                      f"did you mean {near}?" if near else "set MODEL to one of those")


def _max_positions(model: str) -> Optional[int]:
    import yaml

    from launcher.config.compose import CONF_DIR

    value = yaml.safe_load((CONF_DIR / "model" / f"{model}.yaml").read_text()).get("max_position_embeddings")
    return int(value) if value is not None else None


def _choice(env: Mapping[str, str], name: str, options, default: Optional[str]) -> Optional[str]:
    value = env.get(name) or default
    if value is not None and value not in options:
        near = closest(value, options)
        raise ConfigError(name, value, f"must be one of {', '.join(options)}",
                          f"did you mean {near}?" if near else f"set {name} to one of those")
    return value


def env_overrides(env: Mapping[str, str], run_dir: Path) -> Overrides:
    """The environment interface -> overrides (before the trailing flags)."""
    from launcher.config.compose import group_options

    ov = Overrides()
    model = _model(env)
    defaults = {k: str(v) for k, v in DEFAULTS.get(model, {}).items()}
    given = {k: v for k, v in env.items() if v != ""}
    merged = {**defaults, **given}

    def src(name: str) -> dict:
        """Where a value came from; a model default is weak (a trailing flag may replace it)."""
        return {"source": name, "weak": False} if name in given else \
            {"source": f"{name} (ModelZoo default for {model})", "weak": True}
    ov.set("model", f"model={model}", "MODEL")
    ov.set("cluster", "cluster=slurm", "sbatch_benchmarking.sh")
    ov.set("train", "train=pretrain", "sbatch_benchmarking.sh")
    ov.value("launch.run_dir", str(run_dir), "OUTPUT_PATH")
    for name, key in INTS.items():
        n = _int(merged, name)
        if n is not None:
            ov.set(key, f"{key}={n}", **src(name))
    vpp = _int(merged, "VPP")
    if vpp is not None:
        if vpp > 1:
            ov.set("parallel.vpp", f"parallel.vpp={vpp}", **src("VPP"))
        else:
            ov.set("parallel.vpp", "parallel.vpp=null", **src("VPP"))
    if (_int(merged, "PP") or 1) > 1:
        ov.value("parallel.pipeline_layout", "auto", **src("PP"))  # ModelZoo counts embedding and loss as layers too
    seq, max_pos = _int(merged, "SEQ_LEN"), _max_positions(model)
    if seq and max_pos and seq > max_pos:  # as ModelZoo does: longer sequences widen the position table
        ov.set("model.max_position_embeddings", f"model.max_position_embeddings={seq}", **src("SEQ_LEN"))
    for name, key in STRINGS.items():
        if merged.get(name):
            ov.value(key, merged[name], **src(name))
    hardware = _choice(merged, "HARDWARE", group_options("hardware"), None)
    if hardware:
        ov.set("hardware", f"hardware={hardware}", "HARDWARE")
    if _flag(merged, "GB200_CLUSTER") and "hardware" not in ov.items:
        ov.set("hardware", "hardware=gb200", "GB200_CLUSTER")
    if merged.get("CONTAINER_MOUNTS"):
        ov.set("cluster.container_mounts", f"cluster.container_mounts={_list(merged['CONTAINER_MOUNTS'].split(','))}",
               "CONTAINER_MOUNTS")
    ov.set("precision", f"precision={PRECISIONS[_choice(merged, 'PR', tuple(PRECISIONS), 'bf16')]}", "PR")
    dispatcher = _choice(merged, "DISPATCHER", DISPATCHERS, None)
    if dispatcher:
        ov.set("dispatcher", f"dispatcher={dispatcher}", **src("DISPATCHER"))
    if merged.get("MOE_GROUPED_GEMM"):
        gg = _choice(merged, 'MOE_GROUPED_GEMM', ('true', 'false'), None)
        ov.set("model.moe_grouped_gemm", f"model.moe_grouped_gemm={gg}",
               "MOE_GROUPED_GEMM")
    if _flag(merged, "A2A_OVERLAP"):
        ov.set("dispatcher.overlap_moe_expert_parallel_comm", "dispatcher.overlap_moe_expert_parallel_comm=true",
               "A2A_OVERLAP")
        ov.set("dispatcher.delay_wgrad_compute", "dispatcher.delay_wgrad_compute=true", "A2A_OVERLAP")
    if _flag(merged, "OPTIMIZER_OFFLOAD"):
        for key in ("train.optimizer_cpu_offload", "train.overlap_cpu_optimizer_d2h_h2d",
                    "precision.use_precision_aware_optimizer"):
            ov.set(key, f"{key}=true", "OPTIMIZER_OFFLOAD")
    _profile(merged, ov, run_dir, model)
    if merged.get("DATA_PATH"):
        ov.set("data", "data=indexed", "DATA_PATH")
        ov.set("data.paths", f"data.paths={_list(merged['DATA_PATH'].split())}", "DATA_PATH")
        if merged.get("TOKENIZER_MODEL"):
            ov.set("data.tokenizer_type", "data.tokenizer_type=HuggingFaceTokenizer", "TOKENIZER_MODEL")
            ov.value("data.tokenizer_model", merged["TOKENIZER_MODEL"], "TOKENIZER_MODEL")
    if _flag(merged, "DRY_RUN"):
        ov.set("launch.dry_run", "launch.dry_run=true", "DRY_RUN")
    return ov


def _profile(env: Mapping[str, str], ov: Overrides, run_dir: Path, model: str) -> None:
    """PROFILE=1|nsys: Megatron's cudaProfilerApi range on rank 0, each rank under nsys (only rank 0
    captures); PROFILE=torch: torch.profiler traces into the run directory's tensorboard folder."""
    mode = _choice(env, "PROFILE", ("0", "1", "nsys", "torch"), "0")
    if mode == "0":
        return
    ov.set("train.profile", "train.profile=true", "PROFILE")
    ov.set("train.profile_ranks", "train.profile_ranks=[0]", "PROFILE")
    if mode == "torch":
        ov.set("megatron.extra", "megatron.extra={use_pytorch_profiler: true, tensorboard_dir: "
               f"{hydra_value(str(run_dir / 'tensorboard'))}}}", "PROFILE")
        return
    out = str(run_dir / "nsys" / f"{model}-rank%q{{SLURM_PROCID}}")
    ov.set("cluster.launch_prefix", f"cluster.launch_prefix={_list([*NSYS, '-o', out])}", "PROFILE")


def _flag_rows() -> dict[str, tuple[str, str]]:
    """Megatron flag -> (schema field, row kind) for every flag a schema field owns."""
    from launcher.plan.megatron.table import TABLE

    rows = {flag: (path, kind) for path, flag, kind in TABLE}
    rows.update({"--recompute-granularity": ("recompute.granularity", "value"),
                 "--num-virtual-stages-per-pipeline-rank": ("parallel.vpp", "value"),
                 "--pipeline-model-parallel-layout": ("parallel.pipeline_layout", "value"),
                 "--sequence-parallel": ("parallel.sequence_parallel", "true"),
                 "--transformer-impl": ("model.transformer_impl", "value"),
                 "--moe-grouped-gemm": ("model.moe_grouped_gemm", "true"),
                 "--num-query-groups": ("model.num_query_groups", "value"),
                 "--vocab-size": ("model.vocab_size", "value")})
    return rows


def _split_flags(args: list[str]) -> list[list[str]]:
    """["--a", "1", "--b=2", "--c"] -> [["--a", "1"], ["--b", "2"], ["--c"]]."""
    groups: list[list[str]] = []
    for tok in args:
        if tok.startswith("--"):
            flag, eq, value = tok.partition("=")
            groups.append([flag, value] if eq else [flag])
        elif groups:
            groups[-1].append(tok)
        else:
            raise ConfigError("sbatch_benchmarking.sh args", tok, "trailing arguments must start with a --flag",
                              "pass Megatron flags, e.g. --recompute-granularity selective")
    return groups


def flag_overrides(args: list[str], ov: Overrides) -> None:
    """Trailing Megatron flags: schema-owned ones become field overrides, the rest megatron.raw."""
    from launcher.plan.megatron.table import OWNED_FLAGS

    rows, raw = _flag_rows(), []
    for flag, *values in _split_flags(args):
        src = f"trailing {flag}"
        if flag == "--moe-router-force-load-balancing" and not values:
            ov.set("train.routing", "train.routing=forced_balance", src)
        elif flag in ("--bf16", "--group-query-attention", "--mock-data") and not values:
            continue  # what the configs already say (PR=bf16, the model's GQA, mock data)
        elif flag in rows:
            path, kind = rows[flag]
            if kind in ("true", "false") and values:
                raise ConfigError(src, " ".join(values), "is a switch and takes no value", f"write {flag} alone")
            if kind == "value" and len(values) != 1:
                raise ConfigError(src, " ".join(values), "takes exactly one value", f"write {flag} VALUE")
            text = {"true": "true", "false": "false"}.get(kind) or \
                (_list(values) if kind == "list" else hydra_value(values[0]))
            ov.set(path, f"{path}={text}", src)
        elif flag in OWNED_FLAGS:
            raise ConfigError(src, flag, "is set from the configs and has no single field to translate it to",
                              "use the environment variables (TP, PP, VPP, ...) or a moe-launch override")
        else:
            raw += [flag, *values]
    if raw:
        ov.set("megatron.raw", f"megatron.raw={_list(raw)}", "trailing flags")


def translate(env: Mapping[str, str], args: list[str], now: Optional[str] = None) -> list[str]:
    """Environment + trailing flags -> moe-launch overrides. Raises ConfigError."""
    for name in ("PR", "DISPATCHER", "MODEL"):
        if "\n" in env.get(name, ""):
            raise ConfigError(name, env[name], "contains a newline", "write it on one line")
    model = _model(env)
    name = env.get("RUN_NAME") or model
    stamp = now or time.strftime("%Y%m%d-%H%M%S")
    run_dir = (Path(env.get("OUTPUT_PATH") or "runs") / f"{name}-{stamp}").absolute()
    ov = env_overrides(env, run_dir)
    flag_overrides(args, ov)
    return ov.argv()


def main(args: Optional[list[str]] = None, env: Optional[Mapping[str, str]] = None) -> int:
    args = sys.argv[1:] if args is None else args
    env = os.environ if env is None else env
    for name in sorted(set(IGNORED) & set(k for k, v in env.items() if v)):
        print(f"sbatch_benchmarking: ignoring {name} ({IGNORED[name]})", file=sys.stderr)
    try:
        overrides = translate(env, args)
    except ConfigError as e:
        print(f"sbatch_benchmarking: error: {e}", file=sys.stderr)
        return 2
    print("sbatch_benchmarking: moe-launch " + " ".join(shlex.quote(o) for o in overrides), file=sys.stderr)
    from launcher.cli import main as moe_launch

    return moe_launch(overrides)


if __name__ == "__main__":
    raise SystemExit(main())

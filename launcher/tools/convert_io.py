"""What moe-convert checks and hands to recipes/convert.py, one direction each (login side, no torch).

import: the HF checkpoint (a directory, or a hub repo id fetched with huggingface_hub), its family and every field
        against the composed model, the padded vocabulary, --out; then the world-1 plan's argv + --save.
export: the run's plan.json and the checkpoint iteration, the model's family (config.json written from our model
        config), the quantization request (NVFP4 needs a GPU; calibration data must be Megatron .bin/.idx), --out;
        then the world-1 argv of the same config + --load/--ckpt-step, model weights only.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from launcher.config.choices import Device
from launcher.config.cluster import ClusterConfig
from launcher.config.schema import RunConfig
from launcher.errors import ConfigError
from launcher.plan.vocab import padded
from launcher.tools import convert_hf

QUANTS = ("fp8", "nvfp4")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "generation_config.json")
RECORD = "convert.json"  # written next to an imported checkpoint; train.checkpoint.init_from reads it


class Mismatches(Exception):
    """Several one-line errors at once (each field of an HF config that disagrees)."""

    def __init__(self, errors: list[ConfigError]):
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


@dataclass
class Job:
    recipe_argv: list[str]
    env: dict
    out: Path
    lines: list[str]
    next_step: str = ""
    done: str = ""
    scratch: Optional[Path] = None
    entry: str = "recipes.convert"
    log_name: str = "convert.log"
    finish: Callable[[], None] = field(default=lambda: None)


def check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError("--out", str(out), "exists and is not an empty directory (nothing is overwritten)",
                          "name a new directory")


def world_one(cfg: RunConfig, gpus: int) -> RunConfig:
    """The run's config on one process: TP = PP = EP = CP = 1, the local spec without grouped GEMM (every expert a
    SequentialMLP module, which modelopt's rules name one by one; the local spec keys its checkpoint as the TE
    spec does), the default dispatcher, no recompute, BF16 numerics, nothing saved or loaded by the plan.
    Distributed checkpointing reshards between this and any layout."""
    c = dataclasses.replace
    model = c(cfg.model, transformer_impl="local", moe_grouped_gemm=False, moe_grouped_gemm_impl="te")
    parallel = c(cfg.parallel, tp=1, pp=1, vpp=None, pipeline_layout=None, ep=1, etp=1, cp=1, sequence_parallel=None,
                 use_megatron_fsdp=False, overlap_grad_reduce=False, overlap_param_gather=False)
    precision = type(cfg.precision)(name="bf16") if cfg.precision.params_dtype == "bf16" else cfg.precision
    ck = c(cfg.train.checkpoint, enabled=False, init_from=None)
    train = c(cfg.train, checkpoint=ck, save=None, load=None, save_interval=None, micro_batch_size=1,
              global_batch_size=1, kernel_profile=None, tensorboard_dir=None, wandb_project=None,
              optimizer_cpu_offload=False, overlap_cpu_optimizer_d2h_h2d=False)
    # the conversion runs here, whatever executor trained: a local cluster of one process on this machine's device
    cluster = ClusterConfig(device=Device.cuda if gpus else Device.cpu, gpus_per_node=1 if gpus else None,
                            nproc_cpu=1, env=dict(cfg.cluster.env), secret_names=list(cfg.cluster.secret_names))
    # no optimizer is built (the memory estimate overcounts); Megatron validates this argv at this world size in the
    # recipe itself (parse_and_validate_args), so its validator here would only repeat that
    launch = c(cfg.launch, dry_run=True, skip_memory_check=True, megatron_validate=False)
    return c(cfg, model=model, parallel=parallel, precision=precision, train=train, cluster=cluster, launch=launch,
             dispatcher=type(cfg.dispatcher)(), recompute=type(cfg.recompute)())


def plan_world_one(cfg: RunConfig):
    """The Megatron argv and environment of the config at one process, through the launcher's own rules and flag
    table (Megatron's own validation runs in the recipe, at this world size)."""
    from launcher.plan.plan import build_plan
    from launcher.plan.probe import detect

    probe = detect()
    one = world_one(cfg, probe.gpus)
    plan = build_plan(one, probe)
    return one, plan


def json_dump(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="moe-convert-"))


def _compose(overrides: list[str]) -> RunConfig:
    from launcher.config.compose import compose

    return compose(overrides)[1]


def _largest_power_of_two_dividing(n: int) -> int:
    return n & -n


def embedding_rows(cfg: RunConfig, tp: int = 1) -> int:
    """The embedding rows Megatron builds: its tokenizer's vocabulary (a Hugging Face tokenizer's own size, else
    model.vocab_size) padded to a multiple of make_vocab_size_divisible_by x TP."""
    from launcher.plan.vocab import tokenizer_rows

    return tokenizer_rows(cfg, tp)


def check_vocab(cfg: RunConfig, hf_rows: int) -> int:
    """modelopt copies the HF embedding and lm_head row for row: Megatron's rows must not outnumber the HF ones.
    Fewer (a tokenizer smaller than the embedding, as Qwen's 151,669 tokens in 151,936 rows) are taken from the
    top (recipes/convert.py): the rows past the tokenizer are never looked up. Returns the rows."""
    m, rows = cfg.model, embedding_rows(cfg)
    if rows > hf_rows:
        fix = (f"set model.make_vocab_size_divisible_by={_largest_power_of_two_dividing(hf_rows)}"
               if rows == padded(m.vocab_size, m.make_vocab_size_divisible_by, 1) else
               "import with the tokenizer the checkpoint was trained with")
        raise ConfigError("model.make_vocab_size_divisible_by", m.make_vocab_size_divisible_by,
                          f"makes Megatron build {rows} embedding rows; the HF embedding has {hf_rows}", fix)
    return rows


def _hf_dir(source: str) -> Path:
    """A local directory as is; otherwise a hub repo id, fetched (config, safetensors, tokenizer files only)."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists() or source.count("/") != 1 or source.startswith((".", "/")):
        raise ConfigError("--hf", source, "is neither a directory nor a hub repo id (owner/name)",
                          "point it at a Hugging Face checkpoint directory")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return Path(snapshot_download(repo_id=source, allow_patterns=["*.json", "*.safetensors", *TOKENIZER_FILES]))
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise ConfigError("--hf", source, f"could not be fetched from the hub ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})",
                          "download it where the hub is reachable and pass the directory") from None


def prepare_import(opts: dict, overrides: list[str]) -> Job:
    out = Path(opts["--out"]).absolute()
    check_out(out)
    hf = _hf_dir(opts["--hf"])
    raw = convert_hf.read_hf_config(hf)
    arch = convert_hf.architecture(raw, str(hf))
    cfg = _compose(overrides)
    errors = convert_hf.mismatches(cfg.model, raw, arch)
    if errors:
        raise Mismatches(errors)
    rows = check_vocab(cfg, raw["vocab_size"])
    if not any(hf.glob("*.safetensors")):
        raise ConfigError("--hf", str(hf), "has no *.safetensors (modelopt reads safetensors only)",
                          "save the model with save_pretrained(safe_serialization=True)")
    one, plan = plan_world_one(cfg)
    argv = ["import", str(hf), str(out), "--", *plan.argv, "--save", str(out), "--save-interval", "1"]

    def finish() -> None:
        json_dump(out / RECORD, {"direction": "import", "moe_launch": ["moe-convert", *overrides],
                                 "source": opts["--hf"], "hf_dir": str(hf),
                                 "architecture": arch, "model": dataclasses.asdict(cfg.model),
                                 "padded_vocab": rows, "argv": plan.argv})
    res = plan.resolved
    dropped = ([f"the HF embedding's rows {rows}..{raw['vocab_size'] - 1} lie past this tokenizer's vocabulary and "
                "are not imported"] if rows < raw["vocab_size"] else [])
    return Job(recipe_argv=argv, env=plan.env, out=out, finish=finish,
               lines=[f"import {arch} from {hf} into {cfg.model.name} ({cfg.model.num_layers} layers, "
                      f"{cfg.model.num_experts} experts) on 1 x {res.device}, local spec", *dropped],
               next_step=f"; train from it with: moe-launch {' '.join(overrides)} train.checkpoint.init_from={out}")


# ---------------------------------------------------------------------------------------------------- export


def find_plan(ckpt: Path, plan_opt: Optional[str]) -> tuple[Path, dict]:
    """plan.json: --plan, else in --ckpt (a run directory), else next to it (--ckpt is <run_dir>/checkpoints);
    an imported checkpoint's convert.json says the same (its overrides and argv)."""
    candidates = [Path(plan_opt)] if plan_opt else [ckpt / "plan.json", ckpt.parent / "plan.json", ckpt / RECORD]
    for path in candidates:
        if path.is_file():
            try:
                return path, json.loads(path.read_text())
            except ValueError as e:
                raise ConfigError("--plan", str(path), f"is not JSON ({e})",
                                  "point it at the run's plan.json") from None
    raise ConfigError("--ckpt", str(ckpt), "has no plan.json in it or next to it (the run's model and config)",
                      "pass the run directory, or --plan RUN_DIR/plan.json")


def checkpoint_dir(ckpt: Path, plan: dict) -> Path:
    """The directory holding iter_*: --ckpt itself, or the run's save directory."""
    from launcher.records.checkpoint_dir import iterations

    saved = (plan.get("checkpoint") or {}).get("save")
    for d in (ckpt, ckpt / "checkpoints", *([Path(saved)] if saved else [])):
        if iterations(d):
            return d
    raise ConfigError("--ckpt", str(ckpt), "holds no iter_* checkpoint (nor does the run's train.save)",
                      "train with checkpoints (train.checkpoint.enabled=true) or point --ckpt at them")


def pick_iteration(ckpt_dir: Path, wanted: Optional[str]) -> int:
    from launcher.records.checkpoint_dir import is_complete, iterations
    from launcher.run.resume import find_resume

    if wanted is None:
        point = find_resume(ckpt_dir)
        if point is None:
            raise ConfigError("--ckpt", str(ckpt_dir), "holds no complete checkpoint (metadata.json missing: every "
                              "save was killed)", "train until a save completes")
        return point.iteration
    found = dict(iterations(ckpt_dir))
    if not wanted.isdigit() or int(wanted) not in found or not is_complete(found[int(wanted)]):
        have = [it for it, p in found.items() if is_complete(p)]
        raise ConfigError("--iteration", wanted, f"is not a complete checkpoint in {ckpt_dir}",
                          f"pick one of {sorted(have)}")
    return int(wanted)


def check_quant(opts: dict, device: str) -> None:
    quant = opts.get("--quant")
    if quant is None:
        for key in ("--calib-data", "--calib-samples"):
            if key in opts:
                raise ConfigError(key, opts[key], "calibrates a quantization, and --quant is not set",
                                  "add --quant fp8 (or drop it)")
        return
    if quant not in QUANTS:
        raise ConfigError("--quant", quant, f"is not one of {', '.join(QUANTS)}", "pick one of them")
    if quant == "nvfp4" and device != "cuda":
        raise ConfigError("--quant", quant, "NVFP4 quantization runs modelopt's CUDA kernels; this machine has no "
                          "GPU", "export on a GPU host, or --quant fp8")
    if "--calib-data" not in opts:
        raise ConfigError("--calib-data", None, f"--quant {quant} calibrates activation scales on real text",
                          "add --calib-data PREFIX (Megatron .bin/.idx, e.g. from moe-prepare-data)")
    from launcher.records.indexed import IndexedDataError, read_idx

    try:
        read_idx(opts["--calib-data"])
    except IndexedDataError as e:
        raise ConfigError("--calib-data", opts["--calib-data"], str(e), "prepare it with moe-prepare-data") from None
    n = opts.get("--calib-samples", "64")
    if not n.isdigit() or int(n) < 1:
        raise ConfigError("--calib-samples", n, "must be a positive number of sequences", "e.g. --calib-samples 64")


def model_flags(argv: list[str]) -> dict[str, list[str]]:
    """The model-architecture flags of an argv (the flag table's model.* rows) with their values."""
    from launcher.plan.megatron.table import TABLE

    wanted = {flag for name, flag, _ in TABLE if name.startswith("model.")} | {"--num-query-groups", "--vocab-size"}
    out: dict[str, list[str]] = {}
    for i, a in enumerate(argv):
        if a in wanted:
            vals = []
            for b in argv[i + 1:]:
                if b.startswith("--"):
                    break
                vals.append(b)
            out[a] = vals
    return out


def check_same_model(run_argv: list[str], argv: list[str], plan_path: Path) -> None:
    """The config composed again from the run's moe-launch command must build the model the run trained (conf/
    files may have changed since)."""
    ran, now = model_flags(run_argv), model_flags(argv)
    for flag in sorted(set(ran) | set(now)):
        if ran.get(flag) != now.get(flag):
            raise ConfigError(flag, " ".join(now.get(flag) or ["(absent)"]), f"the run's argv ({plan_path}) has "
                              f"{' '.join(ran.get(flag) or ['(absent)'])}: conf/ changed since the run",
                              "add the override that restores the run's value")


def _config_dir(cfg: RunConfig, arch: str) -> Path:
    """config.json for modelopt's exporter (it copies every non-safetensors file of this directory into the export:
    the run's tokenizer files go along)."""
    d = scratch_dir()
    (d / "config.json").write_text(json.dumps(convert_hf.hf_config(cfg.model, arch), indent=2) + "\n")
    tok = cfg.data.tokenizer_model
    if tok and Path(tok).is_dir():
        for name in TOKENIZER_FILES:
            if (Path(tok) / name).is_file():
                shutil.copy(Path(tok) / name, d / name)
    return d


def _trained(opts: dict, overrides: list[str]):
    """The checkpoint to read and the world-1 plan of the model that wrote it (export and compare)."""
    ckpt = Path(opts["--ckpt"]).absolute()
    plan_path, record = find_plan(ckpt, opts.get("--plan"))
    ckpt_dir = checkpoint_dir(ckpt, record)
    iteration = pick_iteration(ckpt_dir, opts.get("--iteration"))
    if "--use-megatron-fsdp" in record.get("argv", []):
        raise ConfigError("--ckpt", str(ckpt_dir), "was written by Megatron FSDP (fsdp_dtensor format); moe-convert "
                          "reshards torch_dist checkpoints", "export a run trained without parallel.use_megatron_fsdp")
    cfg = _compose([*record.get("moe_launch", ["moe-launch"])[1:], *overrides])
    arch = convert_hf.family_of(cfg.model)
    errors = convert_hf.mismatches(cfg.model, convert_hf.hf_config(cfg.model, arch), arch)
    if errors:
        raise Mismatches(errors)
    one, plan = plan_world_one(cfg)
    check_same_model(record.get("argv", []), plan.argv, plan_path)
    load = ["--load", str(ckpt_dir), "--ckpt-step", str(iteration), "--no-load-optim", "--no-load-rng",
            "--exit-on-missing-checkpoint"]  # without it Megatron would export a random initialization
    return cfg, arch, plan, ckpt_dir, iteration, load


def prepare_export(opts: dict, overrides: list[str]) -> Job:
    out = Path(opts["--out"]).absolute()
    check_out(out)
    cfg, arch, plan, ckpt_dir, iteration, load = _trained(opts, overrides)
    check_quant(opts, plan.resolved.device)
    config_dir = _config_dir(cfg, arch)
    quant = ["--quant", opts["--quant"], "--calib-data", opts["--calib-data"],
             "--calib-samples", opts.get("--calib-samples", "64")] if opts.get("--quant") else []
    argv = ["export", str(config_dir), str(out), *quant, "--", *plan.argv, *load]
    what = f"{opts['--quant']} (calibrated on {opts['--calib-data']})" if quant else "bf16"
    return Job(recipe_argv=argv, env=plan.env, out=out, scratch=config_dir,
               lines=[f"export {ckpt_dir} iteration {iteration} ({cfg.model.name}) as {arch}, {what}, "
                      f"on 1 x {plan.resolved.device}"])


def prepare_compare(opts: dict, overrides: list[str]) -> Job:
    """Both models on the same held-out tokens (recipes/convert_check.py); --hf may list several directories
    (comma-separated: the Megatron model runs once); each result goes to its --json (default <hf>/compare.json),
    the log next to the first."""
    hfs = [Path(h).absolute() for h in opts["--hf"].split(",")]
    for hf in hfs:
        if not (hf / "config.json").is_file():
            raise ConfigError("--hf", str(hf), "has no config.json", "point it at a moe-convert export (or any HF dir)")
    from launcher.records.indexed import IndexedDataError, read_idx

    try:
        read_idx(opts["--data"])
    except IndexedDataError as e:
        raise ConfigError("--data", opts["--data"], str(e), "prepare held-out text with moe-prepare-data") from None
    outs = [Path(o).absolute() for o in opts["--json"].split(",")] if "--json" in opts else \
        [hf / "compare.json" for hf in hfs]
    if len(outs) != len(hfs):
        raise ConfigError("--json", opts["--json"], f"names {len(outs)} files for {len(hfs)} --hf directories",
                          "give one JSON path per HF directory, comma-separated")
    cfg, arch, plan, ckpt_dir, iteration, load = _trained(opts, overrides)
    argv = [",".join(map(str, hfs)), ",".join(map(str, outs)), "--data", opts["--data"],
            "--samples", opts.get("--samples", "16"), "--", *plan.argv, *load]
    return Job(recipe_argv=argv, env=plan.env, out=outs[0].parent, entry="recipes.convert_check",
               done=f"results in {', '.join(map(str, outs))}",
               log_name="compare.log", lines=[f"compare {', '.join(map(str, hfs))} with {ckpt_dir} iteration "
                                              f"{iteration} on {opts['--data']}, 1 x {plan.resolved.device}"])

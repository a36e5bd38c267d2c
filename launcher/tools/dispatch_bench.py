"""moe-dispatch-bench: dispatch and combine time and algorithm bandwidth of the MoE token dispatchers for a
model's real shapes, over each backend's knobs, on the GPUs at hand (CPU: 2 gloo processes, alltoall and
allgather only). The compute side (recipes/dispatch_bench.py) runs megatron-core's own dispatcher classes under
torchrun and checks every case against a plain all_to_all_single of the same tokens.

usage: moe-dispatch-bench [--name NAME] [--backends alltoall,allgather,deepep,hybridep] [--nproc N]
                          [--iters N] [--out-dir DIR] [group=option ...] [key.path=value ...]
  e.g. moe-dispatch-bench --name qwen3_30b_ep2_h200 --backends alltoall,deepep,hybridep \
           model=qwen3_30b_a3b train=pretrain train.micro_batch_size=4
Shapes: hidden = model.hidden_size, experts = model.num_experts, top-k = model.moe_router_topk, tokens per rank =
train.seq_length x train.micro_batch_size / cp (sequence parallel splits them over TP too), dtype bf16 (fp32 for
precision=fp32); EP = the processes started (--nproc, default: the GPUs here, or 2 on CPU).
Writes DIR/NAME.json (default perf_results/dispatch/) and DIR/NAME.md (best, default and worst per backend);
a recipe applies the best knobs with dispatcher.tuned=NAME. Exit status: 0 done, 2 bad input, 5 a wrong result.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from launcher.config.schema import RunConfig
from launcher.errors import ConfigError, make_dir
from launcher.tools.usage import args_or_help

REPO = Path(__file__).resolve().parents[2]
BACKENDS = ("alltoall", "allgather", "deepep", "hybridep")
# the knobs megatron-core 0.19.2 reads (TransformerConfig fields, so also Megatron flags) and DeepEP's NVLink
# chunk/buffer sizes (Buffer.get_dispatch_config / get_combine_config); the first entry of each is the default
GRID: dict[str, list[dict]] = {
    "alltoall": [{}],
    "allgather": [{}],
    "deepep": [{}] + [{"moe_flex_dispatcher_num_sms": s} for s in (8, 16, 24, 32)]
    + [{"moe_flex_dispatcher_num_sms": 24, "nvl_chunk": c, "nvl_buffer": b} for c, b in ((6, 256), (8, 512),
                                                                                         (16, 512), (32, 1024))],
    "hybridep": [{}] + [{"moe_flex_dispatcher_num_sms": s} for s in (8, 16, 24, 32)]
    + [{"moe_flex_dispatcher_num_sms": 24, "moe_permute_fusion_into_hybridep": True,
        "moe_hybridep_num_blocks_permute": b, "moe_hybridep_num_blocks_unpermute": b} for b in (16, 32, 64)],
}


def shapes(cfg: RunConfig) -> dict:
    """The model's dispatch shapes: what one rank sends per micro-batch."""
    t, p = cfg.train, cfg.parallel
    tokens = t.seq_length * t.micro_batch_size // p.cp
    if p.tp > 1 and p.sequence_parallel is not False:
        tokens //= p.tp  # sequence parallel: each TP rank routes its slice
    return {"hidden": cfg.model.hidden_size, "experts": cfg.model.num_experts, "topk": cfg.model.moe_router_topk,
            "tokens": tokens, "dtype": "fp32" if cfg.precision.name == "fp32" else "bf16"}


def spec_for(cfg: RunConfig, backends: list[str], device: str, nproc: int, iters: int) -> dict:
    for b in backends:
        if b not in BACKENDS:
            raise ConfigError("--backends", b, f"is not a dispatcher this benchmark runs ({', '.join(BACKENDS)})",
                              "pick from that list")
        if device == "cpu" and b in ("deepep", "hybridep"):
            raise ConfigError("--backends", b, f"{b} needs CUDA GPUs (DeepEP kernels); this machine has none",
                              "run it on a GPU host, or --backends alltoall,allgather here")
    s = shapes(cfg)
    if s["experts"] % nproc:
        raise ConfigError("--nproc", nproc, f"model.num_experts={s['experts']} is not divisible by it (EP = nproc)",
                          "pick a divisor of the expert count")
    cases = [{"backend": b, "knobs": k} for b in backends for k in GRID[b]]
    return {**s, "warmup": 3 if device == "cuda" else 1, "iters": iters, "seed": 1234, "cases": cases}


def summarize(name: str, record: dict) -> str:
    """Markdown in the style of the seeds' tuning summaries: per backend the default, best and worst case, and
    the speedup of best over default; the fastest of all against alltoall's default."""
    s, rows = record["shapes"], []
    lines = [f"# Dispatcher tuning: {name}", "",
             f"{record['model']}, hidden {s['hidden']}, {s['experts']} experts, top-{s['topk']}, {s['tokens']} "
             f"tokens per rank, {s['dtype']}, EP {record['world_size']} on {record['device']} "
             f"({record['host']}). Time = dispatch + combine, median of {record['iters']} iterations, slowest rank;"
             " algorithm bandwidth = routed bytes sent per rank / time. Every case checked against "
             "all_to_all_single.", "",
             "| backend | case | knobs | dispatch ms | combine ms | dispatch GB/s | combine GB/s "
             "| speedup vs default |",
             "|---|---|---|---|---|---|---|---|"]
    for b in dict.fromkeys(r["backend"] for r in record["results"]):
        mine = [r for r in record["results"] if r["backend"] == b]  # the grid's first case is the default
        default = mine[0]
        ranked = sorted((r for r in mine if r["correct"]), key=lambda r: r["dispatch_ms"] + r["combine_ms"]) or mine
        best, worst = ranked[0], ranked[-1]  # a case with a wrong result is listed below, never ranked
        for label, r in (("default", default), ("best", best), ("worst", worst)):
            speed = (default["dispatch_ms"] + default["combine_ms"]) / (r["dispatch_ms"] + r["combine_ms"])
            rows.append(r)
            lines.append(f"| {b} | {label} | {json.dumps(r['knobs']) if r['knobs'] else 'defaults'} | "
                         f"{r['dispatch_ms']:.3f} | {r['combine_ms']:.3f} | {r['dispatch_gbps']:.1f} | "
                         f"{r['combine_gbps']:.1f} | {speed:.2f}x |")
    wrong = [f"{r['backend']} {json.dumps(r['knobs'])}" for r in record["results"] if not r["correct"]]
    if wrong:
        lines += ["", "WRONG RESULT (differs from all_to_all_single): " + "; ".join(wrong)]
    a2a = [r for r in record["results"] if r["backend"] == "alltoall"]
    if a2a:
        top = min((r for r in record["results"] if r["correct"]), key=lambda r: r["dispatch_ms"] + r["combine_ms"])
        ref = a2a[0]["dispatch_ms"] + a2a[0]["combine_ms"]
        lines += ["", f"Fastest: {top['backend']} {json.dumps(top['knobs']) if top['knobs'] else 'defaults'}, "
                  f"{ref / (top['dispatch_ms'] + top['combine_ms']):.2f}x alltoall's default."]
    return "\n".join(lines) + "\n"


def _options(args: list[str]) -> tuple[dict, list[str]]:
    opts = {"--name": None, "--backends": "alltoall,allgather", "--nproc": None, "--iters": "10",
            "--out-dir": str(REPO / "perf_results" / "dispatch")}
    rest = []
    it = iter(args)
    for a in it:
        if a in opts:
            value = next(it, None)
            if value is None:
                raise ConfigError(a, None, "needs a value", f"write {a} VALUE")
            opts[a] = value
        else:
            rest.append(a)
    return opts, rest


def main(argv: Optional[list[str]] = None) -> int:
    args = args_or_help(argv, __doc__.split("\n\n", 1)[1])
    if args is None:
        return 0
    try:
        from launcher.config.compose import compose
        from launcher.plan.probe import detect

        opts, overrides = _options(args)
        _, cfg = compose(overrides)
        probe = detect()
        device = "cuda" if probe.gpus > 0 else "cpu"
        nproc = int(opts["--nproc"] or (probe.gpus if device == "cuda" else 2))
        spec = spec_for(cfg, opts["--backends"].split(","), device, nproc, int(opts["--iters"]))
        out_dir = make_dir(opts["--out-dir"], "--out-dir")
    except (ConfigError, ValueError) as e:
        print(f"moe-dispatch-bench: error: {e}", file=sys.stderr)
        return 2
    name = opts["--name"] or f"{cfg.model.name}_ep{nproc}_{device}"
    with tempfile.TemporaryDirectory() as tmp:
        spec_file, result_file = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_file.write_text(json.dumps(spec))
        env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if device == "cpu" else {})}
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                               "-m", "recipes.dispatch_bench", str(spec_file), str(result_file)], env=env)
        if not result_file.exists():
            print(f"moe-dispatch-bench: error: the benchmark stopped (exit {proc.returncode}) before writing "
                  "results; see its output above", file=sys.stderr)
            return proc.returncode or 1
        result = json.loads(result_file.read_text())
    record = {"name": name, "model": cfg.model.name, "shapes": {k: spec[k] for k in ("hidden", "experts", "topk",
                                                                                    "tokens", "dtype")},
              "iters": spec["iters"], "host": os.uname().nodename, **result}
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    summary = summarize(name, record)
    (out_dir / f"{name}.md").write_text(summary)
    print(summary + f"\nwrote {out_dir / name}.json and .md")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())

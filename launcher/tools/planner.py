"""moe-plan: which layout is fastest for a model on N GPUs? Enumerates TP, CP, PP with VPP (balanced layout
string), EP, MBS, the recompute options of conf/recompute and the dispatchers, drops what the launcher's rules
refuse or the memory estimate says will not fit, ranks the rest with an analytic throughput model and prints the
best as moe-launch overrides. Runs nothing unless --calibrate.

usage: moe-plan --gpus N [--seq S] [--gbs B] [--top K] [--dispatchers a,b] [--recompute a,b]
                [--dispatch-calibration FILE] [--megatron-check N] [--calibrate N --out DIR] [--json FILE]
                [group=option ...] [key.path=value ...]
  e.g. moe-plan model=qwen3_235b_a22b hardware=h100 --gpus 256 --seq 4096 --gbs 2048
       moe-plan preset=qwen3_235b_a22b_256xh100_tp2pp8vpp4ep32_deepep_bf16 --gpus 256
The overrides are the base every candidate starts from (a preset keeps its precision, fusions and routing);
the planner sets parallel.*, train.micro_batch_size, recompute and dispatcher.
--megatron-check N  runs Megatron's own validator on the top N (default 3; 0: skip; it imports megatron).
--calibrate N       runs the top N through moe-launch for 10 iterations (under --out) and re-ranks them by the
                    measured steady-state TFLOP/s/GPU.
Exit status: 0 a layout found, 1 none fits, 2 bad input.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional

from launcher.errors import ConfigError, make_dir, write_text
from launcher.tools.usage import args_or_help

GiB = 2 ** 30


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moe-plan", add_help=False)
    p.add_argument("--gpus", type=int)
    p.add_argument("--seq", type=int)
    p.add_argument("--gbs", type=int)
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--dispatchers")
    p.add_argument("--recompute")
    p.add_argument("--dispatch-calibration", type=Path)
    p.add_argument("--megatron-check", type=int, default=3)
    p.add_argument("--calibrate", type=int, default=0)
    p.add_argument("--out", type=Path)
    p.add_argument("--json", type=Path)
    p.add_argument("--iters", type=int, default=10)
    return p


def base_overrides(overrides: list[str], seq: Optional[int], gbs: Optional[int]) -> list[str]:
    """The user's overrides, with train=pretrain unless a train group or preset is chosen, and --seq/--gbs."""
    out = list(overrides)
    if not any(o.startswith(("train=", "preset=")) for o in out):
        out.insert(0, "train=pretrain")
    if seq:
        out.append(f"train.seq_length={seq}")
    if gbs:
        out.append(f"train.global_batch_size={gbs}")
    return out


def cluster_overrides(gpus: int, gpus_per_node: int) -> list[str]:
    """nodes x GPUs per node for `gpus` GPUs (fewer than one node: one node with that many)."""
    per_node = min(gpus, gpus_per_node)
    if gpus % per_node:
        raise ConfigError("--gpus", gpus, f"must be a multiple of the {gpus_per_node} GPUs of one node",
                          f"use {gpus // per_node * per_node} or {(gpus // per_node + 1) * per_node}")
    nodes = gpus // per_node
    return [f"cluster.nodes={nodes}", f"cluster.gpus_per_node={per_node}"]


def compose_base(overrides: list[str], gpus: int, seq: Optional[int]):
    """The base config the candidates start from, composed once (a dry run: nothing starts)."""
    from launcher.config.compose import compose

    _, cfg = compose(overrides)
    clus = cluster_overrides(gpus, cfg.hardware.gpus_per_node)
    _, cfg = compose(overrides + clus + ["launch.dry_run=true", "launch.megatron_validate=false"])
    if seq and seq > cfg.model.max_position_embeddings:  # a longer context than the model card: RoPE extends
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, max_position_embeddings=seq))
    return cfg, clus


def read_calibration(path: Path):
    """Measured dispatch bandwidth per dispatcher from a dispatcher benchmark's JSON (perf_results/dispatch/):
    every object naming a dispatcher (keys dispatcher, backend or type) with a bandwidth in GB/s (a numeric key
    with 'bw' or 'bandwidth' in its name); the best per dispatcher counts (the tuned setting)."""
    from launcher.tools.plan_model import LINK_EFF, Calibration

    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError("--dispatch-calibration", str(path), f"cannot be read as JSON ({e})",
                          "give a dispatcher benchmark result (perf_results/dispatch/*.json)") from None
    found: dict[str, float] = {}

    def walk(node) -> None:
        if isinstance(node, dict):
            name = next((str(node[k]) for k in ("dispatcher", "backend", "type") if str(node.get(k)) in LINK_EFF),
                        None)
            for k, v in node.items():
                if name and isinstance(v, (int, float)) and ("bw" in k.lower() or "bandwidth" in k.lower()):
                    found[name] = max(found.get(name, 0.0), float(v))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    if not found:
        raise ConfigError("--dispatch-calibration", str(path), "names no dispatcher with a bandwidth (GB/s)",
                          "give a dispatcher benchmark result (perf_results/dispatch/*.json)")
    return Calibration(bandwidth_gbps=found, source=str(path))


def megatron_check(results: list, n: int) -> list[Optional[str]]:
    """Megatron's validator on the first n results: None where it accepts, its one line where it refuses."""
    from launcher.plan.megatron.validator import megatron_validate
    from launcher.plan.plan import compute_capability, megatron_argv, run_env

    import logging

    logging.getLogger("megatron").setLevel(logging.WARNING)  # its layout parser logs each layout at INFO
    verdicts: list[Optional[str]] = []
    for r in results[:n]:
        try:
            megatron_validate(megatron_argv(r.cfg, r.res), r.res.world_size, run_env(r.cfg, r.res),
                              compute_capability(r.cfg))
            verdicts.append(None)
        except ConfigError as e:
            verdicts.append(str(e))
    return verdicts


def render(results: list, base: list[str], clus: list[str], verdicts: list[Optional[str]], stats) -> str:
    lines = [f"{'#':>2} {'TFLOP/s/GPU':>11} {'step s':>7} {'peak GiB':>9}  layout"]
    for i, r in enumerate(results):
        p = r.prediction
        parts = ", ".join(f"{k} {v:.2f}" for k, v in p.parts.items() if v > 0.0005)
        mark = "" if i >= len(verdicts) else (" [megatron: ok]" if verdicts[i] is None else
                                               f" [megatron refuses: {verdicts[i]}]")
        lines.append(f"{i + 1:>2} {p.tflops_per_gpu:>11.1f} {p.step_s:>7.2f} "
                     f"{r.peak_bytes / GiB:>5.1f}/{r.capacity / GiB:.0f}  {r.candidate.label()}{mark}")
        lines.append(f"     ({parts} s)")
        multi = any(c.startswith("cluster.nodes=") and c != "cluster.nodes=1" for c in clus)
        cmd = " ".join(["moe-launch", *(["cluster=slurm"] if multi else []), *base, *r.candidate.overrides(),
                        *clus])
        lines.append(f"     {cmd}")
    refused = ", ".join(f"{k} {v}" for k, v in sorted(stats.refused.items(), key=lambda x: -x[1]))
    lines.append(f"searched {stats.bounds} layouts (bounds), checked {stats.checked} with the rules and the "
                 f"estimate, in {stats.seconds:.1f} s; refused: {refused or 'none'}")
    return "\n".join(lines)


def _launch(cmd: list[str], log: Path) -> int:
    import subprocess

    with open(log, "a") as fh:
        return subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)


def calibrate(results: list, base: list[str], clus: list[str], n: int, out: Path, iters: int,
              launch=_launch) -> list[tuple]:
    """Run the first n through moe-launch (short; each an ordinary run with its record) and re-rank them by
    the records' steady-state TFLOP/s/GPU: [(result, measured)], best measured first, failed runs last."""
    from launcher.tools.tune import measure

    out.mkdir(parents=True, exist_ok=True)
    measured = []
    for i, r in enumerate(results[:n]):
        run_dir = out / f"{i + 1:02d}"
        cmd = [sys.executable, "-m", "launcher", *base, *r.candidate.overrides(), *clus,
               f"train.train_iters={iters}", f"launch.run_dir={run_dir}"]
        launch(cmd, out / "calibrate.out")
        m = measure(run_dir, "tflops_per_gpu")
        measured.append((r, m))
        print(f"calibrate {i + 1}: {r.candidate.label()}: {m['status']}, measured "
              f"{m.get('value') or '-'} TFLOP/s/GPU (predicted {r.prediction.tflops_per_gpu:.1f})")
    measured.sort(key=lambda x: -(x[1].get("value") or 0.0))
    return measured


def main(argv: Optional[list[str]] = None) -> int:
    args_in = args_or_help(argv, __doc__.split("\n", 5)[5])
    if args_in is None:
        return 0
    try:
        opts, overrides = _parser().parse_known_args(args_in)
    except SystemExit:
        return 2
    try:
        from launcher.tools.plan_search import search

        bad = next((o for o in overrides if o.startswith("-")), None)
        if bad:
            raise ConfigError("option", bad, "is not an option of moe-plan", "see moe-plan --help")
        if not opts.gpus or opts.gpus < 1:
            raise ConfigError("--gpus", opts.gpus, "is required and must be positive", "e.g. --gpus 256")
        if opts.calibrate and opts.out is None:
            raise ConfigError("--calibrate", opts.calibrate, "needs --out DIR for the runs", "add --out runs/plan1")
        if opts.calibrate:
            make_dir(opts.out, "--out")
        cal = read_calibration(opts.dispatch_calibration) if opts.dispatch_calibration else None
        base = base_overrides(overrides, opts.seq, opts.gbs)
        cfg, clus = compose_base(base, opts.gpus, opts.seq)
        results, stats = search(cfg, opts.gpus, top=opts.top,
                                dispatchers=opts.dispatchers.split(",") if opts.dispatchers else None,
                                recomputes=opts.recompute.split(",") if opts.recompute else None, cal=cal)
        if not results:
            refused = ", ".join(f"{k} {v}" for k, v in stats.refused.items())
            raise ConfigError("layout", f"{opts.gpus} GPUs", f"no layout passes the rules and fits ({refused})",
                              "more GPUs, a shorter sequence or a smaller global batch")
        verdicts = megatron_check(results, opts.megatron_check) if opts.megatron_check > 0 else []
    except ConfigError as e:
        print(f"moe-plan: error: {e}", file=sys.stderr)
        return 1 if e.field == "layout" else 2
    print(f"{cfg.model.name} on {opts.gpus} x {cfg.hardware.name}, seq {cfg.train.seq_length}, GBS "
          f"{cfg.train.global_batch_size}, {cfg.precision.name}" + (f", dispatch calibrated by {cal.source}"
                                                                     if cal else ""))
    print(render(results, base, clus, verdicts, stats))
    if opts.json:
        try:
            write_text(opts.json, json.dumps([{"overrides": r.candidate.overrides(), "label": r.candidate.label(),
                                               "tflops_per_gpu": r.prediction.tflops_per_gpu,
                                               "step_s": r.prediction.step_s, "parts": r.prediction.parts,
                                               "peak_bytes": r.peak_bytes} for r in results], indent=1) + "\n",
                       "--json")
        except ConfigError as e:
            print(f"moe-plan: error: {e}", file=sys.stderr)
            return 2
    if opts.calibrate:
        for i, (r, m) in enumerate(calibrate(results, base, clus, opts.calibrate, opts.out, opts.iters)):
            print(f"measured #{i + 1}: {m.get('value') or '-'} TFLOP/s/GPU  {r.candidate.label()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

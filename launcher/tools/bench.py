"""moe-bench: our recipe against the Hugging Face transformers peer, same shape, same GPU host.

usage: moe-bench [--peer-mbs 1,2,4] [--peer-gpus 1] [--experts-impl grouped_mm] [--profile 5:6]
                 [--no-ours] [--no-peer] [--dry-run] [--out DIR] [--warmup 3] OVERRIDE ...
  e.g. moe-bench --peer-mbs 1,2,4 --out perf_results/bench/qwen3_4l_1gpu \\
         model=qwen3_30b_a3b model.num_layers=4 train=pretrain train.global_batch_size=16 cluster.gpus_per_node=1

One command, one run directory (--out):
  ours/          our recipe, launched exactly as `moe-launch OVERRIDE ... launch.run_dir=OUT/ours` would
  peer_mbsK/     recipes/peer_hf.py at micro batch K: same architecture (launcher/tools/peer_spec.py), sequence
                 length, global batch (tokens per optimizer step) and step count
  bench.json     both sides' steady state: tokens/s/GPU, TFLOP/s/GPU, peak memory, and ours / best peer
  bench.md       the same as a table (printed too)
TFLOP/s for both sides come from ONE formula: Megatron's num_floating_point_operations for the composed
argv (launcher/plan/megatron/validator.py stores it per sequence in ours/plan.json), times sequences per second.
--dry-run writes every command (ours/command.sh, peer_mbsK/command.sh) and runs nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from launcher.errors import ConfigError, make_dir
from launcher.run.console import guard
from launcher.records.outputs import PERF_RESULTS_SWITCH, SWITCH_HELP, refuse_committed
from launcher.records.legacy_argv import _flag
from launcher.records.steady import DEFAULT_WARMUP, steady_medians, steady_state, tokens_per_s_per_gpu
from launcher.records.record_md import failure_label
from launcher.records.steady import iteration_window

SCHEMA = "moe-recipes/bench/1"
REPO = Path(__file__).resolve().parents[2]


def parse_window(text: Optional[str]) -> Optional[tuple[int, int]]:
    """'START:END' (1-based iterations, inclusive) -> (START, END)."""
    if not text:
        return None
    try:
        return iteration_window(text)
    except ValueError:
        raise ConfigError("--profile", text, "START:END iterations with 1 <= START <= END, e.g. 5:6",
                          "write two integers, the first not above the second") from None


def _peer_mbs(text: str) -> list[int]:
    """--peer-mbs 1,2,4 -> [1, 2, 4]; one line naming the option when it is not a list of whole numbers."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError("--peer-mbs", text, "is not a comma-separated list of micro batch sizes",
                          "e.g. --peer-mbs 1,2,4") from None


def _ours_overrides(overrides: list[str], out: Path, dry_run: bool, profile) -> list[str]:
    extra = [f"launch.run_dir={out / 'ours'}"]
    if dry_run:
        extra.append("launch.dry_run=true")
    if profile:
        extra.append(f"train.kernel_profile={profile[0]}:{profile[1]}")
    # a measurement, not a run to keep: no checkpoints unless the overrides ask for them
    keep = any(o.split("=", 1)[0].lstrip("+~").startswith(("train.checkpoint", "train.save")) for o in overrides)
    return [*([] if keep else ["train.checkpoint.enabled=false"]), *overrides, *extra]


def peer_command(spec_path: Path, run_dir: Path, gpus: int, python: str = sys.executable) -> list[str]:
    if gpus == 1:
        return [python, "-m", "recipes.peer_hf", "--spec", str(spec_path), "--run-dir", str(run_dir)]
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", "-m",
            "recipes.peer_hf", "--spec", str(spec_path), "--run-dir", str(run_dir)]


def write_peer_dir(run_dir: Path, spec: dict, gpus: int) -> Path:
    """spec.json and command.sh: what the peer run executes, written before it runs (or instead)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.json").write_text(json.dumps(spec, indent=1))
    cmd = peer_command(run_dir / "spec.json", run_dir, gpus)
    script = run_dir / "command.sh"
    script.write_text("#!/usr/bin/env bash\n# moe-bench: the Hugging Face transformers peer\nset -euo pipefail\n"
                      f"cd {shlex.quote(str(REPO))}\nexport PYTHONUNBUFFERED=1\n"
                      f"exec {' '.join(shlex.quote(c) for c in cmd)}\n")
    return script


def run_logged(cmd: list[str], log: Path) -> tuple[int, float]:
    """Run, tee stdout+stderr to log; (returncode, wall seconds)."""
    t0 = time.time()
    with open(log, "a") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                env={**os.environ,
                                     "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
        rc = proc.wait()
    return rc, round(time.time() - t0, 1)


# ---------------------------------------------------------------------------------------------- failures

# moe-launch's own refusal, else the exception line a Python traceback ends with (torchrun prefixes ranks)
_REFUSAL = re.compile(r"moe-launch: error: .*")
_EXCEPTION = re.compile(r"(?:\[[^\]]*\]:?\s*)?((?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt|Exit)\b:? ?.*)")


def one_line_reason(log: Path) -> str:
    """Why a side failed, in one line, from its log: moe-launch's one-line refusal, else the last exception
    line (the end of a traceback), else the last line; never the traceback itself."""
    lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()] if log.exists() else []
    for pattern in (_REFUSAL, _EXCEPTION):
        hits = [m.group(m.lastindex or 0) for m in map(pattern.fullmatch, lines) if m]
        if hits:
            return hits[-1][:400]
    return lines[-1][:400] if lines else f"no output ({log.name} is empty or missing)"


def side_failures(b: dict, out: Path) -> list[str]:
    """One line per side that did not finish ok: ours from its record (or its log), each peer from peer.json's
    error (or its log)."""
    lines = []
    ours = b["ours"]
    if ours["status"] not in ("ok", "not run"):
        lines.append(f"moe-bench: ours failed: {ours.get('failure') or one_line_reason(out / 'ours.out')}")
    for p in b["peers"]:
        if p["status"] != "ok":
            why = p.get("failure") or one_line_reason(out / p["run_dir"] / "train.log")
            lines.append(f"moe-bench: peer MBS {p['micro_batch_size']} {p['status']}: {why}")
    return lines


# ---------------------------------------------------------------------------------------------- summaries


def ours_summary(r: Optional[dict], run_dir: Path, warmup: int, skip: Optional[tuple[int, int]] = None) -> dict:
    """Steady state of our run (record `r`, None when it did not run) from its per-iteration series, by
    the records' own window rule (launcher.records.record.steady_state), profiled iterations left out."""
    if r is None:
        return {"side": "ours", "run_dir": run_dir.name, "status": "not run"}
    ss = steady_state(r.get("series", []), warmup, None, r.get("memory") or {}, skip)
    return {"side": "ours", "run_dir": run_dir.name, "status": r["status"],
            "failure": failure_label(r.get("failure")),
            "micro_batch_size": r["batch"]["micro_batch_size"], "gpus": r["system"]["world_size"],
            **steady_medians(ss),
            "peak_allocated_gib": _gib((r.get("memory") or {}).get("max_allocated_mb")),
            "gpu_name": r["system"].get("gpu_name"), "numerics": _our_numerics(r.get("argv", []))}


def _our_numerics(argv: list[str]) -> str:
    if "--fp8-format" in argv:
        head = f"FP8 {_flag(argv, '--fp8-recipe', 'delayed')} GEMMs, BF16 elsewhere"
    else:
        head = "BF16 weights and activations" if "--bf16" in argv else "FP32 weights and activations"
    opt = (f"precision-aware optimizer (master {_flag(argv, '--main-params-dtype', 'fp32')}, grads "
           f"{_flag(argv, '--main-grads-dtype', 'fp32')}, moments {_flag(argv, '--exp-avg-dtype', 'fp32')}/"
           f"{_flag(argv, '--exp-avg-sq-dtype', 'fp32')})" if "--use-precision-aware-optimizer" in argv
           else "FP32 master weights, FP32 gradients and Adam moments")
    return f"{head}; {opt}; FP32 loss"


def _gib(mb: Optional[float]) -> Optional[float]:
    return round(mb / 1024, 2) if mb is not None else None


def peer_series(rows: list[dict], spec: dict, world: int, flops_per_sequence: Optional[float],
                peak_tflops: Optional[float]) -> list[dict]:
    """The peer's per-step rows with the columns our records carry: tokens/s/GPU, TFLOP/s/GPU (Megatron's
    FLOP count per sequence x sequences/s / GPUs) and MFU."""
    gbs, seq = spec["global_batch_size"], spec["seq_length"]
    out = []
    for r in rows:
        per_s = 1000 / r["step_ms"]
        row = {**r, "tokens_per_s_per_gpu": tokens_per_s_per_gpu(gbs, seq, r["step_ms"], world)}
        if flops_per_sequence:
            row["tflops_per_gpu"] = flops_per_sequence * gbs * per_s / world / 1e12
            row["mfu"] = row["tflops_per_gpu"] / peak_tflops if peak_tflops else None
        out.append(row)
    return out


def peer_summary(run_dir: Path, flops_per_sequence: Optional[float], warmup: int, peak_tflops: Optional[float],
                 skip: Optional[tuple[int, int]] = None) -> dict:
    """Steady state of a peer run from its per-step series: same window rule as our records."""
    info = json.loads((run_dir / "peer.json").read_text()) if (run_dir / "peer.json").exists() else {}
    spec = info.get("spec") or json.loads((run_dir / "spec.json").read_text())
    out = {"side": "peer", "run_dir": run_dir.name, "status": info.get("status", "not run"),
           "failure": info.get("error"), "micro_batch_size": spec["micro_batch_size"],
           "gpus": info.get("world_size"), "numerics": info.get("numerics"),
           "gpu_name": (info.get("versions") or {}).get("gpu_name"),
           "experts_implementation": spec.get("experts_implementation")}
    series_path = run_dir / "peer_series.jsonl"
    rows = [json.loads(x) for x in series_path.read_text().splitlines() if x.strip()] if series_path.exists() else []
    if not rows or out["status"] != "ok":
        return out
    ss = steady_state(peer_series(rows, spec, info["world_size"], flops_per_sequence, peak_tflops), warmup, None,
                      {}, skip)
    if "reason" in ss:  # no iteration after the warm-up
        return out
    out.update(steady_medians(ss), peak_allocated_gib=_gib(info.get("max_allocated_mb")),
               loss_last=ss["loss"]["last"])
    return out


def summarize(out: Path, warmup: int = DEFAULT_WARMUP, skip: Optional[tuple[int, int]] = None) -> dict:
    """bench.json from the run directory alone (rerunnable, like launcher.records.record); `skip` = the profiled
    iterations, left out of both sides' steady state. Without ours/plan.json (our side was refused before it
    planned) it raises ConfigError with the refusal."""
    if not (out / "ours" / "plan.json").exists():
        raise ConfigError("ours", str(out / "ours"), f"our side has no plan.json: {one_line_reason(out / 'ours.out')}",
                          "fix our side's config (the reason above) and run moe-bench again")
    plan = json.loads((out / "ours" / "plan.json").read_text())
    flops = (plan.get("megatron") or {}).get("flops_per_sequence")
    rec_path = out / "ours" / "record.json"
    rec = json.loads(rec_path.read_text()) if rec_path.exists() else None
    ours = ours_summary(rec, out / "ours", warmup, skip)
    peak = ((rec["system"].get("peak_tflops") or {}).get("bf16")) if rec else None
    peers = [peer_summary(d, flops, warmup, peak, skip) for d in sorted(out.glob("peer_mbs*"), key=_mbs_key)]
    ok = [p for p in peers if p.get("tokens_per_s_per_gpu")]
    best = max(ok, key=lambda p: p["tokens_per_s_per_gpu"]) if ok else None
    ratio = (round(ours["tokens_per_s_per_gpu"] / best["tokens_per_s_per_gpu"], 3)
             if best and ours.get("tokens_per_s_per_gpu") else None)
    cfg = plan.get("resolved", {})
    return {"schema": SCHEMA, "name": out.name, "command": (out / "bench_command.txt").read_text().strip()
            if (out / "bench_command.txt").exists() else None,
            "flops_formula": "megatron.training.training.num_floating_point_operations(args, 1) per sequence, "
                             "for the composed argv; TFLOP/s/GPU = that x sequences/s / GPUs",
            "flops_per_sequence": flops, "warmup_iterations": warmup,
            "profiled_iterations": list(skip) if skip else None, "world_size": cfg.get("world_size"),
            "ours": ours, "peers": peers, "best_peer": best["run_dir"] if best else None,
            "ratio_tokens_per_s_per_gpu": ratio}


def _mbs_key(p: Path) -> int:
    return int(p.name.removeprefix("peer_mbs")) if p.name.removeprefix("peer_mbs").isdigit() else 0


def render(b: dict) -> str:
    def f(x, nd=1):
        return "-" if x is None else (f"{x:,.{nd}f}" if isinstance(x, (int, float)) else str(x))
    lines = [f"# {b['name']}", "", f"`{b['command']}`" if b.get("command") else "", "",
             "| side | MBS | GPUs | status | tokens/s/GPU | TFLOP/s/GPU | MFU | step ms | peak alloc GiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in [b["ours"], *b["peers"]]:
        status = s["status"] if not s.get("failure") else f"{s['status']} ({str(s['failure'])[:60]})"
        lines.append(f"| {s['side']} ({s['run_dir']}) | {f(s.get('micro_batch_size'), 0)} | {f(s.get('gpus'), 0)} | "
                     f"{status} | {f(s.get('tokens_per_s_per_gpu'))} | {f(s.get('tflops_per_gpu'))} | "
                     f"{f((s.get('mfu') or 0) * 100) + '%' if s.get('mfu') else '-'} | {f(s.get('step_time_ms'))} | "
                     f"{f(s.get('peak_allocated_gib'), 2)} |")
    lines += ["", f"ours / best peer ({b['best_peer']}), tokens/s/GPU: **{f(b['ratio_tokens_per_s_per_gpu'], 3)}x**"
              if b["ratio_tokens_per_s_per_gpu"] else "ratio: not available (a side did not finish)", "",
              f"numerics, ours: {b['ours'].get('numerics', '-')}",
              f"numerics, peer: {next((p['numerics'] for p in b['peers'] if p.get('numerics')), '-')}", "",
              f"FLOP formula (both sides): {b['flops_formula']}; {f(b['flops_per_sequence'] or 0, 0)} FLOP per "
              f"sequence. Steady state: median over iterations after the first {b['warmup_iterations']}"
              + (f", profiled iterations {b['profiled_iterations']} left out" if b.get("profiled_iterations") else "")
              + ".", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- command


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the program itself: a long benchmark or chain outlives a reader that goes away
        guard()
    ap = argparse.ArgumentParser(prog="moe-bench", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("overrides", nargs="*", help="moe-launch overrides for our side (the peer mirrors them)")
    ap.add_argument("--out", help="run directory (default runs/bench-<model>-<time>)")
    ap.add_argument("--peer-mbs", default="1,2,4", help="peer micro batch sizes, comma separated")
    ap.add_argument("--peer-gpus", type=int, default=1, help="GPUs of the peer (DDP when > 1)")
    ap.add_argument("--experts-impl", default="grouped_mm", help="transformers experts implementation")
    ap.add_argument("--profile", help="START:END iterations profiled on both sides (torch.profiler + summary)")
    ap.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="iterations left out of the steady state")
    ap.add_argument("--no-ours", action="store_true", help="run the peer only (ours is still validated)")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="write every command, run nothing")
    ap.add_argument("--summarize", metavar="DIR", help="rebuild bench.json/bench.md of an existing run dir")
    ap.add_argument(PERF_RESULTS_SWITCH, action="store_true", help=SWITCH_HELP)
    a = ap.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    if a.summarize:
        d = Path(a.summarize)
        refusal = refuse_committed("moe-bench", [d / "bench.json", d / "bench.md"], a.perf_results)
        if refusal:
            print(refusal, file=sys.stderr)
            return 2
        old = json.loads((d / "bench.json").read_text()) if (d / "bench.json").exists() else {}
        window = parse_window(a.profile) or (tuple(old["profiled_iterations"]) if old.get("profiled_iterations")
                                             else None)
        # rebuilding a summary succeeds when it is written: a side that failed in that run is its recorded outcome
        # (printed), not a failure of --summarize (perf_results/regenerate.sh rebuilds a bench whose peer OOMed)
        return _write_summary(d, old.get("warmup_iterations", a.warmup) if not a.profile else a.warmup, window,
                              failed_side_rc=0)
    try:
        from launcher.config.compose import compose
        from launcher.tools.peer_spec import peer_spec

        _, cfg = compose(a.overrides)
        profile = parse_window(a.profile)
        mbs_list = _peer_mbs(a.peer_mbs)
        specs = {m: peer_spec(cfg, m, cfg.train.train_iters, a.experts_impl, profile_steps=profile)
                 for m in mbs_list}
        out = make_dir(a.out or f"runs/bench-{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}", "--out")
    except (ConfigError, ValueError) as e:
        print(f"moe-bench: error: {e}", file=sys.stderr)
        return 2
    (out / "bench_command.txt").write_text("moe-bench " + " ".join(shlex.quote(x) for x in
                                                                  (sys.argv[1:] if argv is None else argv)) + "\n")
    launch = [sys.executable, "-m", "launcher", *_ours_overrides(a.overrides, out, a.dry_run or a.no_ours, profile)]
    rc, wall = run_logged(launch, out / "ours.out")
    print(f"moe-bench: ours: {'dry run written' if a.dry_run or a.no_ours else 'finished'} rc={rc} ({wall}s)")
    if rc != 0 and (a.dry_run or a.no_ours or not (out / "ours" / "plan.json").exists()):
        # refused before it planned (a rule, a bad override): nothing to compare, the peer is not run
        print(f"moe-bench: ours failed: {one_line_reason(out / 'ours.out')} (log: {out / 'ours.out'})", file=sys.stderr)
        return rc
    for m, spec in ([] if a.no_peer else specs.items()):
        run_dir = out / f"peer_mbs{m}"
        script = write_peer_dir(run_dir, spec, a.peer_gpus)
        if a.dry_run:
            continue
        prc, pwall = run_logged(["bash", str(script)], run_dir / "train.log")
        print(f"moe-bench: peer MBS {m}: rc={prc} ({pwall}s)")
    if a.dry_run:
        print(f"moe-bench: dry run: commands in {out}/ours/command.sh and {out}/peer_mbs*/command.sh")
        return 0
    return _write_summary(out, a.warmup, profile)


def _write_summary(out: Path, warmup: int, skip: Optional[tuple[int, int]], failed_side_rc: int = 1) -> int:
    """bench.json and bench.md, then one line per failed side; failed_side_rc when any side failed."""
    try:
        b = summarize(out, warmup, skip)
    except ConfigError as e:
        print(f"moe-bench: error: {e}", file=sys.stderr)
        return 2
    (out / "bench.json").write_text(json.dumps(b, indent=1))
    text = render(b)
    (out / "bench.md").write_text(text)
    print(text)
    failures = side_failures(b, out)
    for line in failures:
        print(line, file=sys.stderr)
    return failed_side_rc if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

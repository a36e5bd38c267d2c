"""Estimated against measured peak memory for every GPU run record with Megatron's memory report, and the
FLOPs per step against Megatron's logged throughput; writes perf_results/estimate_vs_measured.md.

usage: python -m launcher.tools.estimate_calibration [--write]   (prints the table; --write updates the file)

Each run is rebuilt from its run directory: config.yaml (the composed config) when present, else the
moe-launch overrides in plan.json (`moe_launch`) or launch.txt, composed again; the resolved facts and
Megatron's micro-batch count come from plan.json. Measured: `memory.max_allocated_mb` of record.json
(torch.cuda.max_memory_allocated on rank 0, MiB) after `after_iteration` iterations.
"""
from __future__ import annotations

import dataclasses
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from launcher.plan.resolve import Resolved
from launcher.plan.tuned import Tuned
from launcher.config.cluster import CLUSTER_SCHEMAS
from launcher.config.schema import RunConfig

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "perf_results" / "runs"
REPORT = ROOT / "perf_results" / "estimate_vs_measured.md"
MiB = 2 ** 20
# Runs the model misses by more than 10%: the reason, and the largest absolute gap the tests accept.
KNOWN_MISSES: dict[str, tuple[str, int]] = {
    "proxy_tiny_deepseek": (
        "a toy (hidden 256) whose whole gap is 163 MiB; it matches what Transformer Engine's unfused attention "
        "keeps (BF16 softmax, 4 heads x 2048^2 x 2 B x 5 layers incl. MTP = 160 MiB), i.e. TE choosing its "
        "unfused backend for MLA head dims 96/64. The record does not say which backend ran, so the estimator "
        "assumes the fused one every other MLA proxy shows", 200 * MiB),
    # issue 17's reruns of that proxy (tuned vs safe, gradient overlap on vs off; 2026-12-01): the same gap
    **{f"proxy_tiny_deepseek_{t}": ("a rerun of proxy_tiny_deepseek (same unfused-attention gap)", 200 * MiB)
       for t in ("ab_safe", "ab_safe2", "ab_tuned", "ab_tuned2", "no_overlap", "overlap")},
}


def load_run(run_dir: Path) -> tuple[RunConfig, Resolved, dict]:
    """(config, resolved facts, plan.json) of a run directory."""
    from omegaconf import OmegaConf

    plan = json.loads((run_dir / "plan.json").read_text())
    if (run_dir / "config.yaml").exists():
        raw = OmegaConf.load(run_dir / "config.yaml")
        schema = CLUSTER_SCHEMAS[raw.cluster.executor]
        # runs written before each executor had its own schema carry every executor's cluster fields
        raw.cluster = {k: v for k, v in raw.cluster.items() if k in {f.name for f in dataclasses.fields(schema)}}
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), {"cluster": OmegaConf.structured(schema)}, raw)
        cfg = OmegaConf.to_object(merged)
    else:
        from launcher.config.compose import compose

        words = plan.get("moe_launch") or (run_dir / "launch.txt").read_text().split()
        _, cfg = compose([w for w in words[1:] if not w.startswith("launch.run_dir=")])
    if cfg.data.tokenizer_type != "NullTokenizer" and cfg.data.vocab_size is None:
        cfg.data.vocab_size = logged_vocab(run_dir)  # the estimate's vocabulary (launcher/plan/vocab.py)
    facts = dict(plan["resolved"], notes=tuple(plan["resolved"].get("notes", ())))
    if isinstance(facts.get("tuned"), dict):  # runs planned with the tuned rules (launcher/plan/tuned.py)
        facts["tuned"] = Tuned(**facts["tuned"])
    return cfg, Resolved(**facts), plan


@dataclass(frozen=True)
class Row:
    run: str
    after_iteration: int
    estimated_mib: float
    measured_mib: float
    reserved_mib: float
    megatron_theoretical_mib: Optional[float]
    flops_per_step: float
    logged_flops_per_step: Optional[float]
    logged_tolerance: Optional[float]
    """Rounding of the logged figures (TFLOP/s to 0.1, step time to 0.1 ms) as FLOPs."""

    @property
    def ratio(self) -> float:
        return self.estimated_mib / self.measured_mib


def _logged(record: dict) -> tuple[Optional[float], Optional[float]]:
    """Megatron's FLOPs per step from its log: TFLOP/s/GPU x step time x GPUs, with its print rounding."""
    series = [s for s in record.get("series", []) if s.get("tflops_per_gpu") is not None and s.get("step_ms")]
    if not series:
        return None, None
    s, gpus = series[-1], record["parallel"]["world_size"]
    value = s["tflops_per_gpu"] * 1e12 * s["step_ms"] / 1e3 * gpus
    tol = (0.05e12 * s["step_ms"] / 1e3 + s["tflops_per_gpu"] * 1e12 * 0.05e-3) * gpus
    return value, tol


def gpu_runs(runs: Path = RUNS) -> list[Path]:
    """Run directories of GPU runs whose record has Megatron's memory report."""
    out = []
    for d in sorted(p for p in runs.iterdir() if (p / "record.json").exists()):
        rec = json.loads((d / "record.json").read_text())
        if (rec.get("system") or {}).get("device") == "cuda" and (rec.get("memory") or {}).get("max_allocated_mb"):
            out.append(d)
    return out


def logged_vocab(run_dir: Path) -> Optional[int]:
    """The tokenizer's vocabulary as Megatron reported it (' > padded vocab (size: N) ...'): a recorded run's
    tokenizer directory is on the machine that ran it, its train.log is here."""
    log = run_dir / "train.log"
    m = re.search(r"padded vocab \(size: (\d+)\)", log.read_text(errors="replace")) if log.exists() else None
    return int(m.group(1)) if m else None


def row(run_dir: Path) -> Row:
    from launcher.plan.estimate_flops import estimate_flops
    from launcher.plan.estimate_memory import estimate_memory

    rec = json.loads((run_dir / "record.json").read_text())
    cfg, res, plan = load_run(run_dir)
    mem = rec["memory"]
    after = int(mem["by_rank"]["0"]["after_iteration"])
    est = estimate_memory(cfg, res, microbatches=plan["megatron"]["num_microbatches"])
    theoretical = (mem.get("theoretical_mb") or {}).get("total")
    logged, tol = _logged(rec)
    return Row(run=run_dir.name, after_iteration=after, estimated_mib=est.peak_after(after) / MiB,
               measured_mib=float(mem["max_allocated_mb"]), reserved_mib=float(mem["max_reserved_mb"]),
               megatron_theoretical_mib=theoretical,
               flops_per_step=estimate_flops(cfg).per_step, logged_flops_per_step=logged, logged_tolerance=tol)


def render(rows: list[Row]) -> str:
    lines = ["# Estimated vs measured peak memory and FLOPs per step",
             "",
             "Generated by `python -m launcher.tools.estimate_calibration --write` (launcher/plan/estimate_memory.py);",
             "checked by tests/unit/plan/test_estimate.py. Measured: Megatron's memory report on rank 0",
             "(`torch.cuda.max_memory_allocated`, MiB) after the iteration given; estimated: the same quantity",
             "predicted from the run's config. Megatron's own estimate (`theoretical`, weights + optimizer +",
             "its activation formula) is shown for comparison. FLOPs: our count against Megatron's logged",
             "TFLOP/s/GPU x step time x GPUs (equal within the log's rounding: 0.1 TFLOP/s, which is most",
             "of the figure for the tiny runs). Max reserved / allocated is the caching allocator's margin",
             "that the pre-launch check's 10% headroom stands for. tiny_moe_1gpu_local calibrates the one",
             "fixed term (estimate_memory.CUDA_FLOOR), so its ratio is not evidence.",
             "",
             "| run | after iter | estimated MiB | measured max allocated MiB | ratio | max reserved / allocated "
             "| Megatron theoretical MiB | FLOPs/step (ours) | logged / ours |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        theo = f"{r.megatron_theoretical_mib:.0f}" if r.megatron_theoretical_mib else "-"
        logged = "-" if r.logged_flops_per_step is None else f"{r.logged_flops_per_step / r.flops_per_step:.4f}"
        lines.append(f"| {r.run} | {r.after_iteration} | {r.estimated_mib:.0f} | {r.measured_mib:.0f} | "
                     f"{r.ratio:.3f} | {r.reserved_mib / r.measured_mib:.3f} | {theo} | {r.flops_per_step:.4e} | "
                     f"{logged} |")
    within = [r for r in rows if abs(r.ratio - 1) <= 0.10]
    lines += ["", f"{len(within)} of {len(rows)} runs within 10%."]
    lines += [f"Known miss, {name}: {why}." for name, (why, _) in KNOWN_MISSES.items()]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render([row(d) for d in gpu_runs()])
    if "--write" in args:
        REPORT.write_text(text)
        print(f"wrote {REPORT}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

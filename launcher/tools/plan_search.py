"""moe-plan's search: every candidate layout (tools/plan_space.py) that passes the launcher's rules and fits the
memory estimate, ranked by the analytic model (tools/plan_model.py).

Pruning (branch and bound), so thousands of GPUs take seconds:
  1. for each (grid, MBS, dispatcher, overlap) an optimistic prediction without recompute and without the memory
     check; recompute only adds time, so that is an upper bound on the throughput of any recompute choice;
  2. those are visited best first; once a bound falls below the K-th best layout found, the rest cannot enter;
  3. for a visited one, the recompute options are tried cheapest first (the rules without the memory rule,
     then the estimate); the first that fits is its best, the dearer ones are not tried.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from launcher.config.schema import RunConfig
from launcher.errors import ConfigError
from launcher.plan.estimate_memory import estimate_memory
from launcher.plan.estimate_table import usable
from launcher.plan.probe import MachineProbe
from launcher.plan.plan import fit_tuned_memory
from launcher.plan.resolve import Resolved, resolve
from launcher.plan.rules import RULES
from launcher.plan.rules.memory import check_memory_fits
from launcher.plan.tuned import tuned_config
from launcher.tools import plan_space as space
from launcher.tools.plan_model import Calibration, Prediction, predict, recompute_fraction
from launcher.plan.estimate_flops import estimate_flops

# The machine the plan is for, not this one: Transformer Engine and DeepEP present on the GPU nodes.
TARGET = MachineProbe(gpus=0, transformer_engine=True, apex_fused_wgrad=False, deep_ep=True, cpu_count=1)
RULES_NO_MEMORY = tuple(r for r in RULES if r is not check_memory_fits)


@dataclass(frozen=True)
class Result:
    candidate: space.Candidate
    cfg: RunConfig
    res: Resolved
    prediction: Prediction
    peak_bytes: int
    capacity: int


@dataclass
class Stats:
    bounds: int = 0
    visited: int = 0
    checked: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1


def check_rules(cfg: RunConfig) -> Resolved:
    """resolve + the launcher's rules but the memory one (ConfigError on the first violation), on the config
    with its tuned knobs concrete; a tuned knob that would not fit falls back as moe-launch's does."""
    res = fit_tuned_memory(cfg, resolve(cfg, TARGET))
    tuned = tuned_config(cfg, res.tuned)
    for rule in RULES_NO_MEMORY:
        rule(tuned, res)
    return res


def evaluate(cfg: RunConfig, cal: Optional[Calibration] = None) -> tuple[Resolved, Prediction, int, int]:
    """A given config (e.g. a published preset) through the same rules, estimate and model:
    (resolved, prediction, peak bytes, usable bytes)."""
    res = check_rules(cfg)
    est = estimate_memory(cfg, res)
    return res, predict(cfg, res, cal), est.peak, usable(est.capacity)


def _bounds(cfg: RunConfig, world: int, dispatchers: dict, recomputes: dict, cheapest: str, stats: Stats,
            cal: Calibration, memo: dict) -> list[tuple[float, space.Candidate]]:
    """Optimistic TFLOP/s/GPU of each (grid, MBS, dispatcher, overlap), the cheapest recompute assumed."""
    out = []
    for g in space.grids(cfg, world):
        for mbs in space.batch_sizes(cfg, world, g):
            names = list(dispatchers) if g.ep > 1 else [next(iter(dispatchers))]
            for d in names:
                for overlap in ((False, True) if g.ep > 1 else (False,)):
                    c = space.Candidate(g, mbs, cheapest, d, overlap)
                    cand_cfg = space.build(cfg, c, recomputes, dispatchers)
                    try:
                        res = resolve(cand_cfg, TARGET)
                        pred = predict(cand_cfg, res, cal, memo)
                    except ConfigError as e:
                        stats.refuse(e.field)
                        continue
                    stats.bounds += 1
                    out.append((pred.tflops_per_gpu, c))
    out.sort(key=lambda x: -x[0])
    return out


def _best_recompute(cfg: RunConfig, c: space.Candidate, order: list[str], recomputes: dict, dispatchers: dict,
                    stats: Stats, cal: Calibration, memo: dict) -> Optional[Result]:
    if not _may_fit(cfg, c, recomputes, dispatchers, memo):
        stats.refuse("memory")
        return None
    for name in order:
        cand = space.Candidate(c.grid, c.mbs, name, c.dispatcher, c.overlap)
        cand_cfg = space.build(cfg, cand, recomputes, dispatchers)
        stats.checked += 1
        try:
            res = check_rules(cand_cfg)
        except ConfigError as e:
            stats.refuse(e.field)
            continue
        peak, capacity = _memory(cand_cfg, res, cand, memo)
        if peak > usable(capacity):
            stats.refuse("memory")
            continue
        return Result(cand, cand_cfg, res, predict(cand_cfg, res, cal, memo), peak, capacity)
    return None


def _may_fit(cfg: RunConfig, c: space.Candidate, recomputes: dict, dispatchers: dict, memo: dict) -> bool:
    """False when even full recompute (which keeps the least) without the A2A overlap (which holds one micro
    batch more) does not fit: then no option does, and the others need no estimate."""
    if "full" not in recomputes:
        return True
    lean = space.Candidate(c.grid, c.mbs, "full", c.dispatcher, False)
    lean_cfg = space.build(cfg, lean, recomputes, dispatchers)
    try:
        res = resolve(lean_cfg, TARGET)
    except ConfigError:
        return True
    peak, capacity = _memory(lean_cfg, res, lean, memo)
    return peak <= usable(capacity)


def _memory(cfg: RunConfig, res: Resolved, c: space.Candidate, memo: dict) -> tuple[int, int]:
    """(peak, capacity) bytes; the dispatcher type does not enter the estimate (the overlap does), so the
    candidates that differ only in it share one estimate."""
    key = ("memory", c.grid, c.mbs, c.recompute, c.overlap)
    over = ("over", c.grid, c.recompute, c.overlap)  # the smallest MBS known not to fit: larger ones hold more
    if key not in memo and c.mbs >= memo.get(over, (1 << 30, 0))[0]:
        return memo[over][1], 0
    if key not in memo:
        est = estimate_memory(cfg, res)
        memo[key] = (est.peak, est.capacity)
        if est.peak > usable(est.capacity) and c.mbs < memo.get(over, (1 << 30, 0))[0]:
            memo[over] = (c.mbs, est.peak)
    return memo[key]


def _same(a: Result, b: Result) -> bool:
    """Two dispatchers the model cannot tell apart on this layout (DeepEP and HybridEP inside one node): the
    first listed stands for both."""
    ca, cb = a.candidate, b.candidate
    return (ca.grid, ca.mbs, ca.recompute, ca.overlap) == (cb.grid, cb.mbs, cb.recompute, cb.overlap) and \
        abs(a.prediction.step_s - b.prediction.step_s) <= 1e-9 * a.prediction.step_s


def search(cfg: RunConfig, world: int, top: int = 5, dispatchers: Optional[list[str]] = None,
           recomputes: Optional[list[str]] = None, cal: Optional[Calibration] = None) -> tuple[list[Result], Stats]:
    """The `top` fastest layouts that pass the rules and fit, by the model, best first."""
    start = time.monotonic()
    cal = cal or Calibration()
    stats = Stats()
    disp = space.dispatcher_options(cfg.dispatcher, dispatchers)
    recs = space.recompute_options(recomputes)
    per_token = estimate_flops(cfg).per_token
    probe_cfg = {n: space.build(cfg, space.Candidate(space.Grid(1, 1, 1, 1, 1, 1), 1, n, next(iter(disp)), False),
                                recs, disp) for n in recs}
    order = sorted(recs, key=lambda n: (recompute_fraction(probe_cfg[n], per_token), n))
    found: list[Result] = []
    memo: dict = {}
    for bound, c in _bounds(cfg, world, disp, recs, order[0], stats, cal, memo):
        if len(found) >= top and bound <= found[top - 1].prediction.tflops_per_gpu:
            break  # no recompute choice makes this or any later candidate faster than the K-th
        stats.visited += 1
        r = _best_recompute(cfg, c, order, recs, disp, stats, cal, memo)
        if r is not None and not any(_same(r, f) for f in found):
            found.append(r)
            found.sort(key=lambda x: -x.prediction.tflops_per_gpu)
            del found[top:]
    stats.seconds = time.monotonic() - start
    return found, stats

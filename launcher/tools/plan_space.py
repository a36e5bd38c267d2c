"""moe-plan's search space: the layouts worth trying for a model on N GPUs, and the config of each.

A candidate is (TP, CP, PP, VPP, EP, ETP, MBS, recompute option, dispatcher option, EP all-to-all overlap).
Only arithmetic is checked here (degrees that tile the GPUs and split what they split); every other rule is
the launcher's own (launcher.plan.rules), applied by the planner to the configs built here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator

from omegaconf import OmegaConf

from launcher.config.compose import CONF_DIR, group_options
from launcher.config.schema import DispatcherConfig, RecomputeConfig, RunConfig

MBS_CHOICES = (1, 2, 4, 8)
# Dispatchers tried by default: ncclep is left out (conf/dispatcher/ncclep.yaml: broken with megatron-core
# 0.19.2 + TE 2.20.2); --dispatchers names others.
DEFAULT_DISPATCHERS = ("alltoall", "allgather", "deepep", "hybridep")
MIN_UNITS_PER_STAGE = 2  # a virtual stage of one layer adds a send per layer for little bubble gained
MAX_VPP = 8
MIN_CP_TOKENS = 4096  # context parallel only where each rank keeps at least this many tokens of a sequence


@dataclass(frozen=True)
class Grid:
    tp: int
    cp: int
    pp: int
    vpp: int
    ep: int
    etp: int


@dataclass(frozen=True)
class Candidate:
    grid: Grid
    mbs: int
    recompute: str
    dispatcher: str
    overlap: bool

    def overrides(self) -> list[str]:
        """What moe-launch takes to run this candidate (on top of the planner's base overrides)."""
        g = self.grid
        out = [f"parallel.tp={g.tp}", f"parallel.pp={g.pp}",
               f"parallel.vpp={g.vpp if g.vpp > 1 else 'null'}",
               f"parallel.pipeline_layout={'auto' if g.pp > 1 else 'null'}",
               f"parallel.ep={g.ep}", f"parallel.etp={g.etp}", f"parallel.cp={g.cp}",
               f"train.micro_batch_size={self.mbs}", f"recompute={self.recompute}", f"dispatcher={self.dispatcher}"]
        # always said: a preset's own setting would otherwise survive `dispatcher=NAME` (it is merged after it)
        out.append(f"dispatcher.overlap_moe_expert_parallel_comm={'true' if self.overlap else 'false'}")
        return out

    def label(self) -> str:
        g = self.grid
        return (f"tp{g.tp} cp{g.cp} pp{g.pp} vpp{g.vpp} ep{g.ep} etp{g.etp} mbs{self.mbs} {self.recompute} "
                f"{self.dispatcher}{' +a2a-overlap' if self.overlap else ''}")


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def grids(cfg: RunConfig, world: int) -> Iterator[Grid]:
    """Degrees that tile `world` GPUs and split the model's heads, layers, experts and sequence."""
    m, hw = cfg.model, cfg.hardware
    seq = cfg.train.seq_length
    groups = m.num_query_groups or m.num_attention_heads
    tps = [t for t in divisors(min(world, hw.gpus_per_node)) if m.num_attention_heads % t == 0
           and (m.multi_latent_attention or groups % t == 0)]
    cps = [c for c in divisors(world) if c <= 16 and (c == 1 or seq // c >= MIN_CP_TOKENS and seq % (2 * c) == 0)]
    units = m.num_layers + 2 + (m.mtp_num_layers or 0)  # embedding and loss count as a layer each
    pps = [p for p in divisors(world) if p * MIN_UNITS_PER_STAGE <= units]
    eps = [e for e in divisors(m.num_experts) if world % e == 0]
    for tp in tps:
        for cp in cps:
            for pp in pps:
                if world % (tp * cp * pp):
                    continue
                vpps = [1] if pp == 1 else [v for v in range(1, MAX_VPP + 1) if pp * v * MIN_UNITS_PER_STAGE <= units]
                for ep in eps:
                    if world % (ep * pp):
                        continue
                    for vpp in vpps:
                        yield Grid(tp, cp, pp, vpp, ep, 1)


def batch_sizes(cfg: RunConfig, world: int, g: Grid) -> list[int]:
    dp = world // (g.tp * g.cp * g.pp)
    gbs = cfg.train.global_batch_size
    return [b for b in MBS_CHOICES if gbs % (b * dp) == 0]


def _load(group: str, name: str, base) -> object:
    """conf/<group>/<name>.yaml merged over `base` (a group's dataclass), typed."""
    node = OmegaConf.merge(OmegaConf.structured(base), OmegaConf.load(CONF_DIR / group / f"{name}.yaml"))
    return OmegaConf.to_object(node)


def recompute_options(names: list[str] | None = None) -> dict[str, RecomputeConfig]:
    return {n: _load("recompute", n, RecomputeConfig()) for n in (names or group_options("recompute"))}


def dispatcher_options(base: DispatcherConfig, names: list[str] | None = None) -> dict[str, DispatcherConfig]:
    """Each dispatcher option over the user's dispatcher fields (router fusion etc. stay as given)."""
    clean = dataclasses.replace(base, type="alltoall", flex_backend=None, overlap_moe_expert_parallel_comm=False,
                                delay_wgrad_compute=False)
    return {n: _load("dispatcher", n, clean) for n in (names or DEFAULT_DISPATCHERS)}


def build(cfg: RunConfig, c: Candidate, recomputes: dict[str, RecomputeConfig],
          dispatchers: dict[str, DispatcherConfig]) -> RunConfig:
    """The base config with the candidate's choices (the base is never mutated)."""
    g = c.grid
    par = dataclasses.replace(cfg.parallel, tp=g.tp, cp=g.cp, pp=g.pp, vpp=g.vpp if g.vpp > 1 else None,
                              pipeline_layout="auto" if g.pp > 1 else None, ep=g.ep, etp=g.etp,
                              sequence_parallel=None)
    disp = dataclasses.replace(dispatchers[c.dispatcher], overlap_moe_expert_parallel_comm=c.overlap)
    if c.overlap:
        disp = dataclasses.replace(disp, delay_wgrad_compute=cfg.dispatcher.delay_wgrad_compute)
    return dataclasses.replace(cfg, parallel=par, dispatcher=disp, recompute=recomputes[c.recompute],
                               train=dataclasses.replace(cfg.train, micro_batch_size=c.mbs))

"""Build the launch plan: resolve, validate, map to Megatron argv, check with Megatron. No side effects.

The process launcher in front of the entry (torchrun, or the interpreter under srun) is the executor's
choice: launcher.run binds it to the plan (LaunchPlan.launcher, rank_env) before anything is written."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from launcher.config.schema import RunConfig
from launcher.plan.estimate_table import estimate_record
from launcher.plan.facts import launch_facts
from launcher.plan.checkpoint import Checkpointing, ResumePoint, checkpointing
from launcher.plan.megatron.table import OWNED_FLAGS, launch_flags, resolved_flags, table_flags
from launcher.plan.probe import MachineProbe
from launcher.plan.resolve import Resolved, resolve
from launcher.plan.secrets import PLACEHOLDER, is_secret, secret_env
from launcher.plan.rules import validate

ENTRY_MODULE = "recipes.pretrain"


@dataclass(frozen=True)
class LaunchPlan:
    """Everything a run executes; written to the run directory before anything starts."""

    argv: list[str]
    """Megatron argv handed to the training entry on every rank."""
    env: dict[str, str]
    """Environment for every rank (the calling shell's value wins, see command.sh)."""
    resolved: Resolved
    megatron: dict = field(default_factory=dict)
    """Facts Megatron's validator derived (data parallel size, microbatches)."""
    facts: dict = field(default_factory=dict)
    """What the run is (launcher/plan/facts.py): records and results read it from plan.json."""
    estimate: dict = field(default_factory=dict)
    """Estimated memory per pipeline rank and FLOPs (launcher/plan/estimate_table.py): estimate.json."""
    launcher: list[str] = field(default_factory=list)
    """The process launcher in front of the entry (torchrun), bound by the executor (launcher.run)."""
    rank_env: dict[str, str] = field(default_factory=dict)
    """Per-rank variables read from the process launcher's variables (Slurm: RANK <- SLURM_PROCID)."""
    secret_env: dict[str, str] = field(default_factory=dict, repr=False)
    """Credential values of cluster.env: handed to the launch's environment, never written (not in plan.json)."""
    checkpoint: Checkpointing = field(default_factory=Checkpointing)
    """Where the run saves, how often, what it resumes from (launcher/plan/checkpoint.py)."""

    @property
    def command(self) -> list[str]:
        return [*self.launcher, "-m", ENTRY_MODULE, *self.argv]


def megatron_argv(cfg: RunConfig, res: Resolved, ck: Optional[Checkpointing] = None) -> list[str]:
    """Table flags, per-launch flags, then the escape hatch (checked against Megatron's parser). With `ck`
    (a launch into a run directory) the checkpoint, resume and timeout flags come before the escape hatch."""
    argv = table_flags(cfg) + resolved_flags(cfg, res) + (launch_flags(cfg, res, ck) if ck is not None else [])
    extra, raw = dict(cfg.megatron.extra), list(cfg.megatron.raw)
    if extra or raw:
        from launcher.plan.megatron.parser import check_no_duplicates, check_raw, dests, extra_dests, extra_to_argv

        owned = argv + list(OWNED_FLAGS)
        check_no_duplicates(owned, extra_dests(extra), "megatron.extra")
        extra_argv = extra_to_argv(extra)
        check_raw(raw)
        check_no_duplicates(owned + extra_argv, dests(raw), "megatron.raw")
        argv += extra_argv + raw
    return argv


def run_env(cfg: RunConfig, res: Resolved) -> dict[str, str]:
    env = {"PYTHONUNBUFFERED": "1"}  # rank output reaches the log as it happens
    if cfg.dispatcher.overlap_moe_expert_parallel_comm:
        # the overlapped 1F1B schedule runs dispatch/combine on their own streams: they need more hardware
        # queues (validate_args then only warns about TP/CP), and TE's norms leave SMs for the comm kernels
        env["CUDA_DEVICE_MAX_CONNECTIONS"] = "32"
        env["NVTE_FWD_LAYERNORM_SM_MARGIN"] = env["NVTE_BWD_LAYERNORM_SM_MARGIN"] = "24"
    elif (cfg.parallel.tp > 1 or cfg.parallel.cp > 1) and not cfg.parallel.use_megatron_fsdp:
        # one hardware queue keeps TP/CP communication kernels ordered ahead of the GEMMs they overlap
        # (validate_args requires it on Hopper and older; Megatron FSDP requires it unset or > 1)
        env["CUDA_DEVICE_MAX_CONNECTIONS"] = "1"
    if cfg.model.moe_grouped_gemm_impl != "te":
        env["MOE_GROUPED_GEMM_IMPL"] = cfg.model.moe_grouped_gemm_impl  # read by recipes/experts.py
    if cfg.train.kernel_profile:
        env["MOE_PROFILE_STEPS"] = cfg.train.kernel_profile  # read by recipes/profiling.py on every rank
    if res.device == "cpu":
        env["OMP_NUM_THREADS"] = "1" if res.nproc_per_node > 1 else "2"  # 2-core CI machines
    # credentials are named, never written (launcher/plan/secrets.py); LaunchPlan.secret_env carries the values
    env.update({k: PLACEHOLDER if is_secret(k, cfg.cluster.secret_names) else str(v)
                for k, v in cfg.cluster.env.items()})
    return env


def compute_capability(cfg: RunConfig) -> tuple[int, int]:
    """hardware.compute_capability ("9.0", "10.0") as Megatron's device checks read it."""
    major, _, minor = cfg.hardware.compute_capability.partition(".")
    return int(major), int(minor or 0)


def build_plan(cfg: RunConfig, probe: MachineProbe, run_dir: Optional[Path] = None,
               resume: Optional[ResumePoint] = None) -> LaunchPlan:
    """Resolve, validate with our rules, map, then validate with Megatron's own checks. With run_dir (what
    moe-launch passes) the run saves there and resumes from `resume`; without, the argv is the layout's alone
    unless train.save or train.load name a directory."""
    res = resolve(cfg, probe)
    validate(cfg, res)
    explicit = cfg.train.save is not None or cfg.train.load is not None
    ck = checkpointing(cfg, res, run_dir, resume) if run_dir is not None or explicit else None
    argv = megatron_argv(cfg, res, ck)
    env = run_env(cfg, res)
    derived: dict = {}
    if cfg.launch.megatron_validate:
        from launcher.plan.megatron.validator import megatron_validate

        derived = megatron_validate(argv, res.world_size, env, compute_capability(cfg))
    return LaunchPlan(argv=argv, env=env, resolved=res, megatron=derived, facts=launch_facts(cfg, res, derived),
                      estimate=estimate_record(cfg, res), checkpoint=ck or Checkpointing(),
                      secret_env=secret_env(cfg.cluster.env, cfg.cluster.secret_names))


def plan_record(plan: LaunchPlan) -> dict:
    return {"argv": plan.argv, "env": plan.env, "command": plan.command,
            "checkpoint": dataclasses.asdict(plan.checkpoint),
            "resolved": dataclasses.asdict(plan.resolved), "megatron": plan.megatron, "facts": plan.facts}

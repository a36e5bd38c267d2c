"""Build the launch plan: resolve, validate, map to Megatron argv, check with Megatron. No side effects.

The process launcher in front of the entry (torchrun, or the interpreter under srun) is the executor's
choice: launcher.run binds it to the plan (LaunchPlan.launcher, rank_env) before anything is written."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from launcher.config.schema import RunConfig
from launcher.errors import ConfigError
from launcher.plan.estimate_table import estimate_record
from launcher.plan.facts import launch_facts
from launcher.plan.checkpoint import Checkpointing, ResumePoint, checkpointing, saved_buckets
from launcher.plan.megatron.table import OWNED_FLAGS, launch_flags, resolved_flags, table_flags
from launcher.plan.probe import MachineProbe
from launcher.plan.resolve import Resolved, resolve
from launcher.plan.resume_buckets import follow_overlap
from launcher.plan.secrets import PLACEHOLDER, is_secret, secret_env
from launcher.plan.rules import validate
from launcher.plan.dispatch_tuned import apply_tuned
from launcher.plan.tuned import Tuned, tuned_config
from launcher.records.checkpoint_buckets import BucketCut

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
    """Per-rank variables as shell expressions of the process launcher's variables (Slurm: RANK="${SLURM_PROCID}")."""
    secret_env: dict[str, str] = field(default_factory=dict, repr=False)
    """Credential values of cluster.env: handed to the launch's environment, never written (not in plan.json)."""
    checkpoint: Checkpointing = field(default_factory=Checkpointing)
    """Where the run saves, how often, what it resumes from (launcher/plan/checkpoint.py)."""

    @property
    def command(self) -> list[str]:
        return [*self.launcher, "-m", ENTRY_MODULE, *self.argv]


def megatron_argv(cfg: RunConfig, res: Resolved, ck: Optional[Checkpointing] = None) -> list[str]:
    """Table flags, per-launch flags, then the escape hatch (checked against Megatron's parser). The table reads
    the tuned knobs as resolved, never the word auto. With `ck` (a launch into a run directory) the checkpoint,
    resume and timeout flags come before the escape hatch."""
    cfg = tuned_config(cfg, res.tuned)
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
    if res.tuned.overlap_moe_expert_parallel_comm:
        # the overlapped 1F1B schedule runs dispatch/combine on their own streams: they need more hardware
        # queues (validate_args then only warns about TP/CP), and TE's norms leave SMs for the comm kernels
        env["CUDA_DEVICE_MAX_CONNECTIONS"] = "32"
        env["NVTE_FWD_LAYERNORM_SM_MARGIN"] = env["NVTE_BWD_LAYERNORM_SM_MARGIN"] = "24"
    elif (cfg.parallel.tp > 1 or cfg.parallel.cp > 1) and not cfg.parallel.use_megatron_fsdp:
        # one hardware queue keeps TP/CP communication kernels ordered ahead of the GEMMs they overlap
        # (validate_args requires it on Hopper and older; Megatron FSDP requires it unset or > 1)
        env["CUDA_DEVICE_MAX_CONNECTIONS"] = "1"
    if res.tuned.moe_grouped_gemm_impl != "te":
        env["MOE_GROUPED_GEMM_IMPL"] = res.tuned.moe_grouped_gemm_impl  # read by recipes/experts.py
    if res.tuned.cross_entropy_loss_fusion and res.tuned.cross_entropy_fusion_impl == "lean":
        env["MOE_CROSS_ENTROPY"] = "lean"  # read by recipes/loss.py; Megatron's argv has no fused loss then
    alloc = allocator_conf(res.tuned)
    if alloc and "PYTORCH_CUDA_ALLOC_CONF" not in cfg.cluster.env:
        env["PYTORCH_CUDA_ALLOC_CONF"] = alloc  # a cluster.env value keeps its own place below
    if cfg.train.kernel_profile:
        env["MOE_PROFILE_STEPS"] = cfg.train.kernel_profile  # read by recipes/profiling.py on every rank
    env.update(modelopt_env(cfg))
    if res.device == "cpu":
        env["OMP_NUM_THREADS"] = "1" if res.nproc_per_node > 1 else "2"  # 2-core CI machines
    # credentials are named, never written (launcher/plan/secrets.py); LaunchPlan.secret_env carries the values
    env.update({k: PLACEHOLDER if is_secret(k, cfg.cluster.secret_names) else str(v)
                for k, v in cfg.cluster.env.items()})
    return env


def allocator_conf(tuned: Tuned) -> str:
    """PYTORCH_CUDA_ALLOC_CONF from the tuned allocator knobs (launcher/plan/tuned.py): expandable segments
    against fragmentation; the async save's pinned host memory registered by 8 threads."""
    parts = ["expandable_segments:True"] if tuned.expandable_segments else []
    if tuned.host_register:
        parts += ["pinned_use_cuda_host_register:True", "pinned_num_register_threads:8"]
    return ",".join(parts)


def modelopt_env(cfg: RunConfig) -> dict[str, str]:
    """quant and distill as the recipe reads them (recipes/qat.py, recipes/distill.py): one JSON value each."""
    env = {}
    if cfg.quant.qat != "none":
        env["MOE_QAT"] = json.dumps({"qat": str(cfg.quant.qat), "calib_batches": cfg.quant.calib_batches,
                                     "exclude": list(cfg.quant.exclude)})
    if cfg.distill.enabled:
        d = cfg.distill
        env["MOE_DISTILL"] = json.dumps({"teacher_checkpoint": os.path.abspath(d.teacher_checkpoint or ""),
                                         "temperature": d.temperature, "layer_pairs": [list(p) for p in d.layer_pairs],
                                         "layer_weight": d.layer_weight, "lm_loss_weight": d.lm_loss_weight})
    return env


def compute_capability(cfg: RunConfig) -> tuple[int, int]:
    """hardware.compute_capability ("9.0", "10.0") as Megatron's device checks read it."""
    major, _, minor = cfg.hardware.compute_capability.partition(".")
    return int(major), int(minor or 0)


def _predicted_fit(cfg: RunConfig, res: Resolved) -> Optional[bool]:
    """Whether the estimated peak fits the device; None where the layout is invalid (the rules say why)."""
    from launcher.plan.estimate_memory import estimate_memory
    from launcher.plan.estimate_table import usable

    try:
        est = estimate_memory(cfg, res)
    except ConfigError:
        return None
    return est.peak <= usable(est.capacity)


# tuned knobs that cost memory, cheapest to give up first: the overlap keeps one micro batch more in flight,
# Megatron's native fused loss one FP32 copy of the logits more at its peak (the lean loss is below the unfused
# one, so giving it up would not help: _costs_memory asks the estimator)
MEMORY_KNOBS = (("dispatcher", "overlap_moe_expert_parallel_comm"), ("train", "cross_entropy_loss_fusion"))


def _costs_memory(cfg: RunConfig, res: Resolved, knob: str) -> bool:
    """Whether the knob, on as tuned, raises the peak: for the loss, the estimator's bytes per logit entry
    (estimate_memory.logits_per_token, the one place that knows them) with and without the fused loss."""
    if knob == "cross_entropy_loss_fusion":
        from launcher.plan.estimate_memory import logits_per_token

        off = dataclasses.replace(res.tuned, cross_entropy_loss_fusion=False)
        return logits_per_token(tuned_config(cfg, res.tuned), res)[0] > logits_per_token(tuned_config(cfg, off), res)[0]
    return getattr(res.tuned, knob)


def fit_tuned_memory(cfg: RunConfig, res: Resolved) -> Resolved:
    """Where a knob that auto turned on makes the run exceed the memory rule's limit, auto turns it off again
    and says so: a tuned default never makes a run that fits without it refused. Pinned knobs stay."""
    if cfg.launch.skip_memory_check or _predicted_fit(cfg, res) is not False:
        return res
    for group, knob in MEMORY_KNOBS:
        if str(getattr(getattr(cfg, group), knob)) != "auto" or not _costs_memory(cfg, res, knob):
            continue
        off = dataclasses.replace(res, tuned=dataclasses.replace(res.tuned, **{knob: False}))
        note = f"{knob}=auto -> false: the predicted peak with it exceeds the memory rule's limit"
        res = dataclasses.replace(off, notes=tuple(n for n in res.notes if not n.startswith(knob + "=")) + (note,))
        if _predicted_fit(cfg, res):
            break
    return res


def resolve_and_validate(cfg: RunConfig, probe: MachineProbe, saved: Optional[BucketCut] = None) -> Resolved:
    """resolve (the gradient overlap following the bucket cut of the checkpoint the run loads, `saved`), then every
    rule; where only the memory rule (the last) refuses, the tuned knobs that cost memory fall back
    (fit_tuned_memory) and the rules run again."""
    res = follow_overlap(cfg, resolve(cfg, probe), saved)
    try:
        validate(cfg, res)
    except ConfigError as e:
        if e.field != "memory":
            raise
        res = fit_tuned_memory(cfg, res)
        validate(cfg, res)
    return res


def build_plan(cfg: RunConfig, probe: MachineProbe, run_dir: Optional[Path] = None,
               resume: Optional[ResumePoint] = None) -> LaunchPlan:
    """Resolve, validate with our rules, map, then validate with Megatron's own checks. Everything after
    resolve reads the config with its tuned knobs concrete (launcher/plan/tuned.py). With run_dir (what
    moe-launch passes) the run saves there and resumes from `resume`; without, the argv is the layout's alone
    unless train.save or train.load name a directory."""
    cfg = apply_tuned(cfg)  # dispatcher.tuned: a dispatcher benchmark's best knobs become fields and flags first
    res = resolve_and_validate(cfg, probe, saved_buckets(cfg, run_dir, resume))
    cfg = tuned_config(cfg, res.tuned)
    explicit = cfg.train.save is not None or cfg.train.load is not None
    ck = checkpointing(cfg, res, run_dir, resume) if run_dir is not None or explicit else None
    argv = megatron_argv(cfg, res, ck)
    env = run_env(cfg, res)
    if ck is not None and ck.save is not None and ck.keep_last:
        env["MOE_KEEP_LAST"] = str(ck.keep_last)  # recipes/retention.py: rank 0 prunes while the run goes on
    derived: dict = {}
    if cfg.launch.megatron_validate:
        from launcher.plan.megatron.validator import megatron_validate

        dirs = {str(run_dir), str(run_dir.resolve())} if run_dir is not None else set()
        key_argv = [next((a.replace(d, "<run_dir>") for d in sorted(dirs, key=len, reverse=True) if d in a), a)
                    for a in argv]
        derived = megatron_validate(argv, res.world_size, env, compute_capability(cfg), key_argv)
    return LaunchPlan(argv=argv, env=env, resolved=res, megatron=derived, facts=launch_facts(cfg, res, derived),
                      estimate=estimate_record(cfg, res), checkpoint=ck or Checkpointing(),
                      secret_env=secret_env(cfg.cluster.env, cfg.cluster.secret_names))


def plan_record(plan: LaunchPlan) -> dict:
    return {"argv": plan.argv, "env": plan.env, "command": plan.command,
            "checkpoint": dataclasses.asdict(plan.checkpoint),
            "resolved": dataclasses.asdict(plan.resolved), "megatron": plan.megatron, "facts": plan.facts}

"""cluster.executor -> the executor that runs it, and the plan bound to that executor's process launcher."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from launcher.config.choices import ExecutorKind
from launcher.config.schema import RunConfig
from launcher.plan.checkpoint import ResumePoint
from launcher.plan.plan import LaunchPlan, build_plan
from launcher.plan.probe import MachineProbe
from launcher.run.base import Executor
from launcher.run.container import ContainerExecutor
from launcher.run.local import LocalExecutor
from launcher.run.slurm import SlurmExecutor

EXECUTORS: dict[ExecutorKind, Executor] = {ExecutorKind.local: LocalExecutor(), ExecutorKind.slurm: SlurmExecutor(),
                                           ExecutorKind.container: ContainerExecutor()}


def executor_for(cfg: RunConfig) -> Executor:
    return EXECUTORS[ExecutorKind(cfg.cluster.executor)]


def bind(cfg: RunConfig, plan: LaunchPlan, python: Optional[str] = None) -> LaunchPlan:
    """The plan with its executor's process launcher (torchrun, or the interpreter under srun) in front."""
    launcher, rank_env = executor_for(cfg).process(cfg, plan.resolved, python)
    return dataclasses.replace(plan, launcher=launcher, rank_env=rank_env)


def launch_plan(cfg: RunConfig, probe: MachineProbe, python: Optional[str] = None, run_dir: Optional[Path] = None,
                resume: Optional[ResumePoint] = None) -> LaunchPlan:
    """build_plan (resolve, our rules, the flag table, Megatron's validator), bound to the executor."""
    return bind(cfg, build_plan(cfg, probe, run_dir, resume), python)

"""The run directory: everything needed to reproduce a run, written before it starts.

  config.yaml   the composed config, as the user's groups and overrides made it
  plan.json     the moe-launch command, the project's git commit, argv, environment, command, how each "auto"
                was resolved, Megatron's derived sizes, the run's facts (launcher/plan/facts.py)
  argv.txt      the Megatron argv, one token per line
  estimate.json estimated memory per pipeline rank and FLOPs per step (launcher/plan/estimate_table.py)
  command.sh    the exact script a real run executes
  train.log     (real runs) every rank's output
  exit.json     (real runs) return code, wall time, and the signal that stopped it
  checkpoints/  (real runs) Megatron's checkpoints, unless train.save points elsewhere
  attempts/<n>/ every earlier attempt's files, moved there by a relaunch (launcher/run/rundir_lock.py)
  .lock         held by the moe-launch that uses the directory
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from launcher.plan.plan import LaunchPlan, plan_record
from launcher.plan.secrets import PLACEHOLDER, redact_overrides
from launcher.run.command import render_script
from launcher.config.schema import RunConfig
from launcher.errors import ConfigError


def default_run_dir(cfg: RunConfig) -> Path:
    name = cfg.launch.name or cfg.model.name
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_run_dir(run_dir: Path, cfg: Optional[RunConfig] = None) -> None:
    """Before the plan (Megatron's validator takes half a minute): the run directory can be made here, and so can
    train.save of a local run (else Megatron fails at the first save, an interval of training later; on Slurm the
    ranks check it, recipes/checkpoint.py)."""
    _check_creatable(run_dir, "launch.run_dir")
    if cfg is not None and cfg.train.save and cfg.cluster.executor == "local":
        _check_creatable(Path(cfg.train.save), "train.save")


def _check_creatable(path: Path, field: str) -> None:
    """The nearest existing ancestor must be a writable directory, and the directory itself, if it exists, too."""
    probe = path.expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(field, str(path), f"{probe} is a file, so no directory can be made under it",
                          f"choose a {field} outside it")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(field, str(path), f"{probe} is not writable here",
                          f"choose a {field} on a writable filesystem (or run from a writable directory)")


def write_run_dir(run_dir: Path, composed: DictConfig, plan: LaunchPlan, workdir: Path,
                  overrides: list[str] | None = None) -> Path:
    """Write the run directory; returns the path of command.sh."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(_redacted(composed, plan.secret_env)))
    from launcher.records.provenance import code_version

    code = code_version(Path(__file__).resolve().parents[2])  # this project's commit (record.py reads it)
    shown = redact_overrides(list(overrides or []), plan.secret_env)
    record = {"moe_launch": ["moe-launch", *shown], "code": code, **plan_record(plan)}
    (run_dir / "plan.json").write_text(json.dumps(record, indent=2) + "\n")
    (run_dir / "argv.txt").write_text("\n".join(plan.argv) + "\n")
    (run_dir / "estimate.json").write_text(json.dumps(plan.estimate, indent=1) + "\n")
    script = run_dir / "command.sh"
    script.write_text(render_script(plan, workdir))
    script.chmod(0o755)
    return script


def _redacted(composed: DictConfig, secrets: dict[str, str]) -> DictConfig:
    """The composed config with every credential of cluster.env shown as launcher.plan.secrets.PLACEHOLDER."""
    if not secrets:
        return composed
    copy = OmegaConf.create(OmegaConf.to_container(composed, resolve=False))
    for name in secrets:
        copy.cluster.env[name] = PLACEHOLDER
    return copy

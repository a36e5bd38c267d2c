"""Executors run what the plan rendered; they never build commands themselves.

  local      bash command.sh: torchrun on this machine                       executors/local.py
  slurm      sbatch sbatch.sh: one srun task per GPU, each runs command.sh    executors/slurm.py (+ sbatch.py)
  container  bash container.sh: docker/podman run ... bash command.sh         executors/container.py

Every executor's entry file is rendered here, before the run directory is written, so a bad value stops
the launch before anything exists; a dry run writes the same files and prints the entry file.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from launcher.derive import Resolved
    from launcher.plan import LaunchPlan
    from launcher.schema import RunConfig

# torch.distributed's env:// rendezvous and Megatron read these; srun sets one task per GPU
SLURM_RANK_ENV = {"RANK": "SLURM_PROCID", "WORLD_SIZE": "SLURM_NTASKS", "LOCAL_RANK": "SLURM_LOCALID",
                  "LOCAL_WORLD_SIZE": "SLURM_NTASKS_PER_NODE"}

ENTRY_FILES = {"local": "command.sh", "slurm": "sbatch.sh", "container": "container.sh"}


def in_container(cfg: "RunConfig") -> bool:
    c = cfg.cluster
    return c.executor == "container" or (c.executor == "slurm" and c.container_image is not None)


def process_launcher(cfg: "RunConfig", res: "Resolved", python: Optional[str] = None) -> tuple[list[str], dict[str, str]]:
    """The command in front of `-m recipes.pretrain`, and the per-rank variables it leaves to the script.

    local/container: torchrun starts every rank on one machine. slurm: srun starts one task per GPU, so
    each task runs the interpreter itself and takes its rank from Slurm's variables."""
    from launcher.plan import torchrun

    py = cfg.cluster.python or python or ("python" if in_container(cfg) else sys.executable)
    prefix = list(cfg.cluster.launch_prefix)
    if cfg.cluster.executor == "slurm":
        return [*prefix, py], dict(SLURM_RANK_ENV)
    return [*prefix, *torchrun(cfg, res, py)], {}


def workdir(cfg: "RunConfig") -> Path:
    """Where each rank runs: the container's working directory when one is set, else this directory."""
    if in_container(cfg) and cfg.cluster.container_workdir:
        return Path(cfg.cluster.container_workdir)
    return Path.cwd()


def render_entry(cfg: "RunConfig", plan: "LaunchPlan", run_dir: Path) -> Optional[str]:
    """The text of sbatch.sh / container.sh (None for local: command.sh is the entry). Raises ConfigError."""
    if cfg.cluster.executor == "slurm":
        from launcher.sbatch import render_sbatch

        return render_sbatch(cfg, plan, run_dir.absolute(), Path.cwd())
    if cfg.cluster.executor == "container":
        from launcher.executors.container import render_container

        return render_container(cfg, plan, run_dir.absolute(), Path.cwd())
    return None


def write_entry(cfg: "RunConfig", run_dir: Path, text: Optional[str], command_sh: Path) -> Path:
    """Write the rendered entry file next to command.sh; the path a real run executes."""
    if text is None:
        return command_sh
    path = run_dir / ENTRY_FILES[cfg.cluster.executor]
    path.write_text(text)
    path.chmod(0o755)
    return path


def how_to_run(cfg: "RunConfig", entry: Path) -> str:
    return f"sbatch {entry}" if cfg.cluster.executor == "slurm" else f"bash {entry}"


def execute(cfg: "RunConfig", entry: Path) -> int:
    """Run the entry file with its executor; the exit code moe-launch returns."""
    if cfg.cluster.executor == "slurm":
        from launcher.executors.slurm import submit_and_report

        return submit_and_report(cfg, entry)
    from launcher.executors.local import run_local

    rc = run_local(entry)  # container.sh: docker/podman in the foreground, output to train.log
    status = "finished" if rc == 0 else f"FAILED (exit {rc})"
    print(f"moe-launch: {status}; log: {entry.parent / 'train.log'}", file=sys.stderr if rc else sys.stdout)
    return rc

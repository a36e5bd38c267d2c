"""What every executor does, and the one thing each does differently.

  local      bash command.sh: torchrun on this machine                       run/local.py
  slurm      sbatch sbatch.sh: one srun task per GPU, each runs command.sh    run/slurm.py
  container  bash container.sh: docker/podman run ... bash command.sh         run/container.py

An executor never builds the Megatron command: it puts its process launcher in front of the plan's
(`process`), renders its entry file (`render`, before the run directory is written, so a bad value
stops the launch before anything exists; a dry run writes the same files), says how to start it by hand
(`how_to_run`) and starts it (`run`). The registry (run/registry.py) maps cluster.executor to one.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Optional

if TYPE_CHECKING:
    from launcher.config.schema import RunConfig
    from launcher.plan.plan import LaunchPlan
    from launcher.plan.probe import MachineProbe
    from launcher.plan.resolve import Resolved


class Executor:
    """Base class: one machine, torchrun in front of the entry, command.sh is the entry file."""

    entry_file: ClassVar[str] = "command.sh"
    in_container: ClassVar[bool] = False
    """Ranks run inside an image: the interpreter there is `python`, and the image may set a workdir."""

    def uses_container(self, cfg: "RunConfig") -> bool:
        return self.in_container

    def python(self, cfg: "RunConfig", python: Optional[str] = None) -> str:
        return cfg.cluster.python or python or ("python" if self.uses_container(cfg) else sys.executable)

    def process(self, cfg: "RunConfig", res: "Resolved",
                python: Optional[str] = None) -> tuple[list[str], dict[str, str]]:
        """The command in front of `-m recipes.pretrain`, and the per-rank variables it leaves to the script."""
        return [*cfg.cluster.launch_prefix, *torchrun(cfg, res, self.python(cfg, python))], {}

    def workdir(self, cfg: "RunConfig") -> Path:
        """Where each rank runs: the container's working directory when one is set, else this directory."""
        wd = getattr(cfg.cluster, "container_workdir", None)
        return Path(wd) if self.uses_container(cfg) and wd else Path.cwd()

    def check_machine(self, cfg: "RunConfig", plan: "LaunchPlan", probe: "MachineProbe") -> None:
        """What a real run needs of the machine it starts on, checked before the run directory is written (a dry
        run skips it: its script may run elsewhere). Raises ConfigError. Here: nothing (Slurm's ranks run on
        the compute nodes)."""

    def render(self, cfg: "RunConfig", plan: "LaunchPlan", run_dir: Path) -> Optional[str]:
        """The text of the entry file when it is not command.sh itself. Raises ConfigError."""
        return None

    def write_entry(self, run_dir: Path, text: Optional[str], command_sh: Path) -> Path:
        """Write the rendered entry file next to command.sh; the path a real run executes."""
        if text is None:
            return command_sh
        path = run_dir / self.entry_file
        path.write_text(text)
        path.chmod(0o755)
        return path

    def how_to_run(self, entry: Path) -> str:
        return f"bash {entry}"

    def run(self, cfg: "RunConfig", entry: Path) -> int:
        """Start the entry file; the exit code moe-launch returns."""
        raise NotImplementedError(type(self).__name__)


def torchrun(cfg: "RunConfig", res: "Resolved", python: Optional[str] = None) -> list[str]:
    """torchrun through this interpreter (python -m torch.distributed.run), one node. torchrun checks its
    workers every 0.1 s (its --monitor-interval default) and stops the others when one dies."""
    return [python or sys.executable, "-m", "torch.distributed.run", "--nnodes", str(cfg.cluster.nodes),
            "--nproc-per-node", str(res.nproc_per_node), "--master-addr", "127.0.0.1",
            "--master-port", str(cfg.cluster.master_port or free_port())]


def free_port() -> int:
    """A rendezvous port nobody on this machine listens on now (the kernel's pick), so two jobs on one host
    do not collide on 29500. torchrun binds it a moment later; the window is small."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

"""One cluster schema per executor: what every executor takes (ClusterConfig, also the local executor's
schema), plus what Slurm and the container executor add. conf/cluster/<executor>.yaml lists its schema
first in its defaults, so `cluster=local cluster.account=x` fails at compose like any misspelled key."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from launcher.config.choices import ContainerRuntime, Device, ExecutorKind


@dataclass
class ClusterConfig:
    """Where and on how many GPUs the job runs (every executor; the local executor takes only these)."""

    executor: ExecutorKind = ExecutorKind.local
    """local: torchrun on this machine; slurm: an sbatch script, one srun task per GPU;
    container: torchrun inside `docker run` (or podman) on this machine. Chosen with cluster=NAME."""
    nodes: int = 1
    gpus_per_node: Optional[int] = None
    """None = detected on the machine that launches (local executor), hardware.gpus_per_node for
    Slurm (8, or 4 on GB200/GB300); CPU runs use nproc_cpu."""
    device: Device = Device.auto
    """cuda, cpu, or auto (local: cuda when nvidia-smi lists a GPU; slurm: cuda)."""
    nproc_cpu: int = 1
    """Processes for CPU (gloo) runs when no GPU is present."""
    master_port: Optional[int] = None
    """Rendezvous port; None = a free port on this machine (local, container), 29500 on Slurm."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra process environment for every rank (a value set in the calling shell wins). A name that looks like
    a credential (launcher/plan/secrets.py) is never written: command.sh passes it on from the launching shell."""
    secret_names: list[str] = field(default_factory=list)
    """More cluster.env names (fnmatch patterns) treated as credentials, besides *_KEY, *_TOKEN, *_SECRET,
    *PASSWORD*."""
    stop_grace_s: int = 120
    """After SIGTERM/SIGINT, how long the workers get to save and exit before they are killed."""
    python: Optional[str] = None
    """Interpreter each rank runs; None = this one (sys.executable), or `python` inside a container."""
    launch_prefix: list[str] = field(default_factory=list)
    """Tokens in front of the per-rank (Slurm) or torchrun (local, container) command, e.g. nsys."""


@dataclass
class _ImageConfig:
    """An image the ranks run in: pyxis flags on srun (slurm), or `docker run`/`podman run` (container)."""

    container_image: Optional[str] = None
    """Image to run in; None = no container (Slurm runs on the nodes' own environment)."""
    container_mounts: list[str] = field(default_factory=list)
    """SRC:DST[:FLAGS] bind mounts; the working directory and run directory are added."""
    container_workdir: Optional[str] = None
    """Working directory inside the container; None = this directory, mounted at the same path."""


@dataclass
class SlurmClusterConfig(ClusterConfig, _ImageConfig):
    """executor=slurm: values that become #SBATCH lines are checked, the rest shell-quoted."""

    executor: ExecutorKind = ExecutorKind.slurm
    account: Optional[str] = None
    partition: Optional[str] = None
    time: Optional[str] = None
    """Wall-clock limit in a Slurm time format (MM, HH:MM:SS, D-HH:MM:SS); None = partition default."""
    job_name: Optional[str] = None
    """None = moe-<launch.name or model.name>."""
    output: Optional[str] = None
    """Slurm output file (a Slurm filename pattern); None = <run_dir>/train.log."""
    exclusive: bool = True
    segment: Optional[str] = "auto"
    """Slurm --segment (nodes per block) so each EP x TP group stays in one NVLink domain: auto
    (computed where the domain spans nodes, e.g. GB200 NVL72), a node count, or null (never)."""
    sbatch_extra: list[str] = field(default_factory=list)
    """More #SBATCH directives, e.g. [qos=high, gpus-per-node=8]."""
    srun_extra: list[str] = field(default_factory=list)
    """More srun arguments, e.g. [--mpi=pmix]."""
    follow: bool = False
    """After sbatch: wait for the job, print its state changes; exit 0 only when it COMPLETED."""
    follow_timeout_s: int = 86400
    """Longest wait when following (the job keeps running after moe-launch stops waiting)."""
    requeue: bool = False
    """#SBATCH --requeue (with --open-mode=append, so train.log keeps every run of the job): a preempted or
    requeued job runs again and resumes from its checkpoint; PREEMPTED is then not final for cluster.follow."""
    signal: Optional[str] = None
    """#SBATCH --signal, e.g. TERM@300: SIGTERM to every task 300 s before the time limit, so Megatron
    (--exit-signal-handler) saves and exits in time; null = none."""


@dataclass
class ContainerClusterConfig(ClusterConfig, _ImageConfig):
    """executor=container: one machine, the same command.sh a local run uses, inside an image."""

    executor: ExecutorKind = ExecutorKind.container
    container_runtime: ContainerRuntime = ContainerRuntime.docker
    """docker or podman."""


CLUSTER_SCHEMAS: dict[ExecutorKind, type[ClusterConfig]] = {
    ExecutorKind.local: ClusterConfig, ExecutorKind.slurm: SlurmClusterConfig,
    ExecutorKind.container: ContainerClusterConfig}

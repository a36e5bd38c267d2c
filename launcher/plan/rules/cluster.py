"""Rules for the cluster group (executors, Slurm directives, containers): one function each, part of
validate.RULES. They stop a value that would break or escape the rendered scripts: values that become
#SBATCH lines must be plain (sbatch cannot unquote them); everything else is shell-quoted when rendered,
so only what quoting cannot carry (NUL bytes, newlines in one-line specs, bad variable names) is refused.
"""
from __future__ import annotations

import re
import signal

from launcher.plan.resolve import Resolved
from launcher.errors import ConfigError
from launcher.config.choices import ExecutorKind
from launcher.config.cluster import ContainerClusterConfig, SlurmClusterConfig
from launcher.config.schema import RunConfig

# characters a directive value may hold: no whitespace, quotes, `$`, backslash or control characters
DIRECTIVE_SAFE = re.compile(r"[A-Za-z0-9_.,:+=@/%-]+")
DIRECTIVE_CHARS = "letters, digits and . , : + = @ / % _ -"
# Slurm time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S, or unlimited
TIME_FORMAT = re.compile(r"\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}|UNLIMITED|INFINITE", re.IGNORECASE)
# directives the launcher writes itself, or that a cluster field writes; sbatch_extra may not set them a second time
# (sbatch keeps the last one, silently): long or short option -> the field that sets it (None: the launcher alone)
MANAGED = {"job-name": "job_name", "J": "job_name", "nodes": "nodes", "N": "nodes", "ntasks-per-node": "gpus_per_node",
           "ntasks": "gpus_per_node", "n": "gpus_per_node", "account": "account", "A": "account",
           "partition": "partition", "p": "partition", "time": "time", "t": "time", "output": "output",
           "o": "output", "exclusive": "exclusive", "segment": "segment", "signal": "signal", "requeue": "requeue",
           "no-requeue": "requeue"}
# srun options sbatch.sh writes (launcher/run/slurm.py srun_args): one task per GPU on every node, the job ended
# when one task fails, pyxis' container flags from the container fields
SRUN_MANAGED = {"nodes": "nodes", "N": "nodes", "ntasks-per-node": "gpus_per_node", "ntasks": "gpus_per_node",
                "n": "gpus_per_node", "kill-on-bad-exit": None, "K": None, "container-image": "container_image",
                "container-mounts": "container_mounts", "container-workdir": "container_workdir",
                "no-container-mount-home": None}


def check_directive(field: str, value: str) -> None:
    """A value that becomes an #SBATCH line must be plain (sbatch cannot unquote it)."""
    if not DIRECTIVE_SAFE.fullmatch(value):
        bad = sorted({c for c in value if not DIRECTIVE_SAFE.fullmatch(c)})
        raise ConfigError(field, value, f"becomes an #SBATCH directive, which cannot be quoted; it contains "
                          f"{', '.join(repr(c) for c in bad)}", f"use only {DIRECTIVE_CHARS}")


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_env_names(cfg: RunConfig, res: Resolved) -> None:
    """command.sh writes `export NAME=...`: a name is not quoted, so it must be a shell identifier."""
    for name, value in cfg.cluster.env.items():
        if not ENV_NAME.fullmatch(str(name)):
            raise ConfigError(f"cluster.env[{name!r}]", name, "is not an environment variable name",
                              "use letters, digits and _ (not starting with a digit)")
        if "\0" in str(value):
            raise ConfigError(f"cluster.env.{name}", value, "contains a NUL byte, which no environment can "
                              "hold", "remove it")


def _one_line_values(cfg: RunConfig) -> list[tuple[str, str]]:
    """Every one-line value the executor's schema has (launcher/config/cluster.py)."""
    c = cfg.cluster
    out = [(f"cluster.{n}", getattr(c, n, None)) for n in ("python", "container_image", "container_workdir",
                                                          "account", "partition", "time", "job_name", "output",
                                                          "segment")]
    for n in ("launch_prefix", "sbatch_extra", "srun_extra", "container_mounts"):
        out += [(f"cluster.{n}", v) for v in getattr(c, n, [])]
    return [(f, str(v)) for f, v in out if v is not None]


def check_one_line_values(cfg: RunConfig, res: Resolved) -> None:
    """Paths, images and arguments are single shell words: no NUL (cannot be passed), no newline."""
    for field, value in _one_line_values(cfg):
        if "\0" in value or "\n" in value or "\r" in value:
            raise ConfigError(field, value, "contains a newline or NUL byte", "write it on one line")
        if value == "":
            raise ConfigError(field, value, "is empty", f"remove it or set {field}=null")


def check_container_image(cfg: RunConfig, res: Resolved) -> None:
    if isinstance(cfg.cluster, ContainerClusterConfig) and not cfg.cluster.container_image:
        raise ConfigError("cluster.container_image", None, "the container executor needs an image",
                          "set cluster.container_image=<image>, e.g. one built from container/Dockerfile")


def check_follow_timeout(cfg: RunConfig, res: Resolved) -> None:
    c = cfg.cluster
    if isinstance(c, SlurmClusterConfig) and c.follow_timeout_s < 1:
        raise ConfigError("cluster.follow_timeout_s", c.follow_timeout_s, "must be >= 1 second", "raise it")


def check_slurm_directives(cfg: RunConfig, res: Resolved) -> None:
    """#SBATCH lines cannot be quoted: their values must be plain words."""
    c = cfg.cluster
    if not isinstance(c, SlurmClusterConfig):
        return
    for name in ("account", "partition", "time", "job_name", "output"):
        value = getattr(c, name)
        if value is not None:
            check_directive(f"cluster.{name}", value)
    for extra in c.sbatch_extra:
        check_directive("cluster.sbatch_extra", extra.lstrip("-"))


def check_slurm_time(cfg: RunConfig, res: Resolved) -> None:
    t = getattr(cfg.cluster, "time", None)
    if t is not None and not TIME_FORMAT.fullmatch(t):
        raise ConfigError("cluster.time", t, "is not a Slurm time (MM, HH:MM:SS or D-HH:MM:SS)",
                          "e.g. cluster.time=00:30:00")


def _directive(arg: str) -> str:
    """The directive an sbatch_extra item sets: each renders as `#SBATCH --KEY[=VALUE]` (launcher/run/slurm.py)."""
    return arg.lstrip("-").partition("=")[0]


def _srun_option(arg: str) -> str | None:
    """The option an srun argument sets: --name[=v] -> name, -x[v] -> x; None for a value of the one before."""
    if arg.startswith("--"):
        return arg[2:].split("=", 1)[0]
    return arg[1:2] if arg.startswith("-") and len(arg) > 1 else None


def _check_managed(field: str, args: list[str], key_of, managed: dict, cfg: RunConfig) -> None:
    for arg in args:
        key = key_of(arg)
        if key in managed:
            owner = managed[key]
            raise ConfigError(field, arg, f"{key} is written by the launcher",
                              f"set cluster.{owner} instead" if owner in cfg.cluster.__dataclass_fields__
                              else "drop it")


def check_sbatch_extra(cfg: RunConfig, res: Resolved) -> None:
    """A directive the launcher writes itself would be set twice (sbatch keeps the last, silently)."""
    _check_managed("cluster.sbatch_extra", getattr(cfg.cluster, "sbatch_extra", []), _directive, MANAGED, cfg)


def check_srun_extra(cfg: RunConfig, res: Resolved) -> None:
    """An srun option sbatch.sh writes: another task count would start ranks the plan does not have."""
    _check_managed("cluster.srun_extra", getattr(cfg.cluster, "srun_extra", []), _srun_option, SRUN_MANAGED, cfg)


def check_segment(cfg: RunConfig, res: Resolved) -> None:
    """An explicit --segment: a whole number of segments, each inside one NVLink domain."""
    seg, c, hw = getattr(cfg.cluster, "segment", None), cfg.cluster, cfg.hardware
    if seg is None or seg == "auto":
        return
    if not seg.isdigit() or int(seg) < 1:
        raise ConfigError("cluster.segment", seg, "must be auto, null or a node count >= 1",
                          "set cluster.segment=auto")
    n = int(seg)
    if c.nodes % n:
        raise ConfigError("cluster.segment", seg, f"cluster.nodes={c.nodes} is not a multiple of it (Slurm "
                          "allocates whole segments)", "pick a divisor of cluster.nodes")
    if n * res.nproc_per_node > hw.nvlink_domain:
        raise ConfigError("cluster.segment", seg, f"{n} nodes x {res.nproc_per_node} GPUs exceed one NVLink domain "
                          f"({hw.nvlink_domain} GPUs on {hw.name})", "lower it, or set cluster.segment=auto")


def check_container_mounts(cfg: RunConfig, res: Resolved) -> None:
    """SRC:DST[:FLAGS] with absolute paths; pyxis separates mounts with commas, so none inside one."""
    for spec in getattr(cfg.cluster, "container_mounts", []):
        parts = spec.split(":")
        if not 2 <= len(parts) <= 3 or not all(p.startswith("/") for p in parts[:2]):
            raise ConfigError("cluster.container_mounts", spec, "must be SRC:DST or SRC:DST:FLAGS with absolute "
                              "paths", "e.g. /lustre/data:/data:ro")
        if "," in spec:
            raise ConfigError("cluster.container_mounts", spec, "contains a comma, which separates pyxis mounts",
                              "give each mount as its own list item")
    wd = getattr(cfg.cluster, "container_workdir", None)
    if wd is not None and not wd.startswith("/"):
        raise ConfigError("cluster.container_workdir", wd, "must be an absolute path inside the image",
                          "e.g. /opt/moe-recipes")


def check_executor(cfg: RunConfig, res: Resolved) -> None:
    c = cfg.cluster
    if c.executor != ExecutorKind.slurm and c.nodes > 1 and not cfg.launch.dry_run:
        raise ConfigError("cluster.nodes", c.nodes, f"the {c.executor} executor runs on this one machine",
                          "set cluster.nodes=1, cluster=slurm for several nodes, or launch.dry_run=true to render "
                          "a multi-node layout")


# sbatch --signal=[{R|B}:]<sig_num>[@sig_time]: a signal name or number, then seconds before the time limit
SLURM_SIGNAL = re.compile(r"((R|B|RB|BR):)?(SIG)?([A-Z0-9]+)(@\d+)?")


def check_slurm_signal(cfg: RunConfig, res: Resolved) -> None:
    sig = getattr(cfg.cluster, "signal", None)
    m = SLURM_SIGNAL.fullmatch(sig) if sig is not None else None
    if sig is not None and not (m and _known_signal(m.group(4))):
        raise ConfigError("cluster.signal", sig, "is not sbatch's --signal=[{R|B}:]SIG[@SECONDS] with a signal name "
                          "or number", "e.g. cluster.signal=TERM@300 (SIGTERM to every task 5 minutes before the "
                          "time limit)")


def _known_signal(name: str) -> bool:
    """A signal sbatch knows: a number, or a name (without SIG) of this system's signals, as sbatch takes them."""
    return (name.isdigit() and 0 < int(name) < 65) or f"SIG{name}" in signal.Signals.__members__


def check_stop_and_port(cfg: RunConfig, res: Resolved) -> None:
    c = cfg.cluster
    if c.stop_grace_s < 0:
        raise ConfigError("cluster.stop_grace_s", c.stop_grace_s, "must be >= 0 seconds",
                          "set how long workers may take to save after SIGTERM, e.g. 120")
    if c.master_port is not None and not 1024 <= c.master_port <= 65535:
        raise ConfigError("cluster.master_port", c.master_port, "must be a port from 1024 to 65535",
                          "pick another, or null for a free one")


CLUSTER_RULES = (check_executor, check_env_names, check_one_line_values, check_container_image, check_follow_timeout,
                 check_slurm_directives, check_slurm_signal, check_stop_and_port,
                 check_slurm_time, check_sbatch_extra, check_srun_extra, check_segment, check_container_mounts)

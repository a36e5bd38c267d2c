"""The sbatch script of a Slurm run: directives, rendezvous, one srun task per GPU running command.sh.

sbatch reads `#SBATCH` lines itself and cannot unquote them, so a value that becomes a directive must
be plain: it is checked against DIRECTIVE_SAFE and refused otherwise (cluster_checks.py names the
field). Everything after the directives is bash, where every value from a config is shlex-quoted.

    #!/usr/bin/env bash
    #SBATCH --job-name=moe-qwen3_235b_a22b      nodes, tasks per node (one per GPU), account, partition,
    #SBATCH --nodes=32                          time, output (<run_dir>/train.log), exclusive, segment
    ...
    MASTER_ADDR=<first host of the allocation>  rank 0 runs there (srun places tasks in node order)
    exec srun ... bash <run_dir>/command.sh     each task: RANK=$SLURM_PROCID ... python -m recipes.pretrain
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from launcher.errors import ConfigError

if TYPE_CHECKING:
    from launcher.plan import LaunchPlan
    from launcher.schema import RunConfig

# characters a directive value may hold: no whitespace, quotes, `$`, backslash or control characters
DIRECTIVE_SAFE = re.compile(r"[A-Za-z0-9_.,:+=@/%-]+")
DIRECTIVE_CHARS = "letters, digits and . , : + = @ / % _ -"
# Slurm time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S, or unlimited
TIME_FORMAT = re.compile(r"\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}|UNLIMITED|INFINITE", re.IGNORECASE)
# directives the launcher writes itself; sbatch_extra may not set them a second time
MANAGED = ("job-name", "nodes", "ntasks-per-node", "account", "partition", "time", "output", "exclusive",
           "segment", "ntasks", "N", "n", "J", "A", "p", "t", "o")


def check_directive(field: str, value: str) -> None:
    """A value that becomes an #SBATCH line must be plain (sbatch cannot unquote it)."""
    if not DIRECTIVE_SAFE.fullmatch(value):
        bad = sorted({c for c in value if not DIRECTIVE_SAFE.fullmatch(c)})
        raise ConfigError(field, value, f"becomes an #SBATCH directive, which cannot be quoted; it contains "
                          f"{', '.join(repr(c) for c in bad)}", f"use only {DIRECTIVE_CHARS}")


def job_name(cfg: "RunConfig") -> str:
    return cfg.cluster.job_name or f"moe-{cfg.launch.name or cfg.model.name}"


def segment_nodes(cfg: "RunConfig", tasks_per_node: int) -> tuple[Optional[int], str]:
    """The --segment node count (None: no directive) and why, written as a comment in the script.

    Slurm's topology/block plugin places each segment of N nodes inside one block (an NVLink domain on
    GB200/GB300 NVL72). The expert all-to-all runs within an EP x TP group of GPUs, so auto picks
    ceil(ep*tp / tasks_per_node) nodes when that spans nodes and still fits one domain."""
    c, hw, p = cfg.cluster, cfg.hardware, cfg.parallel
    if c.segment is None:
        return None, "no --segment (cluster.segment=null)"
    if c.segment != "auto":
        return int(c.segment), f"--segment={c.segment}: cluster.segment"
    if cfg.cluster.device == "cpu":
        return None, "no --segment: CPU run"
    if hw.nvlink_domain <= tasks_per_node:
        return None, f"no --segment: the NVLink domain ({hw.nvlink_domain} GPUs, {hw.name}) is one node"
    group = p.ep * p.tp
    seg = -(-group // tasks_per_node)  # ceil
    if seg <= 1:
        return None, f"no --segment: an EP x TP group (ep*tp={group} GPUs) fits in one node"
    if seg * tasks_per_node > hw.nvlink_domain:
        return None, (f"no --segment: an EP x TP group (ep*tp={group} GPUs, {seg} nodes) is larger than one "
                      f"NVLink domain ({hw.nvlink_domain} GPUs)")
    if c.nodes % seg:
        return None, f"no --segment: {c.nodes} nodes are not a multiple of {seg} (nodes per EP x TP group)"
    return seg, (f"--segment={seg}: an EP x TP group is ep*tp={group} GPUs = {seg} nodes x {tasks_per_node}, "
                 f"inside one NVLink domain of {hw.nvlink_domain} GPUs ({hw.name})")


def directives(cfg: "RunConfig", plan: "LaunchPlan", run_dir: Path) -> tuple[list[str], str]:
    """The #SBATCH lines (each value checked) and the segment reason."""
    c = cfg.cluster
    tasks = plan.resolved.nproc_per_node
    items: list[tuple[str, str, Optional[str]]] = [  # (field for errors, directive, value)
        ("cluster.job_name" if c.job_name else "launch.name", "job-name", job_name(cfg)),
        ("cluster.nodes", "nodes", str(c.nodes)),
        ("cluster.gpus_per_node", "ntasks-per-node", str(tasks)),
    ]
    for name in ("account", "partition", "time"):
        if getattr(c, name) is not None:
            items.append((f"cluster.{name}", name, getattr(c, name)))
    if c.output is not None:
        items.append(("cluster.output", "output", c.output))
    else:  # sbatch expands %j etc. in file names: a literal % is written %%
        items.append(("launch.run_dir", "output", str(run_dir / "train.log").replace("%", "%%")))
    if c.exclusive:
        items.append(("cluster.exclusive", "exclusive", None))
    seg, why = segment_nodes(cfg, tasks)
    if seg is not None:
        items.append(("cluster.segment", "segment", str(seg)))
    for extra in c.sbatch_extra:
        key, eq, value = extra.lstrip("-").partition("=")
        items.append(("cluster.sbatch_extra", key, value if eq else None))
    lines = []
    for field, key, value in items:
        check_directive(field, key)
        if value is not None:
            check_directive(field, value)
        lines.append(f"#SBATCH --{key}" + ("" if value is None else f"={value}"))
    return lines, why


def container_mounts(cfg: "RunConfig", run_dir: Path, workdir: Path) -> list[str]:
    """The user's mounts, plus this directory (unless the image brings its own workdir) and the run
    directory, each at the same path, so command.sh and the logs are where the script says."""
    mounts = list(cfg.cluster.container_mounts)
    targets = [m.split(":")[1] if ":" in m else m for m in mounts]
    needed = [] if cfg.cluster.container_workdir else [workdir]
    needed.append(run_dir)
    for path in needed:
        if not any(path == Path(t) or Path(t) in path.parents for t in targets):
            mounts.append(f"{path}:{path}")
            targets.append(str(path))
    return mounts


def srun_args(cfg: "RunConfig", plan: "LaunchPlan", run_dir: Path, workdir: Path) -> list[str]:
    c = cfg.cluster
    args = ["--kill-on-bad-exit=1", f"--nodes={c.nodes}", f"--ntasks-per-node={plan.resolved.nproc_per_node}"]
    if c.container_image is not None:  # pyxis (enroot) flags
        args += [f"--container-image={c.container_image}",
                 f"--container-mounts={','.join(container_mounts(cfg, run_dir, workdir))}",
                 f"--container-workdir={c.container_workdir or workdir}",
                 "--no-container-mount-home"]
    return args + list(c.srun_extra)


def render_sbatch(cfg: "RunConfig", plan: "LaunchPlan", run_dir: Path, workdir: Path) -> str:
    """The exact file passed to sbatch (run_dir absolute). Raises ConfigError for unquotable values."""
    lines, why = directives(cfg, plan, run_dir)
    command_sh = run_dir / "command.sh"
    srun = [shlex.quote(a) for a in srun_args(cfg, plan, run_dir, workdir)] + [f"bash {shlex.quote(str(command_sh))}"]
    body = [
        "#!/usr/bin/env bash",
        "# Generated by moe-launch: sbatch submits exactly this file; every task runs command.sh next to it.",
        *lines,
        f"# {why}",
        "set -euo pipefail",
        "# rendezvous: rank 0 (SLURM_PROCID 0) is the first task on the allocation's first host",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)',
        "export MASTER_ADDR",
        f"export MASTER_PORT={int(cfg.cluster.master_port)}",
        f"export MOE_RUN_DIR={shlex.quote(str(run_dir))}  # rank 0 records its versions there",
        'echo "moe-launch: Slurm job $SLURM_JOB_ID, $SLURM_JOB_NUM_NODES node(s) x $SLURM_NTASKS_PER_NODE tasks,'
        ' rendezvous $MASTER_ADDR:$MASTER_PORT"',
        "exec srun " + " \\\n  ".join(srun),
    ]
    return "\n".join(body) + "\n"

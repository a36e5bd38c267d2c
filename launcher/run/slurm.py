"""Slurm executor: the sbatch script (directives, rendezvous, one srun task per GPU running command.sh),
then `sbatch --parsable sbatch.sh`, the job id, and optionally following the job.

sbatch reads `#SBATCH` lines itself and cannot unquote them, so a value that becomes a directive must
be plain: it is checked against the cluster rules' DIRECTIVE_SAFE (plan/rules/cluster.py, which names the
field). Everything after the directives is bash, where every value from a config is shlex-quoted.

    #!/usr/bin/env bash
    #SBATCH --job-name=moe-qwen3_235b_a22b      nodes, tasks per node (one per GPU), account, partition,
    #SBATCH --nodes=32                          time, output (<run_dir>/train.log), exclusive, segment
    ...
    MASTER_ADDR=<first host of the allocation>  rank 0 runs there (srun places tasks in node order)
    exec srun ... bash <run_dir>/command.sh     each task: RANK=$SLURM_PROCID ... python -m recipes.pretrain

Submitting writes job.json (job id, submit command) into the run directory; following writes exit.json
(state, exit code, wait). The job's state comes from `scontrol show job` (slurmctld keeps finished jobs
for MinJobAge seconds), then from `sacct` where an accounting database exists. Every wait is bounded.
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from launcher.errors import ConfigError
from launcher.plan.rules.cluster import check_directive
from launcher.records.error_file import RANK_ERRORS
from launcher.run.base import Executor
from launcher.run.container import container_mounts

if TYPE_CHECKING:
    from launcher.config.schema import RunConfig
    from launcher.plan.plan import LaunchPlan
    from launcher.plan.resolve import Resolved

SLURM_PORT = 29500  # cluster.master_port=null: every allocation is its own, so the usual port is free
# torch.distributed's env:// rendezvous and Megatron read these; srun sets one task per GPU. There is no torchrun
# to collect the ranks' structured error files, so each rank's torch elastic @record (recipes/lifecycle.py) writes
# its own into the directory sbatch.sh makes for this run of the job (launcher/records/error_file.py reads them)
SLURM_RANK_ENV = {"RANK": "${SLURM_PROCID}", "WORLD_SIZE": "${SLURM_NTASKS}", "LOCAL_RANK": "${SLURM_LOCALID}",
                  "LOCAL_WORLD_SIZE": "${SLURM_NTASKS_PER_NODE}",
                  # empty (no file) where command.sh runs under an srun of the user's own, without sbatch.sh
                  "TORCHELASTIC_ERROR_FILE": "${MOE_RANK_ERRORS:+${MOE_RANK_ERRORS}/rank_${SLURM_PROCID}.json}"}


class SlurmExecutor(Executor):
    """sbatch.sh is the entry file; srun starts one task per GPU, so each task runs the interpreter itself
    and takes its rank from Slurm's variables."""

    entry_file = "sbatch.sh"

    def uses_container(self, cfg: "RunConfig") -> bool:
        return cfg.cluster.container_image is not None  # pyxis

    def process(self, cfg: "RunConfig", res: "Resolved",
                python: Optional[str] = None) -> tuple[list[str], dict[str, str]]:
        return [*cfg.cluster.launch_prefix, self.python(cfg, python)], dict(SLURM_RANK_ENV)

    def render(self, cfg: "RunConfig", plan: "LaunchPlan", run_dir: Path) -> str:
        return render_sbatch(cfg, plan, run_dir.absolute(), Path.cwd())

    def how_to_run(self, entry: Path) -> str:
        return f"sbatch {entry}"

    def run(self, cfg: "RunConfig", entry: Path) -> int:
        return submit_and_report(cfg, entry)


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
    if c.requeue:
        items += [("cluster.requeue", "requeue", None), ("cluster.requeue", "open-mode", "append")]
    if c.signal is not None:
        items.append(("cluster.signal", "signal", c.signal))
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
        f"export MASTER_PORT={int(cfg.cluster.master_port or SLURM_PORT)}",
        f"export MOE_RUN_DIR={shlex.quote(str(run_dir))}  # rank 0 records its versions there",
        "# each rank's exception, if one raises; a requeued job (SLURM_RESTART_COUNT) writes beside the earlier ones",
        f'export MOE_RANK_ERRORS="$MOE_RUN_DIR/{RANK_ERRORS}/${{SLURM_RESTART_COUNT:-0}}"',
        'mkdir -p "$MOE_RANK_ERRORS"',
        'echo "moe-launch: Slurm job $SLURM_JOB_ID, $SLURM_JOB_NUM_NODES node(s) x $SLURM_NTASKS_PER_NODE tasks,'
        ' rendezvous $MASTER_ADDR:$MASTER_PORT"',
        "exec srun " + " \\\n  ".join(srun),
    ]
    return "\n".join(body) + "\n"


TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE", "REVOKED")
REQUEUED_BY_SLURM = ("PREEMPTED", "NODE_FAIL")  # with --requeue Slurm runs the job again after these
COMMAND_TIMEOUT_S = 60  # one sbatch/scontrol/sacct call; a controller slower than this is down


class SlurmError(RuntimeError):
    """Slurm itself failed (sbatch refused the script, the controller does not answer)."""


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{' '.join(argv)}` did not answer within {COMMAND_TIMEOUT_S} s") from None


def submit(script: Path) -> str:
    """sbatch the file as it is; the job id."""
    if shutil.which("sbatch") is None:
        raise ConfigError("cluster.executor", "slurm", "sbatch is not on PATH here",
                          "run moe-launch on a Slurm login node, or add launch.dry_run=true to only write the script")
    proc = _run(["sbatch", "--parsable", str(script)])
    if proc.returncode != 0:
        raise SlurmError(f"sbatch refused {script}: {' '.join(proc.stderr.split()) or proc.returncode}")
    job_id = proc.stdout.strip().split(";")[0]  # --parsable: "<id>" or "<id>;<cluster>"
    if not job_id.isdigit():
        raise SlurmError(f"sbatch printed no job id: {proc.stdout.strip()!r}")
    return job_id


def job_state(job_id: str) -> tuple[str, Optional[str]]:
    """(state, exit code "rc:signal") from scontrol, else sacct; ("UNKNOWN", None) when neither knows it."""
    proc = _run(["scontrol", "show", "job", "-o", job_id])
    if proc.returncode == 0 and proc.stdout.strip():
        fields = dict(tok.split("=", 1) for tok in proc.stdout.split() if "=" in tok)
        return fields.get("JobState", "UNKNOWN"), fields.get("ExitCode")
    if shutil.which("sacct"):
        acct = _run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State,ExitCode"])
        line = acct.stdout.strip().splitlines()[0] if acct.returncode == 0 and acct.stdout.strip() else ""
        if line:
            state, _, code = line.partition("|")
            return state.split()[0], code or None
    return "UNKNOWN", None


def follow(job_id: str, timeout_s: float, poll_s: float = 2.0, out=sys.stdout,
           requeue: bool = False) -> tuple[str, Optional[str]]:
    """Poll until the job reaches a terminal state or timeout_s passes; print each state change. With
    requeue a PREEMPTED job is waited for: Slurm queues it again and it resumes from its checkpoint."""
    deadline = time.monotonic() + timeout_s
    last = None
    state, code = "UNKNOWN", None
    final = tuple(s for s in TERMINAL if not (requeue and s in REQUEUED_BY_SLURM))
    while time.monotonic() < deadline:
        state, code = job_state(job_id)
        if state.split()[0] in final:
            return state, code
        if state != last:
            print(f"moe-launch: job {job_id} {state}", file=out, flush=True)
            last = state
        time.sleep(poll_s)
    return state, code


def submit_and_report(cfg: "RunConfig", script: Path) -> int:
    """Submit; without cluster.follow return 0 once queued, with it the job's own success."""
    run_dir = script.parent
    t0 = time.time()
    try:
        job_id = submit(script)
    except (SlurmError, ConfigError) as e:
        print(f"moe-launch: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    log = cfg.cluster.output or str(run_dir / "train.log")
    (run_dir / "job.json").write_text(json.dumps({"job_id": job_id, "submit": ["sbatch", "--parsable", str(script)],
                                                  "log": log, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")},
                                                 indent=2) + "\n")
    print(f"moe-launch: submitted Slurm job {job_id}; log: {log}")
    if not cfg.cluster.follow:
        print(f"moe-launch: state: scontrol show job {job_id} (or squeue -j {job_id})")
        return 0
    try:
        # sbatch_extra cannot say --requeue itself (rules/cluster.py check_sbatch_extra): the field is the one switch
        state, code = follow(job_id, cfg.cluster.follow_timeout_s, requeue=cfg.cluster.requeue)
    except SlurmError as e:
        print(f"moe-launch: error: {e}", file=sys.stderr)
        return 1
    done = state.split()[0] in TERMINAL
    rc = 0 if state == "COMPLETED" else 1
    (run_dir / "exit.json").write_text(json.dumps({"returncode": rc if done else None, "slurm_job_id": job_id,
                                                   "state": state, "exit_code": code,
                                                   "wall_s": round(time.time() - t0, 1)}) + "\n")
    if not done:
        print(f"moe-launch: stopped waiting after {cfg.cluster.follow_timeout_s} s; job {job_id} is {state} "
              f"and keeps running", file=sys.stderr)
        return 1
    from launcher.run.local import write_run_record

    write_run_record(run_dir)  # record.json/record.md from train.log, as for a local run
    print(f"moe-launch: job {job_id} {state} (exit {code}); log: {log}", file=sys.stdout if rc == 0 else sys.stderr)
    return rc

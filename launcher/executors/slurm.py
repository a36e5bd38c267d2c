"""Slurm executor: `sbatch --parsable sbatch.sh`, print the job id, optionally follow the job.

Submits the run directory's sbatch.sh exactly as written (a dry run prints that file). Writes job.json
(job id, submit command) into the run directory; when following, exit.json (state, exit code, wait).
The job's state comes from `scontrol show job` (slurmctld keeps finished jobs for MinJobAge seconds),
then from `sacct` where an accounting database exists. Every wait is bounded.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from launcher.errors import ConfigError

if TYPE_CHECKING:
    from launcher.schema import RunConfig

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE", "REVOKED")
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


def follow(job_id: str, timeout_s: float, poll_s: float = 2.0, out=sys.stdout) -> tuple[str, Optional[str]]:
    """Poll until the job reaches a terminal state or timeout_s passes; print each state change."""
    deadline = time.monotonic() + timeout_s
    last = None
    state, code = "UNKNOWN", None
    while time.monotonic() < deadline:
        state, code = job_state(job_id)
        if state.split()[0] in TERMINAL:
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
        state, code = follow(job_id, cfg.cluster.follow_timeout_s)
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
    from launcher.executors.local import write_run_record

    write_run_record(run_dir)  # record.json/record.md from train.log, as for a local run
    print(f"moe-launch: job {job_id} {state} (exit {code}); log: {log}", file=sys.stdout if rc == 0 else sys.stderr)
    return rc

"""Local executor: runs command.sh (torchrun on this machine), tees every rank's output to train.log."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from launcher.run.base import Executor

if TYPE_CHECKING:
    from launcher.config.schema import RunConfig
    from launcher.plan.plan import LaunchPlan
    from launcher.plan.probe import MachineProbe
    from launcher.run.stop import JobStopper


class LocalExecutor(Executor):
    """torchrun on this machine; command.sh is the entry file, run in the foreground with its output in
    train.log."""

    def check_machine(self, cfg: "RunConfig", plan: "LaunchPlan", probe: "MachineProbe") -> None:
        """A GPU run's ranks start here: this machine (the probe the plan was made with) must show a GPU per rank,
        else torchrun would start ranks that die in Megatron's validate_args ('Found no NVIDIA driver') with a
        traceback in train.log."""
        res = plan.resolved
        if res.device != "cuda":
            return
        from launcher.errors import ConfigError

        gpus = probe.gpus
        if gpus < res.nproc_per_node:
            field, value = (("cluster.gpus_per_node", cfg.cluster.gpus_per_node) if cfg.cluster.gpus_per_node
                            else ("cluster.device", cfg.cluster.device))
            raise ConfigError(field, value, f"a local run of {res.nproc_per_node} GPU rank(s) on a machine that "
                              f"shows {gpus} GPU(s) (nvidia-smi or /dev/nvidiaN, narrowed by CUDA_VISIBLE_DEVICES)",
                              "run it where the GPUs are (cluster=slurm submits to them), "
                              + (f"ask for at most {gpus} GPU(s), " if gpus else "")
                              + "or cluster.device=cpu; launch.dry_run=true writes the run without starting it")

    def run(self, cfg: "RunConfig", entry: Path) -> int:
        from launcher.plan.secrets import secret_env

        verbose = True if cfg.launch.verbose else None  # None: MOE_VERBOSE decides (launcher/run/progress.py)
        rc = run_local(entry, verbose, grace_s=cfg.cluster.stop_grace_s,
                       secrets=secret_env(cfg.cluster.env, cfg.cluster.secret_names))
        if rc:
            from launcher.run.progress import shows_raw_lines

            show_log_tail(entry.parent / "train.log", quiet=not shows_raw_lines(verbose))
        status = "finished" if rc == 0 else f"FAILED (exit {rc})"
        print(f"moe-launch: {status}; log: {entry.parent / 'train.log'}", file=sys.stderr if rc else sys.stdout)
        return rc


def show_log_tail(log: Path, quiet: bool, lines: int = 20) -> None:
    """A failed run's last log lines on the console when the raw output was not shown live."""
    if not quiet or not log.exists():
        return
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    print(f"moe-launch: the last {len(tail)} lines of {log}:", *("  " + x for x in tail), sep="\n", file=sys.stderr)


def run_local(script: Path, verbose: Optional[bool] = None, grace_s: float = 120,
              secrets: Optional[dict[str, str]] = None) -> int:
    """Run the script, stream its output to the terminal and to train.log; return its exit code.
    A live status line follows the iterations (launcher/run/progress.py). SIGTERM, SIGINT or SIGHUP to
    moe-launch are forwarded to the workers with a bounded wait (launcher/run/stop.py). When the run ends,
    success, failure or signal, exit.json and the run record (record.json, record.md) are written, old
    checkpoints are pruned, and no process of the job is left."""
    import os

    from launcher.run.progress import progress_for_run
    from launcher.run.stop import JobStopper, install, restore

    run_dir = script.parent
    log = run_dir / "train.log"
    t0 = time.time()
    progress = progress_for_run(run_dir, verbose)  # the console: status line (+ raw lines when verbose)
    # credentials come from the launching shell when it has them, else from cluster.env (never written);
    # rank 0 writes versions.json in MOE_RUN_DIR (recipes/runinfo.py): set by us, so a stale export cannot move it
    env = {**(secrets or {}), **os.environ, "MOE_RUN_DIR": str(run_dir.resolve()),
           # torchrun writes the first failed rank's exception there (launcher/records/error_file.py)
           "TORCHELASTIC_ERROR_FILE": str(run_dir.resolve() / "torchrun_error.json")}
    rc, stopper = 1, None
    with open(log, "w", buffering=1) as fh:  # line-buffered: train.log never lags the screen
        proc = subprocess.Popen(["bash", str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, start_new_session=True, env=env)
        stopper = JobStopper(proc.pid, grace_s)
        previous = install(stopper)
        threading.Thread(target=_watch, args=(proc, stopper), daemon=True).start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                fh.write(line)  # the full log first, untouched by the status line
                progress.line(line)
            rc = proc.wait()
        finally:
            restore(previous)
            stopper.finish()
            progress.close()
    stop = {"signal": stopper.signal, "killed_after_grace": stopper.killed} if stopper.signal else {}
    exit_info = {"returncode": rc, "wall_s": round(time.time() - t0, 1), **stop}
    (run_dir / "exit.json").write_text(json.dumps(exit_info) + "\n")
    write_run_record(run_dir)
    prune_checkpoints(run_dir)
    return rc


def _watch(proc: subprocess.Popen, stopper: "JobStopper", every_s: float = 0.5, linger_s: float = 5.0) -> None:
    """Learn the job's processes while torchrun lives (its workers are not in its process group); once it
    has exited, give stragglers linger_s to flush their output, then kill them: a worker that outlived
    torchrun would hold train.log's pipe open and keep the launcher waiting."""
    while proc.poll() is None:
        stopper.scan()
        time.sleep(every_s)
    time.sleep(linger_s)
    stopper.kill()


def prune_checkpoints(run_dir: Path) -> None:
    """Keep the newest train.checkpoint.keep_last complete checkpoints (plan.json's "checkpoint")."""
    from launcher.records.checkpoint_dir import prune

    try:
        ck = json.loads((run_dir / "plan.json").read_text()).get("checkpoint") or {}
    except (OSError, ValueError):
        return
    if ck.get("save") and ck.get("keep_last"):
        gone = prune(Path(ck["save"]), int(ck["keep_last"]))
        if gone:
            print(f"moe-launch: removed {len(gone)} old checkpoint(s), kept the newest {ck['keep_last']} "
                  "(train.checkpoint.keep_last)")


def write_run_record(run_dir: Path) -> None:
    """record.json + record.md for a finished run; a broken record never changes the run's exit code."""
    try:
        from launcher.records.record import headline, write_record

        r = write_record(run_dir)
    except Exception as e:  # noqa: BLE001 - report and go on: the run's result stands without its record
        print(f"moe-launch: warning: no run record ({type(e).__name__}: {e}); rebuild it with "
              f"python -m launcher.records.record {run_dir}", file=sys.stderr)
        return
    print(f"moe-launch: record {run_dir / 'record.json'}: {headline(r)}",
          file=sys.stderr if r["status"] == "failed" else sys.stdout)
    from launcher.records.saves import advice

    line = advice(r.get("checkpoints"), ((r.get("steady_state") or {}).get("step_time_ms") or {}).get("median"))
    if line:
        print(f"moe-launch: {line}")

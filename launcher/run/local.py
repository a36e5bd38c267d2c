"""Local executor: runs command.sh (torchrun on this machine), tees every rank's output to train.log."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from launcher.run.base import Executor

if TYPE_CHECKING:
    from launcher.config.schema import RunConfig


class LocalExecutor(Executor):
    """torchrun on this machine; command.sh is the entry file, run in the foreground with its output in
    train.log."""

    def run(self, cfg: "RunConfig", entry: Path) -> int:
        verbose = True if cfg.launch.verbose else None  # None: MOE_VERBOSE decides (launcher/run/progress.py)
        rc = run_local(entry, verbose)
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


def run_local(script: Path, verbose: Optional[bool] = None) -> int:
    """Run the script, stream its output to the terminal and to train.log; return its exit code.
    A live status line follows the iterations (launcher/run/progress.py); when the run ends, success or
    failure, the run record (record.json, record.md) is written from the run directory."""
    import os

    from launcher.run.progress import progress_for_run

    run_dir = script.parent
    log = run_dir / "train.log"
    t0 = time.time()
    progress = progress_for_run(run_dir, verbose)  # the console: status line (+ raw lines when verbose)
    # rank 0 writes versions.json here (recipes/runinfo.py); set by us, so a stale export cannot redirect it
    env = {**os.environ, "MOE_RUN_DIR": str(run_dir.resolve())}
    with open(log, "w") as fh:
        proc = subprocess.Popen(["bash", str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, start_new_session=True, env=env)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                fh.write(line)  # the full log first, untouched by the status line
                progress.line(line)
            rc = proc.wait()
        except KeyboardInterrupt:
            # stop the whole torchrun process group, not just bash
            os.killpg(proc.pid, signal.SIGTERM)
            rc = proc.wait()
        finally:
            progress.close()
    (run_dir / "exit.json").write_text(json.dumps({"returncode": rc, "wall_s": round(time.time() - t0, 1)}) + "\n")
    write_run_record(run_dir)
    return rc


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

"""Local executor: runs command.sh (torchrun on this machine), tees every rank's output to train.log."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path


def run_local(script: Path) -> int:
    """Run the script, stream its output to the terminal and to train.log; return its exit code."""
    run_dir = script.parent
    log = run_dir / "train.log"
    t0 = time.time()
    with open(log, "w") as fh:
        proc = subprocess.Popen(["bash", str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, start_new_session=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                fh.write(line)
            rc = proc.wait()
        except KeyboardInterrupt:
            # stop the whole torchrun process group, not just bash
            import os
            os.killpg(proc.pid, signal.SIGTERM)
            rc = proc.wait()
    (run_dir / "exit.json").write_text(json.dumps({"returncode": rc, "wall_s": round(time.time() - t0, 1)}) + "\n")
    return rc

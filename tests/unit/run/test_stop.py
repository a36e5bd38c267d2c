"""SIGTERM/SIGINT to moe-launch reach the workers, the wait is bounded, exit.json is always written and no
worker outlives the launcher (launcher/run/stop.py, run/local.py). A fake torchrun starts its worker in a
session of its own, as torch's elastic agent does; the worker traps SIGTERM as Megatron's
--exit-signal-handler does (save, exit 4), or ignores it, or is left behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

WORKER = textwrap.dedent("""
    import os, signal, sys, time
    mode = sys.argv[1]
    open(sys.argv[2], "w").write(str(os.getpid()))
    if mode == "trap":
        # a rank's own child (a data-loader worker) must not get the SIGTERM: it would die and fail the rank
        import subprocess
        subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, lambda *a: "
                          "print('loader: got SIGTERM', flush=True)); time.sleep(120)"])
        def stop(signum, frame):
            print("worker: saved after SIGTERM", flush=True)
            sys.exit(4)
        signal.signal(signal.SIGTERM, stop)
    elif mode == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("worker: ready", flush=True)
    time.sleep(120)
""")
TORCHRUN = textwrap.dedent("""
    import subprocess, sys, time
    # like torch/distributed/elastic: every worker in a session of its own
    p = subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2], sys.argv[3]], start_new_session=True)
    if sys.argv[2] == "orphan":
        time.sleep(2)  # the worker trains a while under torchrun (the launcher learns it), then torchrun ends
        sys.exit(0)  # torchrun gone, its worker still running
    sys.exit(0 if p.wait() == 0 else 1)
""")


def _run_dir(tmp_path: Path, mode: str) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "worker.py").write_text(WORKER)
    (run_dir / "torchrun.py").write_text(TORCHRUN)
    # "torch.distributed.run" in the command line marks the fake as torchrun (stop.LAUNCHER_MODULES)
    (run_dir / "command.sh").write_text(f"exec {sys.executable} {run_dir / 'torchrun.py'} {run_dir / 'worker.py'} "
                                        f"{mode} {run_dir / 'worker.pid'} torch.distributed.run\n")
    return run_dir


def _launch(run_dir: Path, grace_s: float) -> subprocess.Popen:
    code = (f"import sys; from pathlib import Path; from launcher.run.local import run_local; "
            f"sys.exit(run_local(Path({str(run_dir / 'command.sh')!r}), grace_s={grace_s}))")
    return subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[3],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in {path}")


def _worker_gone(run_dir: Path) -> bool:
    pid = int((run_dir / "worker.pid").read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)  # do not leave it behind the test either
    return False


@pytest.mark.slow  # real processes and signals (seconds each): CI runs it, the fast set leaves it out
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_reaches_the_worker_which_saves_and_the_run_is_recorded(tmp_path, sig):
    run_dir = _run_dir(tmp_path, "trap")
    proc = _launch(run_dir, grace_s=30)
    _wait_for(run_dir / "train.log", "worker: ready")  # train.log is written as lines arrive
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    log = (run_dir / "train.log").read_text()
    assert "worker: saved after SIGTERM" in log and "loader: got SIGTERM" not in log
    info = json.loads((run_dir / "exit.json").read_text())
    assert info["signal"] == sig.name and info["killed_after_grace"] is False and info["returncode"] == 1
    assert _worker_gone(run_dir)


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    run_dir = _run_dir(tmp_path, "ignore")
    proc = _launch(run_dir, grace_s=1)
    _wait_for(run_dir / "train.log", "worker: ready")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 30, out
    info = json.loads((run_dir / "exit.json").read_text())
    assert info["signal"] == "SIGTERM" and info["killed_after_grace"] is True
    assert _worker_gone(run_dir)


@pytest.mark.slow  # real processes and signals (seconds each): CI runs it, the fast set leaves it out
def test_no_worker_outlives_the_launcher(tmp_path):
    run_dir = _run_dir(tmp_path, "orphan")  # torchrun exits 0 and leaves its worker running
    proc = _launch(run_dir, grace_s=1)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert _worker_gone(run_dir)
    assert "signal" not in json.loads((run_dir / "exit.json").read_text())

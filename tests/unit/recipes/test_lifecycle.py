"""A rank dies with the torchrun that started it (recipes/lifecycle.py), even in a session of its own."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[3]
CHILD = ("import time; from recipes.lifecycle import die_with_parent; assert die_with_parent(); "
         "print('armed', flush=True); time.sleep(120)")
PARENT = (f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', {CHILD!r}], start_new_session=True, "
          "stdout=sys.stdout); print(p.pid, flush=True); p.wait()")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_rank_is_killed_when_its_parent_is():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=REPO, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert parent.stdout.readline().strip() == "armed"
    os.kill(parent.pid, signal.SIGKILL)  # as a scheduler kills torchrun
    parent.wait(timeout=30)
    deadline = time.monotonic() + 10
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        if time.monotonic() > deadline:
            os.kill(child, signal.SIGKILL)
            raise AssertionError("the child outlived its parent")
        time.sleep(0.1)


# A rank whose training raised while Megatron's persistent checkpoint writer had died: the writer here is Megatron's
# own (AsyncCallsQueue(persistent=True), spawned), its save raises as a full disk does; on CPU it even dies before
# that (async_loop's torch.cuda.set_device), which leaves the same unanswered queue.
FAILED_WRITER = """
import os, sys
import torch.distributed as dist
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue, AsyncRequest
from recipes import lifecycle

def disk_full(*args):
    raise OSError(28, "No space left on device")

if __name__ == "__main__":
    dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=0, world_size=1)
    queue = AsyncCallsQueue(persistent=True)
    queue.schedule_async_request(AsyncRequest(disk_full, (None, None), []))
    AsyncCallsQueue._persistent_caller.process.join(timeout=60)  # the writer has died
    print("writer dead:", not AsyncCallsQueue._persistent_caller.process.is_alive(), flush=True)
    if sys.argv[1] == "abort":
        print("aborted:", lifecycle.abort_async_saves(), flush=True)
    raise RuntimeError("training failed")
"""


def _failed_writer_run(tmp_path, mode: str, grace: float):
    """(exit code or None while still running `grace` s after the traceback was printed, the output)."""
    script, log = tmp_path / "rank.py", tmp_path / "rank.log"
    script.write_text(FAILED_WRITER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(script), mode, str(tmp_path / "pg")], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180  # imports and the spawned writer on a slow machine
    while proc.poll() is None and "training failed" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        rc = proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = None
    return rc, log.read_text()


@pytest.mark.slow
def test_a_rank_whose_checkpoint_writer_failed_exits_after_abort_async_saves(tmp_path):
    rc, out = _failed_writer_run(tmp_path, "abort", grace=30)
    assert "writer dead: True" in out and "aborted: True" in out, out
    assert rc == 1 and "RuntimeError: training failed" in out, out  # the traceback, and the process ended


@pytest.mark.slow
def test_without_it_the_rank_hangs_at_exit(tmp_path):
    """The control: the same rank without abort_async_saves never exits (Megatron joins the dead writer's queue)."""
    rc, out = _failed_writer_run(tmp_path, "plain", grace=10)
    assert "writer dead: True" in out and "RuntimeError: training failed" in out, out
    assert rc is None, f"exited (rc {rc}): Megatron no longer hangs here, abort_async_saves may be unneeded\n{out}"

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

"""A worker never outlives the torchrun that started it.

torchrun puts every worker in a session of its own, so a SIGKILL of torchrun (or of its process group, or
of moe-launch) leaves the workers running: one finished training while the record said FAILED (issue 13).
Linux's PR_SET_PDEATHSIG makes the kernel send this process SIGKILL when its parent (torchrun) dies; Python
has no binding for it, so it goes through libc's prctl.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> bool:
    """Ask the kernel to kill this process when its parent dies; False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the parent died before the request: nothing would ever signal us
        os.kill(os.getpid(), signal.SIGKILL)
    return True


def release_process_group() -> None:
    """Destroy the default process group once training has returned, as torch asks of a program before it exits.
    Why: left to interpreter shutdown, the backend's threads are torn down by static destructors; once in CI a CPU
    rank that had printed "done, iteration 4/4" aborted there ("terminate called without an active exception",
    SIGABRT), and the finished run was recorded as rank_died (2026-12-01, moe-bench's CPU test). Every collective
    has completed by now (Megatron's last barrier, and async saves finalized), so this waits on nothing."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def recorded(fn):
    """fn wrapped by torch elastic's @record: an exception that ends this rank is written as JSON (type, message,
    the rank's own traceback, time) to the TORCHELASTIC_ERROR_FILE torchrun gives each worker; torchrun then
    copies the first failed rank's file, with its exit code, to its own TORCHELASTIC_ERROR_FILE, which the
    launcher points into the run directory (torchrun_error.json, read by launcher/records/error_file.py)."""
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(fn)


def abort_async_saves() -> bool:
    """Let go of Megatron's persistent checkpoint writer when it has died; True when it had.

    Why: a rank that ends by an exception leaves the writer to Python's shutdown, where
    PersistentAsyncCaller.__del__ puts 'DONE' on its queue and joins the queue. A writer whose save raised has
    died without acknowledging its item (async_loop has no handler), so the join never returns: the rank hangs
    after printing its traceback, holding its GPU, and the job does not end (measured on the one-H200 host,
    2026-12-01: an async save that met a full disk, perf_results/issue13/README.md). Its save is incomplete; a
    resume takes the previous complete one (launcher/run/resume.py). A writer that is alive is left alone:
    Megatron's shutdown then waits for it, so a save being written when Ctrl-C arrives still completes."""
    try:
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue
    except ImportError:
        return False
    caller = AsyncCallsQueue._persistent_caller  # the one writer process per rank (class-level in Megatron)
    if caller is None or caller.process is None or caller.process.is_alive():
        return False
    caller.close(abort=True)  # nothing left to kill; the later __del__ finds nothing to join
    AsyncCallsQueue._persistent_caller = None
    return True

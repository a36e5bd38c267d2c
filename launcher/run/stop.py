"""Stopping a local job: SIGTERM/SIGINT to moe-launch reach every rank, a bounded wait, then SIGKILL.

torchrun starts each worker in a session of its own (torch/distributed/elastic/multiprocessing/
subprocess_handler: start_new_session=True), so no process-group signal reaches them; and torchrun itself
answers SIGTERM by killing its workers after 30 s, too soon for a checkpoint save. So the job's processes
are found with psutil (the tree under command.sh, remembered as it grows, so a worker that outlives
torchrun is still known) and torchrun's children, the ranks, are signalled themselves: Megatron's
--exit-signal-handler finishes the iteration, saves and exits (code 4; torchrun then reports the job
failed). After cluster.stop_grace_s, or on a second signal, everything still alive is killed. When the job
ends for any reason, nothing it started is left.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Optional

import psutil

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
LAUNCHER_MODULES = ("torch.distributed.run", "torchrun")


class JobStopper:
    """Tracks a job's process tree; forwards a stop request to the workers and enforces the grace period."""

    def __init__(self, root_pid: int, grace_s: float, out=sys.stderr):
        self.root_pid, self.grace_s, self.out = root_pid, grace_s, out
        self.known: dict[int, psutil.Process] = {}
        self.signal: Optional[str] = None
        """Name of the first stop signal moe-launch received (exit.json's "signal")."""
        self.killed = False
        """True when the grace period ran out (or a second signal came) and the job was killed."""
        self._timer: Optional[threading.Timer] = None
        self._last_scan = 0.0
        self.scan()

    def scan(self, every_s: float = 0.0) -> None:
        """Remember the processes under the job (at most once per every_s seconds)."""
        now = time.monotonic()
        if now - self._last_scan < every_s:
            return
        self._last_scan = now
        try:
            root = psutil.Process(self.root_pid)
            for p in [root, *root.children(recursive=True)]:
                self.known.setdefault(p.pid, p)
        except psutil.Error:
            pass  # the root is gone: keep what was known

    def alive(self) -> list[psutil.Process]:
        return [p for p in self.known.values() if _running(p)]

    def workers(self) -> list[psutil.Process]:
        """The ranks: torchrun's direct children. Not torchrun (it kills its workers 30 s after its own
        SIGTERM) and not the ranks' own children (data-loader workers die on SIGTERM, and the rank then fails
        instead of saving). Without a torchrun (a container's client), the root, which passes it on."""
        ranks: list[psutil.Process] = []
        for p in self.alive():
            try:
                if any(m in " ".join(p.cmdline()) for m in LAUNCHER_MODULES):
                    ranks += p.children()
            except psutil.Error:
                continue
        root = self.known.get(self.root_pid)
        if ranks or root is None or not _running(root):
            return ranks
        return [root]

    def request(self, signum: int, frame=None) -> None:
        """A signal handler: the first stop signal is forwarded (as SIGTERM, the signal Megatron saves on), a
        second one kills the job."""
        name = signal.Signals(signum).name
        if self.signal is not None:
            print(f"moe-launch: {name} again: killing the job", file=self.out, flush=True)
            self.kill(forced=True)
            return
        self.signal = name
        self.scan()
        workers = self.workers()
        print(f"moe-launch: {name}: asking {len(workers)} worker(s) to save and stop; killing them in "
              f"{self.grace_s:.0f} s (cluster.stop_grace_s) or on a second signal", file=self.out, flush=True)
        for p in workers:
            _send(p, signal.SIGTERM)
        self._timer = threading.Timer(self.grace_s, self._grace_over)
        self._timer.daemon = True
        self._timer.start()

    def _grace_over(self) -> None:
        if self.alive():
            print(f"moe-launch: the job did not stop within {self.grace_s:.0f} s: killing it", file=self.out,
                  flush=True)
            self.kill(forced=True)

    def kill(self, forced: bool = False) -> None:
        """SIGKILL to every process of the job that is still alive; `forced`: the workers did not stop in time
        (recorded as exit.json's killed_after_grace), not just leftovers after the job ended."""
        self.scan()
        victims = self.alive()
        if forced and any(p in victims for p in self.workers()):
            self.killed = True
        for p in victims:
            _send(p, signal.SIGKILL)

    def finish(self) -> None:
        """When the job's output has ended: nothing it started may outlive the launcher."""
        if self._timer is not None:
            self._timer.cancel()
        self.kill()


def _running(p: psutil.Process) -> bool:
    try:  # is_running() also checks the creation time, so a reused pid is not mistaken for ours
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _send(p: psutil.Process, sig: int) -> None:
    try:
        p.send_signal(sig)
    except psutil.Error:
        pass  # already gone


def install(stopper: JobStopper) -> dict:
    """Route the stop signals to the stopper; returns the previous handlers for restore()."""
    return {s: signal.signal(s, stopper.request) for s in STOP_SIGNALS}


def restore(previous: dict) -> None:
    for s, handler in previous.items():
        signal.signal(s, handler)

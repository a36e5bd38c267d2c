"""Runs that were stopped rather than broken, and ranks that died: the failure classes the log's error
lines alone cannot tell (launcher/records/failures.py classifies those).

  interrupted  moe-launch got SIGINT or SIGHUP (Ctrl-C, a closed terminal) and stopped the workers
  preempted    SIGTERM: moe-launch got it (a scheduler, `kill`), or Megatron's --exit-signal-handler logged
               "exiting program after receiving SIGTERM" (it saved and exited with code 4)
  rank_died    a rank ended by a signal or a nonzero exit with no error in the log (torchrun's root-cause
               block, its structured summary of the first failed worker, names the rank; under Slurm, srun's
               first "task N: Killed" / "task N: Exited with exit code K" line)
  killed       torchrun itself was killed from outside (exit.json's return code is minus the signal)

exit.json's "signal" is the signal moe-launch received (launcher/run/stop.py). Text only.
"""
from __future__ import annotations

import re
import signal
from typing import Optional

from launcher.records.failures import FailureInfo, first_srun_task, root_cause

STOP_CLASSES = ("interrupted", "preempted", "rank_died", "killed")
MEGATRON_SIGTERM = re.compile(r"exiting program after receiving SIGTERM")
_ROOT_SIGNAL = re.compile(r"Signal (\d+) \((SIG\w+)\)")
_SRUN_EXIT = re.compile(r"Exited with exit code (\d+)")
_SRUN_SIGNALS = {"Killed": "SIGKILL", "Terminated": "SIGTERM", "Aborted": "SIGABRT", "Segmentation fault": "SIGSEGV",
                 "Bus error": "SIGBUS"}


def classify_stop(text: str, exit_info: Optional[dict], base: Optional[FailureInfo]) -> Optional[FailureInfo]:
    """The stop class that explains a failed run better than `base` (classify's answer), or `base`."""
    exit_info = exit_info or {}
    if exit_info.get("returncode") == 0:
        return base
    sig = exit_info.get("signal")
    lines = text.splitlines()
    saved = next((ln.strip() for ln in lines if MEGATRON_SIGTERM.search(ln)), None)
    killed = " (killed after the grace period)" if exit_info.get("killed_after_grace") else ""
    if sig in ("SIGINT", "SIGHUP"):
        return _stopped("interrupted", f"stopped by {sig} to moe-launch{killed}", sig, saved, base)
    if sig == "SIGTERM" or saved:
        by = "SIGTERM to moe-launch" if sig else "SIGTERM to the workers"
        what = "; Megatron saved a checkpoint and exited" if saved else ""
        return _stopped("preempted", f"stopped by {by}{what}{killed}", sig, saved, base)
    if base is None or base.cls == "unknown":
        return (_rank_died(lines, base) or _srun_task_died(lines, base) or _killed(exit_info.get("returncode"), base)
                or base)
    return base


def _killed(returncode: Optional[int], base: Optional[FailureInfo]) -> Optional[FailureInfo]:
    """torchrun itself ended by a signal from outside (negative return code: no root-cause block is left)."""
    if returncode is None or returncode >= 0:
        return None
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return FailureInfo(cls="killed", kind="signal", iteration=base.iteration if base else None,
                       summary=f"the job was killed by {name} from outside moe-launch (a scheduler, the host's "
                               "OOM killer or a user); its ranks died with it",
                       evidence=[f"exit.json returncode {returncode}"])


def _stopped(cls: str, summary: str, sig: Optional[str], saved: Optional[str],
             base: Optional[FailureInfo]) -> FailureInfo:
    evidence = [f"exit.json signal {sig}"] if sig else []
    evidence += [saved] if saved else []
    also = [base.cls] if base is not None and base.cls != "unknown" else []
    return FailureInfo(cls=cls, kind="signal", summary=summary, iteration=base.iteration if base else None,
                       evidence=evidence, also=also)


def _rank_died(lines: list[str], base: Optional[FailureInfo]) -> Optional[FailureInfo]:
    root = root_cause(lines)
    if not root or "rank" not in root:
        return None
    m = _ROOT_SIGNAL.search(root.get("traceback", ""))
    how = f"killed by {m.group(2)}" if m else f"exited with {root.get('exitcode')}"
    return FailureInfo(cls="rank_died", kind="signal" if m else "exit", rank=root["rank"],
                       iteration=base.iteration if base else None,
                       summary=f"rank {root['rank']} {how} (torchrun's first observed failure); the job ended",
                       evidence=[f"torchrun root cause: {root}"], also=[])


def _srun_task_died(lines: list[str], base: Optional[FailureInfo]) -> Optional[FailureInfo]:
    """A Slurm job's first failed task, as srun reports it (the task number is the rank: launcher/run/slurm.py)."""
    found = first_srun_task(lines)
    if found is None:
        return None
    host, rank, what = found.group(1), int(found.group(2)), found.group(3)
    code = _SRUN_EXIT.match(what)
    sig = next((name for text, name in _SRUN_SIGNALS.items() if what.startswith(text)), what)
    how = f"exited with {code.group(1)}" if code else f"killed by {sig}"
    return FailureInfo(cls="rank_died", kind="exit" if code else "signal", rank=rank,
                       iteration=base.iteration if base else None,
                       summary=f"rank {rank} {how} on {host} (srun's first failed task); the job ended",
                       evidence=[found.group(0).strip()], also=[])

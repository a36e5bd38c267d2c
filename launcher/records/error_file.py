"""torchrun's structured error file: what the first failed rank raised, read instead of scraping the log.

The launcher sets TORCHELASTIC_ERROR_FILE=<run_dir>/torchrun_error.json for torchrun (launcher/run/local.py);
every rank runs under torch elastic's @record (recipes/lifecycle.py recorded), which writes an exception that
ends the rank as {"message": {"message": "<Type>: <text>", "extraInfo": {"py_callstack": ..., "timestamp": ...}}};
torchrun copies the first failed rank's file there, with "errorCode" set to that rank's exit code. A rank
killed by a signal writes nothing (the log's "Root Cause" block still names it: launcher/records/stops.py).

Under Slurm there is no torchrun: each rank's @record writes its own file, rank_errors/<SLURM_RESTART_COUNT>/
rank_<N>.json (launcher/run/slurm.py), and the first of them (torch's timestamp, then the file's time) stands for
the job as torchrun's copy would, in the newest run of the job (a requeue writes beside the earlier one).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from launcher.records.failures import FailureInfo

NAME = "torchrun_error.json"
RANK_ERRORS = "rank_errors"
TRACEBACK_LINES = 12  # the end of the rank's own traceback: the frames nearest the error


def read_error_file(run_dir: Path) -> Optional[dict]:
    """{"message", "exitcode", "timestamp", "traceback", "source"} of the run's error file (torchrun's, else the
    first rank's under Slurm); None when there is none or it is not torch's format (a half-written file of a
    killed torchrun)."""
    err = _parse(Path(run_dir) / NAME)
    if err is not None:
        err["source"] = "torchrun error file"
        return err
    return _first_rank_error(Path(run_dir) / RANK_ERRORS)


def _first_rank_error(root: Path) -> Optional[dict]:
    runs = [p for p in root.iterdir() if p.name.isdigit()] if root.is_dir() else []
    if not runs:
        return None
    newest = max(runs, key=lambda p: int(p.name))
    found = []
    for path in newest.glob("rank_*.json"):
        err, rank = _parse(path), path.stem.removeprefix("rank_")
        if err is not None and rank.isdigit():
            stamp = int(err["timestamp"]) if str(err["timestamp"]).isdigit() else 0
            found.append((stamp, path.stat().st_mtime_ns, int(rank), err))
    if not found:
        return None
    _, _, rank, err = min(found, key=lambda f: f[:3])
    err["rank"] = rank
    err["source"] = f"rank {rank}'s error file (first of {len(found)} that raised)"
    return err


def _parse(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    msg = data.get("message") if isinstance(data, dict) else None
    if not isinstance(msg, dict) or not isinstance(msg.get("message"), str):
        return None
    extra = msg.get("extraInfo") if isinstance(msg.get("extraInfo"), dict) else {}
    stack = str(extra.get("py_callstack") or "").rstrip().splitlines()
    code = msg.get("errorCode")
    return {"message": msg["message"].strip(), "exitcode": int(code) if isinstance(code, int) else None,
            "timestamp": extra.get("timestamp"), "traceback": stack[-TRACEBACK_LINES:]}


def with_error_file(failure, run_dir: Path):
    """The failure (a FailureInfo, or None for a run that succeeded) with the error file's exception added: always
    as evidence; as the summary where the log gave no known class or only "rank N exited with 1"."""
    err = read_error_file(run_dir) if failure is not None else None
    if err is None:
        return failure
    failure.evidence.insert(0, _evidence_line(err))
    if err["traceback"]:
        failure.evidence.insert(1, "traceback end: " + " | ".join(line.strip() for line in err["traceback"][-3:]))
    if failure.cls == "unknown":
        failure.summary = f"{_who(err)} raised {err['message'][:300]}" + (
            f"; {failure.summary}" if failure.summary else "")
    elif failure.cls == "rank_died" and failure.kind == "exit":  # "rank N exited with 1": say what it raised
        first = "the first to raise" if err.get("rank") is not None else "torchrun's first observed failure"
        failure.summary = (f"rank {err.get('rank', failure.rank)} raised {err['message'][:300]} ({first}); "
                           "the job ended")
    if failure.rank is None and err.get("rank") is not None:  # the log named no rank: the first to raise
        failure.rank = err["rank"]
    return failure


def without_launcher(failure, run_dir: Path, exit_info: Optional[dict]):
    """A run whose moe-launch was killed (SIGKILL, a job or call limit: no exit.json) while a rank raised: the error
    file is then the only account of how the job ended, so the run is failed with it, not "incomplete"."""
    err = read_error_file(run_dir) if exit_info is None and failure is None else None
    if err is None:
        return failure
    return FailureInfo(cls="unknown", summary=f"moe-launch wrote no exit.json (it was killed before the job ended); "
                                              f"{_who(err)} raised {err['message'][:300]}",
                       evidence=[_evidence_line(err)])


def _who(err: dict) -> str:
    return f"rank {err['rank']} (the first to raise)" if err.get("rank") is not None else "first failed rank"


def _evidence_line(err: dict) -> str:
    code = f" (exit {err['exitcode']})" if err["exitcode"] is not None else ""
    return f"{err['source']}: {err['message'][:400]}{code}"

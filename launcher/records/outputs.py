"""Where the writing tools may write: never over the repository's committed, generated files unless asked.

perf_results/ (records, tables, plots, comparisons, bench summaries) and the project README's generated
blocks are published results. A user who points results/compare/bench/presets at their own runs must not
rewrite them by accident (issue 15: `python -m launcher.results RUN` rewrote perf_results/README.md and two
plots without a word). So an EXISTING file under the repository's perf_results/, or its README.md, is
rewritten only with the explicit switch PERF_RESULTS_SWITCH; new files anywhere are fine.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

REPO = Path(__file__).resolve().parents[2]
PERF_RESULTS = REPO / "perf_results"
PERF_RESULTS_SWITCH = "--perf-results"
SWITCH_HELP = ("allow rewriting the repository's committed generated files (perf_results/, README.md); "
               "perf_results/regenerate.sh passes it")


def is_committed_output(path: Path) -> bool:
    """An existing file (or a directory holding files) under the repository's perf_results/, or its README.md."""
    p = path.resolve()
    if p == REPO / "README.md":
        return p.exists()
    if p != PERF_RESULTS and PERF_RESULTS not in p.parents:
        return False
    return p.is_file() or (p.is_dir() and any(x.is_file() for x in p.rglob("*")))


def refuse_committed(tool: str, paths: Iterable[Optional[Path]], allowed: bool) -> Optional[str]:
    """One error line naming the first protected path, or None when every path may be written."""
    if allowed:
        return None
    for path in paths:
        if path is not None and is_committed_output(path):
            return (f"{tool}: error: {path} is a committed result of this repository; refusing to rewrite it. "
                    f"Fix: write elsewhere (see --help), or pass {PERF_RESULTS_SWITCH} to regenerate the "
                    "published files on purpose")
    return None

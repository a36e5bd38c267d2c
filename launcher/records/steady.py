"""Iteration windows, steady state and throughput: the one place that turns iteration rows into tokens/s
and medians (records, results, moe-bench, moe-tune and the live progress line read them here)."""
from __future__ import annotations


def iteration_window(text: str) -> tuple[int, int]:
    """'START:END', 1-based training iterations, inclusive -> (START, END); ValueError unless two integers
    with 1 <= START <= END. The one parser of profile windows (train.kernel_profile, moe-bench --profile,
    MOE_PROFILE_STEPS on the compute node); each caller words its own error."""
    parts = str(text).strip().split(":")
    if len(parts) != 2:
        raise ValueError(text)
    start, end = int(parts[0]), int(parts[1])
    if not 1 <= start <= end:
        raise ValueError(text)
    return start, end

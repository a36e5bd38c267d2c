"""Small helpers shared by the rule modules (validate, feature_checks, cluster_checks)."""
from __future__ import annotations

from launcher.errors import ConfigError, closest


def divisors(n: int) -> list[int]:
    """Every d that divides n: the values a fix can suggest (e.g. EP sizes for 128 experts)."""
    return [d for d in range(1, n + 1) if n % d == 0]


def choice(field: str, value, options) -> None:
    """Refuse a value outside options, suggesting the closest spelling."""
    if value not in options:
        near = closest(str(value), options)
        hint = f"did you mean {near!r}? " if near else ""
        raise ConfigError(field, value, f"must be one of {', '.join(map(str, options))}",
                          f"{hint}set {field} to one of those")


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

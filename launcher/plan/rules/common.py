"""Small helpers shared by the rule modules (parallel, features, cluster, data)."""
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

"""The one exception type for anything a user can cause."""
from __future__ import annotations

import difflib
from enum import Enum
from typing import Any, Iterable, Optional


class ConfigError(ValueError):
    """A user error: one line naming the field, the value, the rule and a fix."""

    def __init__(self, field: str, value: Any, rule: str, fix: str):
        self.field, self.value, self.rule, self.fix = field, _plain(value), rule, fix
        super().__init__(f"{field}={self.value!r}: {rule}. Fix: {fix}")


def _plain(value: Any) -> Any:
    """A schema choice (StrEnum, launcher/config/choices.py) shows as the string the user typed."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def closest(word: str, options: Iterable[str], n: int = 1) -> Optional[str]:
    """Closest spelling among options (difflib), or None when nothing is near."""
    hits = difflib.get_close_matches(word, list(options), n=n, cutoff=0.6)
    return hits[0] if hits else None

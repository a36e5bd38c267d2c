"""The one exception type for anything a user can cause."""
from __future__ import annotations

import difflib
from typing import Any, Iterable, Optional


class ConfigError(ValueError):
    """A user error: one line naming the field, the value, the rule and a fix."""

    def __init__(self, field: str, value: Any, rule: str, fix: str):
        self.field, self.value, self.rule, self.fix = field, value, rule, fix
        super().__init__(f"{field}={value!r}: {rule}. Fix: {fix}")


def closest(word: str, options: Iterable[str], n: int = 1) -> Optional[str]:
    """Closest spelling among options (difflib), or None when nothing is near."""
    hits = difflib.get_close_matches(word, list(options), n=n, cutoff=0.6)
    return hits[0] if hits else None

"""The one exception type for anything a user can cause."""
from __future__ import annotations

import difflib
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Optional, Union


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


def make_dir(path: Union[str, Path], field: str) -> Path:
    """mkdir -p for a directory the user named, answering one this machine cannot make (a file in the way, no
    permission, /proc, a read-only mount) with one line instead of an OSError traceback."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(field, str(path), f"cannot be created ({e.strerror})",
                          f"point {field} at a writable directory") from None
    return p


def write_text(path: Union[str, Path], text: str, field: str) -> None:
    """Write a file the user named; one line when it cannot be written (no such directory, a directory there)."""
    try:
        Path(path).write_text(text)
    except OSError as e:
        raise ConfigError(field, str(path), f"cannot be written ({e.strerror})",
                          f"point {field} at a file in a writable directory") from None


def closest(word: str, options: Iterable[str], n: int = 1) -> Optional[str]:
    """Closest spelling among options (difflib), or None when nothing is near."""
    hits = difflib.get_close_matches(word, list(options), n=n, cutoff=0.6)
    return hits[0] if hits else None

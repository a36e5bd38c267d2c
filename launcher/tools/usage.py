"""The side commands' shared start: their arguments, or their usage text when asked for it."""
from __future__ import annotations

import sys
from typing import Optional

from launcher.run.console import guard


def args_or_help(argv: Optional[list[str]], usage: str) -> Optional[list[str]]:
    """The command's arguments (sys.argv[1:] when argv is None); None after printing `usage` when -h or --help
    is among them (Hydra overrides never start with a dash, so the flag cannot be an override)."""
    if argv is None:  # the program itself: a reader that goes away ends its console, not it
        guard()
    args = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in args):
        print(usage.rstrip())
        return None
    return args

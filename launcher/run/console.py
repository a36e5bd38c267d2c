"""moe-launch's console: a view of the run, never a reason for the run to stop.

A reader that goes away (`moe-launch ... | head`, a dropped ssh pipe, a closed terminal) made the next print raise
BrokenPipeError (or EIO on a hung-up terminal) inside moe-launch: it died mid-run, its workers with it, and no
exit.json or record was written (measured 2026-12-01: the default job piped into `head -3` stopped after iteration
1 with neither). With these streams the first such error ends the console, not the launcher: further output is
dropped (train.log still gets every line), and the real descriptor is pointed at /dev/null so that Python's own
flush at exit has nothing to complain about. Any other OSError is raised as before.
"""
from __future__ import annotations

import errno
import io
import os
import sys
from typing import TextIO

GONE = (errno.EPIPE, errno.ECONNRESET, errno.EIO)  # the reader closed, reset, or its terminal hung up


class Console(io.TextIOBase):
    """A text stream over `stream` that turns a vanished reader into silence."""

    def __init__(self, stream: TextIO):
        super().__init__()
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                self._stream.write(text)
            except OSError as e:
                self._lost(e)
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._stream.flush()
            except OSError as e:
                self._lost(e)

    def _lost(self, e: OSError) -> None:
        if e.errno not in GONE:
            raise e
        self.reader_gone = True
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            pass  # no descriptor (a test's capture): nothing flushes it at exit

    def isatty(self) -> bool:
        return not self.reader_gone and self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", "utf-8")


def guard() -> None:
    """Put Console streams in place of this process's stdout and stderr (the program's entry calls it once)."""
    if not isinstance(sys.stdout, Console):
        sys.stdout = Console(sys.stdout)
    if not isinstance(sys.stderr, Console):
        sys.stderr = Console(sys.stderr)

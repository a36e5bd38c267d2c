"""The progress line of moe-prepare-data: documents/s, tokens/s and MB/s of text since the start.

On a terminal one line is rewritten in place (carriage return) at most every TTY_INTERVAL_S; into a
file or pipe (a batch job's log) a plain line is written every PLAIN_INTERVAL_S, so logs stay short.
"""
from __future__ import annotations

import time
from typing import Callable, Optional, TextIO

TTY_INTERVAL_S = 0.5
PLAIN_INTERVAL_S = 10.0


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def progress_line(docs: int, tokens: int, text_bytes: int, elapsed: float) -> str:
    e = max(elapsed, 1e-9)
    return (f"moe-prepare-data: {docs:,} docs, {_si(tokens)} tokens, {text_bytes / 1e6:,.1f} MB | "
            f"{_si(docs / e)} docs/s, {_si(tokens / e)} tokens/s, {text_bytes / 1e6 / e:.2f} MB/s | {e:.0f} s")


class Progress:
    def __init__(self, stream: TextIO, tty: Optional[bool] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.clock = stream, clock
        self.tty = stream.isatty() if tty is None else tty
        self.interval = TTY_INTERVAL_S if self.tty else PLAIN_INTERVAL_S
        self.start = self.last = clock()

    def _emit(self, line: str, final: bool) -> None:
        if self.tty:
            # \r + clear to the end of the line: a shorter line leaves no tail of the previous one
            self.stream.write("\r" + line + "\033[K" + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def update(self, docs: int, tokens: int, text_bytes: int) -> None:
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self._emit(progress_line(docs, tokens, text_bytes, now - self.start), final=False)

    def finish(self, docs: int, tokens: int, text_bytes: int) -> None:
        self._emit(progress_line(docs, tokens, text_bytes, self.clock() - self.start), final=True)

"""launcher/run/console.py: a reader that goes away silences the console; other write errors still raise."""
from __future__ import annotations

import errno
import io

import pytest

from launcher.run.console import Console


class _Pipe(io.StringIO):
    def __init__(self, error: OSError):
        super().__init__()
        self.error, self.calls = error, 0

    def write(self, text: str) -> int:
        self.calls += 1
        if self.calls > 1:
            raise self.error
        return super().write(text)


@pytest.mark.parametrize("error", [BrokenPipeError(errno.EPIPE, "Broken pipe"), OSError(errno.EIO, "I/O error")])
def test_a_vanished_reader_ends_the_console_not_the_process(error):
    pipe = _Pipe(error)
    out = Console(pipe)
    assert out.write("first\n") == 6 and not out.reader_gone
    assert out.write("second\n") == 7 and out.reader_gone  # swallowed: the launcher goes on
    out.write("third\n")
    out.flush()
    assert pipe.getvalue() == "first\n" and pipe.calls == 2 and not out.isatty()


def test_any_other_write_error_still_raises():
    out = Console(_Pipe(OSError(errno.ENOSPC, "No space left on device")))
    out.write("first\n")
    with pytest.raises(OSError, match="No space"):
        out.write("second\n")

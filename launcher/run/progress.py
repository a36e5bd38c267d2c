"""A live one-line status of a running job, read from Megatron's iteration lines as they stream by.

  [moe-launch] iter 12/20 60% | 1.65 s/it | 213.8 TFLOP/s/GPU | 39.7k tok/s/GPU | loss 7.157 | ETA 0:00:13

On a terminal the line stays at the bottom and is rewritten in place (\\r); every rank's output still
scrolls above it, unchanged. When the output is not a terminal (a file, a pipe, CI), the same status is
printed as a plain line at most every `interval_s` seconds (and for the last iteration). train.log never
sees the status: the executor writes the raw lines there itself. MOE_PROGRESS=0 turns it off.
W&B and TensorBoard stay Megatron's own: megatron.extra={wandb_project: ..., tensorboard_dir: ...}.
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from typing import Callable, Optional, TextIO

from launcher.records.logparse import parse_iteration_line
from launcher.records.steady import tokens_per_s_per_gpu

CLEAR = "\r\033[K"


def _eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _k(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


class Progress:
    """Pass every output line through `line()`; call `close()` at the end."""

    def __init__(self, stream: TextIO = sys.stdout, tty: Optional[bool] = None, interval_s: float = 30.0,
                 seq_length: Optional[int] = None, world_size: Optional[int] = None,
                 clock: Callable[[], float] = time.monotonic, enabled: Optional[bool] = None):
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.interval_s = interval_s
        self.seq_length, self.world_size = seq_length, world_size
        self.clock = clock
        self.enabled = os.environ.get("MOE_PROGRESS", "1") != "0" if enabled is None else enabled
        self.last: Optional[dict] = None
        self.train_iters: Optional[int] = None
        self.steps_ms: list[float] = []
        self._shown = False          # TTY: a status line is on screen
        self._printed_at: Optional[float] = None
        self._printed_iter = 0

    # status -----------------------------------------------------------------------------------------
    def status(self) -> Optional[str]:
        it = self.last
        if not it:
            return None
        n, total = it["iteration"], self.train_iters
        parts = [f"[moe-launch] iter {n}/{total}" + (f" {100 * n // total}%" if total else "")]
        if it.get("step_ms") is not None:
            parts.append(f"{it['step_ms'] / 1000:.2f} s/it")
        if it.get("tflops_per_gpu") is not None:
            parts.append(f"{it['tflops_per_gpu']:.1f} TFLOP/s/GPU")
        gbs = it.get("global_batch_size")
        if gbs and self.seq_length and self.world_size and it.get("step_ms"):
            parts.append(f"{_k(tokens_per_s_per_gpu(gbs, self.seq_length, it['step_ms'], self.world_size))} tok/s/GPU")
        if it.get("loss") is not None:
            parts.append(f"loss {it['loss']:.4g}")
        if total and self.steps_ms:
            recent = self.steps_ms[-5:] if len(self.steps_ms) > 1 else self.steps_ms
            parts.append(f"ETA {_eta((total - n) * statistics.median(recent) / 1000)}")
        return " | ".join(parts)

    # streaming --------------------------------------------------------------------------------------
    def line(self, text: str) -> None:
        """Show one raw output line (ending in \\n) and update the status from it."""
        if not self.enabled:
            self.stream.write(text)
            return
        if self._shown:
            self.stream.write(CLEAR)
            self._shown = False
        self.stream.write(text)
        rec = parse_iteration_line(text)
        if rec is not None:
            self.train_iters = rec.pop("train_iters")
            self.last = rec
            if rec.get("step_ms") is not None and rec["iteration"] > 1:  # iteration 1 is set-up, not a step
                self.steps_ms.append(rec["step_ms"])
        self._show(new_iteration=rec is not None)

    def _show(self, new_iteration: bool) -> None:
        status = self.status()
        if status is None:
            return
        if self.tty:
            width = shutil.get_terminal_size((120, 20)).columns
            self.stream.write(status[:max(20, width - 1)])
            self._shown = True
            self.stream.flush()
            return
        if not new_iteration:
            return
        now = self.clock()
        n = self.last["iteration"]
        final = self.train_iters is not None and n >= self.train_iters
        if self._printed_at is None or now - self._printed_at >= self.interval_s or (final and n != self._printed_iter):
            self.stream.write(status + "\n")
            self._printed_at, self._printed_iter = now, n

    def close(self) -> None:
        """Leave the last status on screen as a finished line."""
        if self.enabled and self._shown:
            self.stream.write(CLEAR + (self.status() or "") + "\n")
            self._shown = False
        self.stream.flush()

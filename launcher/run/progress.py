"""A live one-line status of a running job, read from Megatron's iteration lines as they stream by.

  [moe-launch] iter 12/20 60% | 1.65 s/it | 213.8 TFLOP/s/GPU | 39.7k tok/s/GPU | loss 7.157 | ETA 0:00:13

By default the console shows only this line (and our own `recipes.pretrain:` lines): everything the ranks
print, Megatron's argument dump and warnings included, goes to train.log in full (the executor writes it).
Verbose (launch.verbose=true or MOE_VERBOSE=1) also shows every raw line live, and explains the known
harmless warnings once (KNOWN_WARNINGS). On a terminal the status stays at the bottom and is rewritten in
place (\\r); elsewhere (a file, a pipe, CI) it is a plain line at most every `interval_s` seconds (and for
the last iteration). MOE_PROGRESS=0 turns the status off and shows the raw lines.
TFLOP/s: from Megatron's FLOP count per sequence (plan.json) when known, in GFLOP/s below 1 TFLOP/s (the
tiny model's 0.02 TFLOP/s would print as Megatron's "0.0"); otherwise Megatron's figure, hidden below 1.
W&B and TensorBoard stay Megatron's own: megatron.extra={wandb_project: ..., tensorboard_dir: ...}.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional, TextIO

from launcher.records.logparse import parse_iteration_line
from launcher.records.steady import tokens_per_s_per_gpu

CLEAR = "\r\033[K"
OWN_PREFIX = "recipes.pretrain:"  # our own compute-side lines: short, shown also when quiet

# Harmless warnings of a CPU run or of Megatron itself that we cannot fix at their source, explained once
# in verbose mode (the README's "What the log says" lists them too).
KNOWN_WARNINGS = {
    "your version is 0.0.0": "Megatron builds a Transformer Engine layer spec while it is imported "
                             "(hybrid_layer_specs); without TE it reads TE's version as 0.0.0. Harmless: "
                             "this run uses the layers named in the plan.",
    "GPTModel IS DEPRECATED": "Megatron-Core 0.19 marks GPTModel (the model every recipe here trains) as "
                              "bug-fix only in favour of HybridModel; training is unaffected.",
    "Transformer Engine and Apex are not installed": "no Transformer Engine/Apex (a CPU run, or no "
                                                    "[gpu] extra): Megatron uses its torch fallbacks.",
    "Apex is not installed": "no Apex: Megatron uses torch's norms (expected; Apex is not a dependency).",
    "absl.logging is not installed": "Megatron logs through Python's logging instead of absl; harmless.",
}


def shows_raw_lines(verbose: Optional[bool] = None, enabled: Optional[bool] = None) -> bool:
    """Verbose (the argument, else MOE_VERBOSE=1), or the status off (MOE_PROGRESS=0): then the raw lines
    are the only sign of life, so they are shown."""
    if enabled is None:
        enabled = os.environ.get("MOE_PROGRESS", "1") != "0"
    if verbose is None:
        verbose = os.environ.get("MOE_VERBOSE", "0") not in ("", "0")
    return verbose or not enabled


def _flops(x: float) -> str:
    """213.8 TFLOP/s/GPU; below 1 TFLOP/s in GFLOP/s, so a tiny model does not read 0.0."""
    return f"{x / 1e12:.1f} TFLOP/s/GPU" if x >= 1e12 else f"{x / 1e9:.1f} GFLOP/s/GPU"


def _eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _k(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


class Progress:
    """Pass every output line through `line()`; call `close()` at the end."""

    def __init__(self, stream: Optional[TextIO] = None, tty: Optional[bool] = None, interval_s: float = 30.0,
                 seq_length: Optional[int] = None, world_size: Optional[int] = None,
                 clock: Callable[[], float] = time.monotonic, enabled: Optional[bool] = None,
                 verbose: Optional[bool] = None, flops_per_sequence: Optional[float] = None):
        self.stream = sys.stdout if stream is None else stream  # at call time: launcher/run/console.py may wrap it
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval_s = interval_s
        self.seq_length, self.world_size = seq_length, world_size
        self.flops_per_sequence = flops_per_sequence
        self.clock = clock
        self.enabled = os.environ.get("MOE_PROGRESS", "1") != "0" if enabled is None else enabled
        self.verbose = shows_raw_lines(verbose, self.enabled)
        self.lines_seen = 0
        self._explained: set[str] = set()
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
        gbs = it.get("global_batch_size")
        if self.flops_per_sequence and gbs and self.world_size and it.get("step_ms"):
            parts.append(_flops(self.flops_per_sequence * gbs / (it["step_ms"] / 1000) / self.world_size))
        elif (it.get("tflops_per_gpu") or 0) >= 1:  # Megatron prints one decimal: below 1 it says little
            parts.append(f"{it['tflops_per_gpu']:.1f} TFLOP/s/GPU")
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
        """Take one raw output line (ending in \\n): show it when verbose, update the status from it."""
        self.lines_seen += 1
        if not self.enabled:
            self.stream.write(text)
            return
        shown = self.verbose or text.startswith(OWN_PREFIX)
        if self._shown and shown:
            self.stream.write(CLEAR)
            self._shown = False
        if shown:
            self.stream.write(text)
        if self.verbose:
            self._explain(text)
        rec = parse_iteration_line(text)
        if rec is not None:
            self.train_iters = rec.pop("train_iters")
            self.last = rec
            if rec.get("step_ms") is not None and rec["iteration"] > 1:  # iteration 1 is set-up, not a step
                self.steps_ms.append(rec["step_ms"])
        self._show(new_iteration=rec is not None)

    def _explain(self, text: str) -> None:
        for pattern, why in KNOWN_WARNINGS.items():
            if pattern in text and pattern not in self._explained:
                self._explained.add(pattern)
                self.stream.write(f"[moe-launch] note: {why}\n")

    def _show(self, new_iteration: bool) -> None:
        status = self.status()
        if status is None and self.tty and not self.verbose:
            # before the first iteration: a sign of life in place (imports, model build, data)
            status = f"[moe-launch] starting ({self.lines_seen} lines in train.log)"
        if status is None:
            return
        if self.tty:
            if self._shown:
                self.stream.write(CLEAR)
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
            status = self.status()  # None: only the "starting" line was up; wipe it
            self.stream.write(CLEAR + (status + "\n" if status else ""))
            self._shown = False
        self.stream.flush()


def progress_for_run(run_dir: Path, verbose: Optional[bool] = None) -> Progress:
    """A Progress with plan.json's sequence length, world size and Megatron's FLOPs per sequence (each left
    out when unreadable: the status then shows less, the run goes on)."""
    facts: dict = {}
    try:
        plan = json.loads((run_dir / "plan.json").read_text())
        facts = {"seq_length": int(plan["facts"]["batch"]["seq_length"]),
                 "world_size": int(plan["facts"]["parallel"]["world_size"])}
        facts["flops_per_sequence"] = (plan.get("megatron") or {}).get("flops_per_sequence")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return Progress(verbose=verbose, **facts)

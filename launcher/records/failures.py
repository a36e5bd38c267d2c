"""Classify why a run failed, from its log text (train.log, or the launcher's own stderr line).

Classes (FailureInfo.cls):
  bad_config       the launcher refused the config (exit 2, "moe-launch: error: ...") or Megatron's
                   parser/validator did on the compute node
  missing_backend  a requested backend is not installed or does not fit the installed versions
                   (recipes/backends.py's "recipes.pretrain: error: ...", or the raw import/signature error)
  oom              GPU out of memory; `where` says rank, GPU, iteration, phase and the innermost frame
  nan              NaN/Inf in loss or gradients (Megatron's rerun state machine or its NaN check)
  checkpoint_save  a checkpoint could not be written: the disk or quota is full, or Megatron's async writer
                   died (its CheckpointException; no restart: the storage needs a person)
  timeout          a collective or dispatcher timed out (NCCL watchdog, gloo, DeepEP/HybridEP, rendezvous)
  unknown          the run failed and none of the above is in the log
  interrupted, preempted, rank_died   stopped by a signal, or a rank that died without an error in the log:
                   launcher/records/stops.py (from exit.json and torchrun's root-cause block)

One more class is decided from the run directory, not the log (records/record.py silent_logger):
  logger_wrote_nothing  the run finished, but a logger it asked for (train.tensorboard_dir, wandb_project)
                   left no file

One log often holds several symptoms: the rank that ran out of memory dies and its peers then time out,
or a NaN is followed by an unrelated exception while Megatron tries to save. The root cause is the
most specific class present, in the order above; the others are kept in `also`.
Text only: imports neither torch nor megatron.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Optional

CLASSES = ("bad_config", "missing_backend", "oom", "nan", "checkpoint_save", "timeout", "unknown")

_PREFIX = re.compile(r"^\s*(?:\[rank(\d+)\]:|\[default(\d+)\]:|(\d+):)\s?")

# (class, kind, pattern). The first line matching any pattern of a class is its evidence.
_RULES: list[tuple[str, str, re.Pattern]] = [
    ("bad_config", "launcher", re.compile(r"moe-launch: error: ")),
    ("bad_config", "megatron parser", re.compile(r"recipes\.pretrain: error: (unrecognized arguments|argument )")),
    # recipes/checkpoint.py: a checkpoint this run cannot load or resume exactly (none there, other experts or
    # gradient buckets), or a save directory these ranks cannot write
    ("bad_config", "resume", re.compile(r"recipes\.pretrain: error: train\.load=")),
    ("bad_config", "checkpoint directory", re.compile(r"recipes\.pretrain: error: train\.save=")),
    # a checkpoint whose tensors do not fit this model (another shape): Megatron's loader, before a CheckpointException
    # that would otherwise read as a failed save
    ("bad_config", "checkpoint load", re.compile(r"CheckpointingException: (Global shape mismatch|.*[Mm]issing key)")),
    ("bad_config", "megatron check",
     re.compile(r"AssertionError.*|ValueError: .*(must be|should be|not supported|divisible)")),
    ("missing_backend", "incompatible",
     re.compile(r"recipes\.pretrain: error: .*(versions disagree|has none|signature)"
                r"|ep_bootstrap\(\) (missing|got an unexpected)"
                # a kernel library refusing the installed compiler (flash-linear-attention on Triton < 3.7.1)
                r"|Please upgrade \w+ to >= ?[0-9.]+")),
    ("missing_backend", "not installed",
     re.compile(r"recipes\.pretrain: error: .*cannot be imported"
                r"|No module named '(deep_ep|transformer_engine|hybrid_ep|nvshmem|fused_weight_gradient_mlp_cuda)"
                r"|DeepEP is not installed|HybridEP is not installed")),
    ("oom", "cuda", re.compile(r"(torch\.)?(cuda\.)?OutOfMemoryError|CUDA out of memory|CUDA error: out of memory"
                               r"|CUBLAS_STATUS_ALLOC_FAILED|Cuda failure 'out of memory'|NCCL.*out of memory")),
    ("nan", "megatron", re.compile(r"found (NaN|Inf) in|Unexpected result (nan|inf)|"
                                   r"(NaN|Inf) detected in|Loss is (NaN|nan|inf)|is not finite")),
    # before timeout: a rank whose save failed leaves its peers waiting in the next collective
    ("checkpoint_save", "disk full", re.compile(r"No space left on device|Disk quota exceeded|\[Errno 28\]")),
    ("checkpoint_save", "async writer",
     re.compile(r"CheckpointException|Worker failure: An error is caught while starting worker")),
    ("timeout", "dispatcher", re.compile(r"DeepEP (error: )?timeout|HybridEP.*timeout|timeout \((dispatch|combine)"
                                         r"|deep_ep.*[Tt]imeout")),
    ("timeout", "nccl", re.compile(r"Watchdog caught collective operation timeout|ProcessGroupNCCL.*[Tt]imeout"
                                   r"|NCCL.*timed out|ncclTimeout")),
    ("timeout", "gloo", re.compile(r"gloo.*Timed out waiting|Timed out waiting \d+ms for (send|recv)")),
    ("timeout", "rendezvous", re.compile(r"DistStoreError: .*[Tt]imed out|RendezvousTimeoutError"
                                         r"|Socket Timeout|timed out after .* waiting for clients")),
]

# srun, where it is the process launcher (no torchrun): "srun: error: node7: task 1: Killed",
# "srun: error: node7: tasks 0-3: Exited with exit code 1"; the first such line is the first failed task
SRUN_TASK = re.compile(r"srun: error: (\S+): tasks? (\d+)[0-9,\-]*: (.+?)\s*$")
_OOM_ALLOC = re.compile(r"Tried to allocate ([0-9.]+ [KMGT]i?B)")
_OOM_GPU = re.compile(r"GPU (\d+) has a total capacity of ([0-9.]+ [KMGT]i?B) of which ([0-9.]+ [KMGT]i?B) is free")
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')
_SIGNAL = re.compile(r"Signal (\d+) \((SIG\w+)\) received by PID|exitcode\s*:\s*(-\d+)")
_EXC = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception|Interrupt))\b:?\s*(.*)$")


def first_srun_task(lines: list[str]) -> Optional[re.Match]:
    """srun's first failed-task line (host, task = rank, what happened), or None for a job srun did not start."""
    return next((m for m in map(SRUN_TASK.search, lines) if m), None)


# innermost frames that name the training phase (checked innermost first)
_PHASES = [
    ("backward", ("backward", "_engine_run_backward", "backward_step")),
    ("optimizer step", ("optimizer", "step_with_ready_grads", "_copy_main_params")),
    ("forward", ("forward", "forward_step", "forward_backward")),
    ("model setup", ("get_model", "setup_model_and_optimizer", "build_model", "__init__")),
    ("checkpoint", ("save_checkpoint", "load_checkpoint")),
]


@dataclass
class FailureInfo:
    cls: str
    """One of CLASSES."""
    kind: Optional[str] = None
    """Refinement: oom: cuda; timeout: nccl | gloo | dispatcher | rendezvous; missing_backend:
    not installed | incompatible; bad_config: launcher | megatron parser | resume | checkpoint directory |
    checkpoint load | megatron check."""
    summary: str = ""
    """One line a person reads first."""
    rank: Optional[int] = None
    iteration: Optional[int] = None
    """Iteration it failed in (last logged + 1), when known."""
    where: dict = field(default_factory=dict)
    """oom: gpu, tried_to_allocate, capacity, free, phase, frame, pp_stage."""
    evidence: list[str] = field(default_factory=list)
    """The log lines that decided the class (prefix kept), at most a few."""
    also: list[str] = field(default_factory=list)
    """Other classes seen in the same log (usually consequences of the root cause)."""

    def as_dict(self) -> dict:
        d = asdict(self)
        d["class"] = d.pop("cls")
        return d


def _strip(line: str) -> tuple[Optional[int], str]:
    m = _PREFIX.match(line)
    if not m:
        return None, line
    rank = next((int(g) for g in m.groups() if g is not None), None)
    return rank, line[m.end():]


def _traceback_before(lines: list[str], idx: int, rank: Optional[int]) -> list[tuple[str, int, str]]:
    """Frames (file, line, function) of the traceback that ends at lines[idx], same rank prefix."""
    frames = []
    for j in range(idx - 1, max(-1, idx - 400), -1):
        r, body = _strip(lines[j])
        if rank is not None and r is not None and r != rank:
            continue
        if "Traceback (most recent call last)" in body:
            break
        m = _FRAME.search(body)
        if m:
            frames.append((m.group(1), int(m.group(2)), m.group(3)))
    return list(reversed(frames))  # outermost first


def _phase(frames: list[tuple[str, int, str]]) -> Optional[str]:
    for _, _, fn in reversed(frames):
        for phase, names in _PHASES:
            if any(n == fn or (n in fn and n != "__init__") for n in names):
                return phase
    return None


def _frame_name(frames: list[tuple[str, int, str]]) -> Optional[str]:
    """Innermost frame inside megatron or this project, as 'megatron/core/.../x.py:123 in f'."""
    for path, line, fn in reversed(frames):
        for root in ("megatron/", "recipes/", "transformer_engine/", "deep_ep/"):
            if root in path:
                return f"{root}{path.split(root, 1)[1]}:{line} in {fn}"
    return None


def _last_logged_iteration(lines: list[str], upto: int) -> int:
    from launcher.records.logparse import parse_iteration_line

    last = 0
    for line in lines[:upto]:
        rec = parse_iteration_line(line)
        if rec:
            last = max(last, rec["iteration"])
    return last


def classify(text: str, returncode: Optional[int] = None, layout: Optional[dict] = None) -> Optional[FailureInfo]:
    """The failure class of a run whose output is `text`; None when the run succeeded (returncode 0,
    or no returncode given and nothing in the text looks like a failure).

    layout (optional): {"world_size", "tp", "cp", "ep", "pp", "dp"} to name the OOM rank's pipeline stage."""
    if returncode == 0:
        return None
    lines = text.splitlines()
    hits: dict[str, tuple[int, str]] = {}  # class -> (line index, kind), first hit of each class
    for i, line in enumerate(lines):
        for cls, kind, pat in _RULES:
            if cls not in hits and pat.search(line):
                if cls == "bad_config" and kind == "megatron check" and not _in_megatron_args(lines, i):
                    continue
                hits[cls] = (i, kind)
    found = [c for c in CLASSES if c in hits]
    if not found:
        if returncode is None and not _looks_failed(lines):
            return None
        return _unknown(lines, returncode)
    cls = found[0]
    idx, kind = hits[cls]
    rank, body = _strip(lines[idx])
    info = FailureInfo(cls=cls, kind=kind, rank=rank, evidence=[lines[idx].strip()[:500]], also=found[1:])
    info.iteration = _last_logged_iteration(lines, idx) + 1 if cls not in ("bad_config", "missing_backend") else None
    if cls == "oom":
        _oom_where(info, lines, idx, rank, body, layout)
    elif cls == "nan":
        # the iteration is the one after the last logged (Megatron's rerun state machine counts its own
        # "iteration #N", which runs ahead of the logged iterations; it stays in the evidence line)
        msg = re.search(r"message='([^']+)'", body)
        detail = msg.group(1) if msg else body.strip()[:200]
        info.summary = f"NaN/Inf in iteration {info.iteration}: {detail}"
        r = re.search(r"on rank (\d+)|Rank (\d+),", body)
        if r and info.rank is None:
            info.rank = int(next(g for g in r.groups() if g))
    elif cls == "timeout":
        info.summary = f"{kind} timeout" + (f" on rank {rank}" if rank is not None else "") + \
            f" in iteration {info.iteration}: {body.strip()[:240]}"
    elif cls == "checkpoint_save":
        info.summary = (f"a checkpoint save failed ({kind}) after iteration {info.iteration - 1}: "
                        f"{_checkpoint_cause(lines) or body.strip()[:200]}; check the free space and quota where "
                        f"train.checkpoint.dir points (each save needs room for one more checkpoint)")
    elif cls == "missing_backend":
        info.summary = body.strip()[:400]
    elif cls == "bad_config":
        info.summary = body.strip()[:400]
        if kind == "checkpoint load":
            info.summary = f"the checkpoint loaded does not fit this model: {body.strip()[:300]}"
        if kind == "megatron check":
            src = _assert_source(lines, idx)
            info.summary = f"Megatron refused the configuration: {body.strip()[:200]}" + (f" at {src}" if src else "")
    return info


_WRITER_ERROR = re.compile(r"(?:Local worker \d+ encountered an error|OSError): (.+)|(No space left on device.*)")


def _checkpoint_cause(lines: list[str]) -> Optional[str]:
    """What the checkpoint writer itself reported (Megatron's CheckpointException only says that it failed)."""
    for line in lines:
        m = _WRITER_ERROR.search(_strip(line)[1])
        if m:
            return (m.group(1) or m.group(2)).strip()[:200]
    return None


_CONFIG_CODE = ("megatron/training/arguments.py", "transformer_config.py", "model_parallel_config.py")


def _in_megatron_args(lines: list[str], idx: int) -> bool:
    """An AssertionError/ValueError counts as a config error when Megatron's argument or config code raised
    it, or when Megatron asserted during set-up (before any iteration was logged): its set-up asserts check
    the arguments (e.g. OptimizerParamScheduler: lr_warmup_steps < lr_decay_steps)."""
    rank, _ = _strip(lines[idx])
    frames = _traceback_before(lines, idx, rank)
    if not frames:
        return False
    if any(any(c in p for c in _CONFIG_CODE) for p, _, _ in frames[-3:]):
        return True
    return "megatron/" in frames[-1][0] and _last_logged_iteration(lines, idx) == 0


def _assert_source(lines: list[str], idx: int) -> Optional[str]:
    """The failing statement and its place: the source line after the traceback's innermost frame."""
    for j in range(idx - 1, max(-1, idx - 20), -1):
        m = _FRAME.search(_strip(lines[j])[1])
        if m:
            path = m.group(1)
            where = (f"megatron/{path.split('megatron/', 1)[1]}" if "megatron/" in path else path) + f":{m.group(2)}"
            stmt = _strip(lines[j + 1])[1].strip() if j + 1 < idx else ""
            return f"{stmt} ({where})" if stmt and not stmt.startswith("^") else where
    return None


def _looks_failed(lines: list[str]) -> bool:
    return any("Traceback (most recent call last)" in line or "ChildFailedError" in line or " FAILED" in line
               for line in lines)


def _oom_where(info: FailureInfo, lines: list[str], idx: int, rank: Optional[int], body: str,
               layout: Optional[dict]) -> None:
    where: dict = {}
    m = _OOM_GPU.search(body)
    if m:
        where.update(gpu=int(m.group(1)), capacity=m.group(2), free=m.group(3))
    m = _OOM_ALLOC.search(body)
    if m:
        where["tried_to_allocate"] = m.group(1)
    frames = _traceback_before(lines, idx, rank)
    if frames:
        where["phase"] = _phase(frames)
        where["frame"] = _frame_name(frames)
    if rank is not None and layout and layout.get("pp", 1) > 1 and layout.get("world_size"):
        # Megatron's default rank order tp-cp-ep-dp-pp: pipeline stage is the slowest-varying index
        where["pp_stage"] = rank // (layout["world_size"] // layout["pp"])
    info.where = {k: v for k, v in where.items() if v is not None}
    at = "before the first iteration" if info.iteration == 1 and where.get("phase") == "model setup" \
        else f"in iteration {info.iteration}"
    parts = [f"out of GPU memory {at}"]
    if rank is not None:
        parts.append(f"rank {rank}" + (f" (PP stage {where['pp_stage']})" if "pp_stage" in where else ""))
    if where.get("phase"):
        parts.append(where["phase"])
    if where.get("tried_to_allocate"):
        parts.append(f"tried to allocate {where['tried_to_allocate']}"
                     + (f" with {where['free']} free of {where['capacity']}" if "free" in where else ""))
    if where.get("frame"):
        parts.append(f"at {where['frame']}")
    info.summary = ", ".join(parts)


def root_cause(lines: list[str]) -> Optional[dict]:
    """torchrun's "Root Cause (first observed failure)" block: rank, exitcode, traceback/signal."""
    for i, line in enumerate(lines):
        if "Root Cause (first observed failure)" in line:
            out: dict = {}
            for body in lines[i + 1:i + 10]:
                m = re.match(r"\s*(rank|exitcode|traceback|host)\s*:\s*(.*)$", body)
                if m:
                    out[m.group(1)] = m.group(2).strip()
                elif body.startswith("=") and out:
                    break
            if "rank" in out:
                out["rank"] = int(out["rank"].split()[0])
            if "exitcode" in out:
                out["exitcode"] = int(out["exitcode"].split()[0])
            return out
    return None


def _unknown(lines: list[str], returncode: Optional[int]) -> FailureInfo:
    """No known cause: report torchrun's root cause (rank, exit code or signal) and the first exception."""
    info = FailureInfo(cls="unknown", iteration=_last_logged_iteration(lines, len(lines)) + 1)
    bits = []
    root = root_cause(lines)
    if root and "rank" in root:
        info.rank = root["rank"]
        m = _SIGNAL.search(root.get("traceback", ""))
        if m and m.group(2):
            bits.append(f"root cause rank {root['rank']} was killed by {m.group(2)} "
                        "(a host OOM killer, the scheduler or a user?)")
        elif "exitcode" in root:
            bits.append(f"root cause rank {root['rank']} exited with {root['exitcode']}")
        info.evidence.append(f"torchrun root cause: {root}")
    srun = None if root else first_srun_task(lines)
    if srun:  # a Slurm job: srun's first failed task (launcher/records/stops.py names the rank from it)
        info.rank = int(srun.group(2))
        info.evidence.append(srun.group(0).strip())
        bits.append(f"srun's first failed task {srun.group(2)}: {srun.group(3)}")
    for line in lines:
        rank, body = _strip(line)
        m = _EXC.match(body.strip())
        if m and rank is not None and not body.startswith(" "):
            if info.rank is None:
                info.rank = rank
            info.evidence.append(line.strip()[:500])
            bits.append(f"first exception, rank {rank}: {m.group(1)}: {m.group(2)[:200]}")
            break
    rc = f"exit {returncode}" if returncode is not None else "failed"
    info.summary = f"{rc}, no known failure class in the log" + (": " + "; ".join(bits) if bits else "")
    return info

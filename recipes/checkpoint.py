"""What a checkpoint must record, and refuse, so that a resume is exact (compute side, before pretrain()).

The expert weights of model.moe_grouped_gemm_impl=torch and =te have one checkpoint layout
(recipes/expert_checkpoint.py), so the MODEL loads across implementations in every format. The
distributed optimizer's default format does not: `dp_reshardable` stores Adam's state and the FP32 main
weights as the flat gradient buckets of the saving run, in its parameter order. TE registers weight0..N-1
per projection, the torch experts one [N, out, in] weight, so the same bucket bytes mean other experts
in the other implementation. Megatron checks only the bucket sizes, which agree, and would load them:
the first step after resume is right (its forward uses the model weights) and the next ones drift away
(measured on CPU: loss 4.04 instead of 3.55 one step later). So the saving run's implementation goes
into the checkpoint (Megatron pickles its args namespace into the common state), and a resume that would
map bucket-ordered optimizer state onto the other implementation is refused before anything is built.
The same formats key that state by gradient bucket, so a resume whose buckets are cut elsewhere (the gradient
overlap on one side only: parallel.overlap_grad_reduce=auto turns it off at data-parallel size 1; another
--ddp-bucket-size) fails in Megatron's loader with a shape mismatch: refused here with the fix instead. A relaunch
into the run's own directory, or a start from another run's train.load that the login node can see, already cuts
them as its checkpoint did where they were left to auto (launcher/plan/resume_buckets.py); what reaches this check
is a pinned value or a train.load only the ranks see (a Slurm path).
"""
from __future__ import annotations

import os
from typing import Optional

from launcher.records.checkpoint_buckets import BUCKET_FORMATS, BucketCut, read_common
from launcher.records.checkpoint_dir import TRACKER

ARG = "moe_grouped_gemm_impl"       # attribute added to Megatron's args, saved with them


class CheckpointError(ValueError):
    """A checkpoint this run cannot load, resume exactly or write; the message is the one line to print."""


def stamp(args, impl: str) -> None:
    """Record the experts' implementation in the args Megatron saves with every checkpoint."""
    setattr(args, ARG, impl)


def checkpoint_dir(load: str, ckpt_step: Optional[int]) -> Optional[str]:
    """The iteration directory Megatron's load_checkpoint will read, or None when there is none yet."""
    if ckpt_step is not None:
        step = ckpt_step
    else:
        tracker = os.path.join(load, TRACKER)
        if not os.path.isfile(tracker):
            return None
        text = open(tracker).read().strip()
        if text == "release":
            return os.path.join(load, "release")
        step = int(text)
    path = os.path.join(load, f"iter_{step:07d}")
    return path if os.path.isdir(path) else None


def check_paths(args) -> None:
    """Raise CheckpointError when --load names another directory that holds no checkpoint (Megatron would warn and
    start from random weights: the login side checks what it can see, launcher/plan/checkpoint.py check_load,
    and a Slurm run's path is seen only here), or when --save cannot be written (Megatron would fail at the
    first save, an interval of training later)."""
    own = args.save and os.path.abspath(args.load or "") == os.path.abspath(args.save)
    if args.load and not own and checkpoint_dir(args.load, args.ckpt_step) is None:
        raise CheckpointError(
            f"train.load={args.load}: holds no Megatron checkpoint ({TRACKER} and the iter_ directory it names), so "
            "Megatron would start from random weights. Fix: point it at a run's checkpoints directory "
            "(<run_dir>/checkpoints), or leave it unset for a fresh start")
    if not args.save:
        return
    try:
        os.makedirs(args.save, exist_ok=True)  # every rank: each node may mount it differently
        writable = os.access(args.save, os.W_OK | os.X_OK)
    except OSError as e:
        writable, why = False, e.strerror
    else:
        why = "not writable"
    if not writable:
        raise CheckpointError(
            f"train.save={args.save}: cannot be written here ({why}), so the first save would fail after an "
            "interval of training. Fix: point train.save (or launch.run_dir) at shared storage these nodes can write")


def _same_buckets(saved: BucketCut) -> str:
    """The overrides that cut this run's buckets as the saving run did."""
    if not saved.overlap_grad_reduce:
        return "parallel.overlap_grad_reduce=false parallel.overlap_param_gather=false"
    flag = f"--ddp-num-buckets,{saved.num_buckets}" if saved.num_buckets else f"--ddp-bucket-size,{saved.size}"
    return f"parallel.overlap_grad_reduce=true 'megatron.raw=[{flag}]'"


def check_resume(args, impl: str) -> None:
    """Raise CheckpointError when args.load would put bucket-ordered optimizer state under other parameters: another
    implementation's experts, or other gradient buckets."""
    if not args.load or args.no_load_optim or args.finetune or not args.use_distributed_optimizer:
        return
    path = checkpoint_dir(args.load, args.ckpt_step)
    if path is None or not os.path.isfile(os.path.join(path, "metadata.json")):
        return  # nothing to resume, or not Megatron's distributed format (its own loader answers)
    fmt, saved_args = read_common(path)
    if fmt in BUCKET_FORMATS:
        _check_experts(args, impl, path, fmt, saved_args)
        _check_buckets(args, path, fmt, saved_args)


def _check_buckets(args, path: str, fmt: str, saved_args) -> None:
    saved, now = BucketCut.of(saved_args), BucketCut.of(args)
    if saved is None or now is None or saved.describe() == now.describe():
        return
    raise CheckpointError(
        f"train.load={args.load}: {os.path.basename(path)} keeps the distributed optimizer's state in the bucket "
        f"format ({fmt}) of {saved.describe()}; this run would cut {now.describe()}, and Megatron's loader would "
        f"fail on the shapes. Fix: resume with {_same_buckets(saved)}, or start a fresh optimizer with "
        "'megatron.raw=[--no-load-optim]' (save with 'megatron.extra={dist_ckpt_optim_fully_reshardable: true}' "
        "for state that any layout loads)")


def _check_experts(args, impl: str, path: str, fmt: str, saved_args) -> None:
    saved = getattr(saved_args, ARG, "te")  # checkpoints from before this stamp: Megatron's own experts
    if saved != impl:
        raise CheckpointError(
            f"train.load={args.load}: {os.path.basename(path)} was saved with model.moe_grouped_gemm_impl={saved} "
            f"and the distributed optimizer's bucket format ({fmt}), whose optimizer state follows that "
            f"implementation's parameter order, not this run's ({impl}). Fix: resume with "
            f"model.moe_grouped_gemm_impl={saved}, or save with "
            "'megatron.extra={dist_ckpt_optim_fully_reshardable: true}' (per-parameter optimizer state, "
            "loadable by both), or start a fresh optimizer with 'megatron.raw=[--no-load-optim]'")

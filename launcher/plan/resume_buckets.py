"""A resume, or a start from another run's checkpoint (train.load), cuts its gradient buckets as the checkpoint's
run did, where the user left that to us.

Megatron's distributed optimizer saves its state per gradient bucket in its default formats (dp_reshardable and
the other BUCKET_FORMATS), so a run whose DDP cuts the buckets elsewhere cannot load it: Megatron's loader fails on
a shape mismatch, and recipes/checkpoint.py refuses such a resume first with the overrides that fix it. The cut:
one bucket without --overlap-grad-reduce, else --ddp-num-buckets, else --ddp-bucket-size, else Megatron's default
max(40M, 1M x data-parallel size) elements (distributed_data_parallel.py). Two ordinary launches change it:

  parallel.overlap_grad_reduce=auto  resolves by the GPU count (launcher/plan/tuned.py grad_overlap), so a one-GPU
                                     run's checkpoint (one bucket) meets 40M-element buckets on more GPUs
  the default size                   grows with the data-parallel size past 40 ranks, so resuming a large run on
                                     fewer or more nodes (a node lost in week three) moves every bucket

Here, before anything starts: overlap_grad_reduce=auto follows the checkpoint, and where the checkpoint's run
used Megatron's default size and this run's default differs, --ddp-bucket-size pins the checkpoint's. A pinned
overlap_grad_reduce or an explicit --ddp-bucket-size/--ddp-num-buckets in megatron.raw/extra stays as written
(the recipe's check still answers for it). The checkpoint's own arguments are read from its common state by
launcher/records/checkpoint_buckets.py (launcher/run/resume.py on a resume; launcher/plan/checkpoint.py
loaded_point for train.load, where this machine sees it; a Slurm path it does not see is left to the recipe).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from launcher.config.schema import RunConfig
from launcher.plan.resolve import Resolved
from launcher.records.checkpoint_buckets import BucketCut, default_bucket_size

# each Megatron argument has this one option string (arguments.py); megatron.extra takes it or the dest name
BUCKET_FLAGS = {"--ddp-bucket-size": "ddp_bucket_size", "--ddp-num-buckets": "ddp_num_buckets"}


def user_sets(cfg: RunConfig, flags: dict[str, str]) -> bool:
    """Whether megatron.raw/extra set one of these Megatron flags ({option string: dest}) themselves, in every
    spelling Megatron's parser takes ("--flag v", "--flag=v"; an extra key as flag or dest). Not through
    launcher/plan/megatron/parser.py's dests(): that module leads back here through the flag table (an import
    cycle)."""
    raw = {tok.split("=", 1)[0] for tok in cfg.megatron.raw}
    return any(flag in raw or flag in cfg.megatron.extra or dest in cfg.megatron.extra for flag, dest in flags.items())


def _follows(cfg: RunConfig, saved: Optional[BucketCut]) -> bool:
    return saved is not None and cfg.parallel.use_distributed_optimizer and not user_sets(cfg, BUCKET_FLAGS)


def follow_overlap(cfg: RunConfig, res: Resolved, saved: Optional[BucketCut]) -> Resolved:
    """res with overlap_grad_reduce=auto resolved as the checkpoint's run had it (and overlap_param_gather=auto
    with it: Megatron's prerequisite), the note saying so; unchanged where it already agrees or was pinned."""
    if not _follows(cfg, saved) or str(cfg.parallel.overlap_grad_reduce) != "auto":
        return res
    on = saved.overlap_grad_reduce
    if res.tuned.overlap_grad_reduce == on:
        return res
    param = on if str(cfg.parallel.overlap_param_gather) == "auto" else res.tuned.overlap_param_gather
    notes = [n for n in res.notes if not n.startswith("overlap_grad_reduce=auto")]
    notes.append(f"overlap_grad_reduce=auto -> {str(on).lower()}: follows the checkpoint it loads, whose "
                 "distributed optimizer state is kept per gradient bucket (launcher/plan/resume_buckets.py)")
    tuned = dataclasses.replace(res.tuned, overlap_grad_reduce=on, overlap_param_gather=param)
    return dataclasses.replace(res, tuned=tuned, notes=tuple(notes))


def bucket_flags(cfg: RunConfig, res: Resolved, saved: Optional[BucketCut]) -> tuple[list[str], Optional[str]]:
    """The flags that cut this run's buckets as the checkpoint's run did (after follow_overlap), and why; none
    where Megatron's defaults already agree."""
    if not _follows(cfg, saved) or not (res.tuned.overlap_grad_reduce and saved.overlap_grad_reduce):
        return [], None
    if saved.num_buckets:
        flags = ["--ddp-num-buckets", str(saved.num_buckets)]
    else:
        if saved.bucket_size is None and saved.size == default_bucket_size(res.data_parallel_size(cfg)):
            return [], None
        flags = ["--ddp-bucket-size", str(saved.size)]
    return flags, (f"{' '.join(flags)}: the gradient buckets of the checkpoint it loads (saved at data-parallel "
                   f"size {saved.data_parallel_size}; launcher/plan/resume_buckets.py)")

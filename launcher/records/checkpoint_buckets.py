"""How a Megatron distributed checkpoint's run cut its gradient buckets, for the launcher (launcher/run/resume.py,
launcher/plan/resume_buckets.py: a resume follows it) and the ranks (recipes/checkpoint.py: a resume that cuts
them otherwise is refused).

Megatron's distributed optimizer keeps its state per gradient bucket in the BUCKET_FORMATS (dp_reshardable is
the default); per-parameter formats (fully_reshardable) load into any buckets. DDP's cut: one bucket without
--overlap-grad-reduce, else --ddp-num-buckets, else --ddp-bucket-size, else default_bucket_size
(distributed_data_parallel.py).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

BUCKET_FORMATS = ("dp_reshardable", "dp_zero_gather_scatter", "fully_sharded_bucket_space")


@dataclass(frozen=True)
class BucketCut:
    """How a run cuts its gradient buckets (its Megatron arguments): a checkpoint's run, or the run at hand."""

    overlap_grad_reduce: bool
    bucket_size: Optional[int]
    """--ddp-bucket-size as given (None: Megatron's default for its data-parallel size)."""
    num_buckets: Optional[int]
    data_parallel_size: int

    @classmethod
    def of(cls, args) -> Optional["BucketCut"]:
        """From Megatron's args namespace; None for one that does not say (not Megatron's)."""
        if not hasattr(args, "overlap_grad_reduce"):
            return None
        return cls(overlap_grad_reduce=bool(args.overlap_grad_reduce),
                   bucket_size=getattr(args, "ddp_bucket_size", None),
                   num_buckets=getattr(args, "ddp_num_buckets", None),
                   data_parallel_size=int(getattr(args, "data_parallel_size", 1)))

    @property
    def size(self) -> int:
        """Elements a bucket holds where the overlap is on and no bucket count is given."""
        return self.bucket_size or default_bucket_size(self.data_parallel_size)

    def describe(self) -> str:
        if not self.overlap_grad_reduce:
            return "one bucket (overlap_grad_reduce off)"
        if self.num_buckets:
            return f"{self.num_buckets} buckets"
        return f"buckets of {self.size:,} elements"


def default_bucket_size(data_parallel_size: int) -> int:
    """Megatron's default: 40M elements, 1M per data-parallel rank past 40 (larger NCCL ring chunks)."""
    return max(40_000_000, 1_000_000 * data_parallel_size)


def read_common(iter_dir) -> tuple[Optional[str], object]:
    """(the distributed optimizer's checkpoint format, Megatron's args) from a distributed checkpoint's common
    state, through megatron-core's own reader (imported here, lazily). Quietly: on a login node a relaunch read it
    before its plan, and the import's warnings (no CUDA runtime, no TE or Apex) and torch's about loading in one
    process filled the console ahead of the plan, or ahead of a refusal's one line."""
    import logging
    import warnings

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core import dist_checkpointing

        common = dist_checkpointing.load_common_state_dict(str(iter_dir))
        meta = dist_checkpointing.load_content_metadata(preloaded_state_dict=common) or {}
    return meta.get("distrib_optim_sharding_type"), common.get("args") if isinstance(common, dict) else None


def read_saved(iter_dir: Path) -> tuple[Optional[str], object]:
    """read_common of a complete checkpoint (metadata.json written), read once per directory and process (a
    complete checkpoint does not change; a resume asks for its buckets, schedule and model); (None, None) where
    there is none or it cannot be read here: then the resume goes ahead as configured and Megatron's loader, or
    the recipe's own check, answers."""
    if not (Path(iter_dir) / "metadata.json").is_file():
        return None, None
    return _read_complete(str(iter_dir))


@functools.lru_cache(maxsize=16)
def _read_complete(iter_dir: str) -> tuple[Optional[str], object]:
    try:
        return read_common(iter_dir)
    except Exception:  # noqa: BLE001 - a checkpoint we cannot read here is Megatron's loader's to judge
        return None, None


def read_saved_buckets(iter_dir: Path) -> Optional[BucketCut]:
    """The bucket cut of a Megatron distributed checkpoint whose optimizer state is kept per bucket; None where it
    is not one (no distributed optimizer, a per-parameter format, another format) or cannot be read."""
    fmt, args = read_saved(iter_dir)
    return BucketCut.of(args) if fmt in BUCKET_FORMATS else None

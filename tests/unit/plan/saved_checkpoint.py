"""A Megatron distributed checkpoint as Megatron writes it, for the resume tests: dist_checkpointing's own save, with
the saving run's arguments in the common state and the optimizer format in the content metadata."""
from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedTensor

BUCKET_ARGS = dict(overlap_grad_reduce=True, ddp_bucket_size=None, ddp_num_buckets=None, data_parallel_size=1)


def write_checkpoint(ckpt_dir: Path, monkeypatch, fmt: str = "dp_reshardable", iteration: int = 10,
                     **saved) -> Path:
    """<ckpt_dir>/iter_<iteration> and the tracker file beside it; `saved` overrides the saving run's arguments."""
    if not torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: torch.device("cpu"))
    path = ckpt_dir / f"iter_{iteration:07d}"
    path.mkdir(parents=True)
    state = {"args": Namespace(iteration=iteration, **{**BUCKET_ARGS, **saved}),
             "w": ShardedTensor.from_rank_offsets("w", torch.zeros(4))}
    dist_checkpointing.save(state, str(path), content_metadata={"distrib_optim_sharding_type": fmt})
    (ckpt_dir / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    return ckpt_dir

"""The learning-rate and weight-decay schedule a Megatron checkpoint's run trained with, in the units Megatron 0.19.2's
OptimizerParamScheduler.load_state_dict compares: a resume whose schedule differs (the common case: a finished
run relaunched with a larger train.train_iters to train on) asserts on every rank "class input value ... and
checkpoint value ... do not match" unless --override-opt_param-scheduler or --use-checkpoint-opt_param-scheduler
says which one wins. launcher/plan/checkpoint.py compares it before anything starts.

From training.py get_optimizer_param_scheduler (iteration-based runs): decay steps = (lr_decay_iters or
train_iters) x global batch, warm-up steps = lr_warmup_fraction x decay steps or lr_warmup_iters x global batch,
weight-decay increment steps = train_iters x global batch; a constant weight decay has start = end = weight_decay
(arguments.py validate_args).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

from launcher.records.checkpoint_buckets import read_saved


# Megatron argument names, each the dest of a train.* field of ours (launcher/plan/megatron/table.py)
GIVEN = ("train_iters", "global_batch_size", "lr", "min_lr", "lr_warmup_iters", "lr_decay_style", "weight_decay")


@dataclass(frozen=True)
class Schedule:
    """What the scheduler checks, named as Megatron's assertion names it (load_state_dict)."""

    learning_rate: float
    minimum_learning_rate: float
    warmup_iterations: float
    """Megatron's lr_warmup_steps: samples, despite its message's name."""
    total_number_of_iterations: int
    """Megatron's lr_decay_steps (samples)."""
    learning_rate_decay_style: str
    start_weight_decay: float
    end_weight_decay: float
    total_number_of_weight_decay_iterations: int
    weight_decay_incr_style: str
    given: dict = field(default_factory=dict, compare=False, hash=False)
    """The run's own values of the fields that make these (train_iters, global_batch_size, lr, ...), for a fix."""

    @classmethod
    def of(cls, a) -> Optional["Schedule"]:
        """From Megatron's args (a checkpoint's, or one shaped like them); None for a sample-based run or args that
        do not say."""
        if not getattr(a, "train_iters", None) or not hasattr(a, "global_batch_size"):
            return None
        gbs = a.global_batch_size
        decay = (getattr(a, "lr_decay_iters", None) or a.train_iters) * gbs
        fraction = getattr(a, "lr_warmup_fraction", None)
        start = getattr(a, "start_weight_decay", None)
        end = getattr(a, "end_weight_decay", None)
        given = {k: getattr(a, k, None) for k in GIVEN}
        return cls(learning_rate=a.lr, minimum_learning_rate=a.min_lr,
                   warmup_iterations=fraction * decay if fraction is not None else a.lr_warmup_iters * gbs,
                   total_number_of_iterations=decay, learning_rate_decay_style=a.lr_decay_style,
                   start_weight_decay=a.weight_decay if start is None else start,
                   end_weight_decay=a.weight_decay if end is None else end,
                   total_number_of_weight_decay_iterations=a.train_iters * gbs,
                   weight_decay_incr_style=getattr(a, "weight_decay_incr_style", "constant"), given=given)

    def differences(self, other: "Schedule") -> list[tuple[str, object, object]]:
        """(name, this value, the other's) wherever Megatron's assertion would fire."""
        return [(f.name.replace("_", " "), getattr(self, f.name), getattr(other, f.name)) for f in fields(self)
                if f.compare and getattr(self, f.name) != getattr(other, f.name)]


def read_saved_schedule(iter_dir: Path) -> Optional[Schedule]:
    """The schedule of a Megatron distributed checkpoint's run; None where its common state cannot be read here
    (then Megatron's own check answers on the ranks)."""
    return Schedule.of(read_saved(iter_dir)[1])

"""A resume keeps the learning-rate schedule its checkpoint trained with, or says which one wins, before it starts.

Megatron 0.19.2 compares the scheduler state it loads with the one the run builds (OptimizerParamScheduler.
load_state_dict) and asserts on every rank where they differ, after the job has been allocated and the model built.
The usual way there: a run that finished (or a checkpoint to train on from) relaunched with a larger
train.train_iters, which moves the decay's end and the weight-decay steps. Here the same comparison runs on the
login node (launcher/records/checkpoint_schedule.py) and a difference is one line naming both fixes: keep the
checkpoint's value, or let the new schedule win with Megatron's --override-opt_param-scheduler (the learning rate
then follows the new schedule from the resumed iteration on). A run that sets those flags itself, or loads no
optimizer state, is left to them.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

from launcher.config.schema import RunConfig
from launcher.errors import ConfigError
from launcher.plan.resume_buckets import user_sets
from launcher.records.checkpoint_schedule import GIVEN, Schedule

# flags that decide the comparison themselves, or change a scheduler value our fields do not show ({flag: dest})
SCHEDULE_FLAGS = {"--override-opt_param-scheduler": "override_opt_param_scheduler",
                  "--use-checkpoint-opt_param-scheduler": "use_checkpoint_opt_param_scheduler",
                  "--finetune": "finetune", "--no-load-optim": "no_load_optim", "--lr-decay-iters": "lr_decay_iters",
                  "--lr-warmup-fraction": "lr_warmup_fraction", "--start-weight-decay": "start_weight_decay",
                  "--end-weight-decay": "end_weight_decay", "--weight-decay-incr-style": "weight_decay_incr_style",
                  "--train-samples": "train_samples", "--lr-decay-samples": "lr_decay_samples"}
# the field a user changes to move each value (global batch first: it scales the three counted in samples)
FIELD = {"learning rate": "train.lr", "minimum learning rate": "train.min_lr",
         "warmup iterations": "train.lr_warmup_iters", "total number of iterations": "train.train_iters",
         "learning rate decay style": "train.lr_decay_style", "start weight decay": "train.weight_decay",
         "end weight decay": "train.weight_decay", "total number of weight decay iterations": "train.train_iters"}
OVERRIDE = "'megatron.raw=[--override-opt_param-scheduler]'"


def this_runs_schedule(cfg: RunConfig) -> Optional[Schedule]:
    """The schedule this run's train.* fields give (each of GIVEN is a train field of the same name)."""
    return Schedule.of(SimpleNamespace(**{k: getattr(cfg.train, k) for k in GIVEN}))


def check_schedule(cfg: RunConfig, saved: Optional[Schedule], where: str) -> None:
    """Refuse a resume whose schedule Megatron would assert on; `where` names the checkpoint."""
    ours = this_runs_schedule(cfg)
    if saved is None or ours is None or user_sets(cfg, SCHEDULE_FLAGS):
        return
    diffs = ours.differences(saved)
    if not diffs:
        return
    name, mine, theirs = diffs[0]
    gbs = saved.given.get("global_batch_size")
    field = "train.global_batch_size" if gbs is not None and gbs != cfg.train.global_batch_size else FIELD[name]
    key = field.split(".", 1)[1]
    keep = saved.given.get(key)
    value = getattr(cfg.train, key)
    raise ConfigError(field, value, f"the checkpoint it resumes ({where}) was trained with another schedule "
                      f"(Megatron's {name}: {theirs} there, {mine} here), which Megatron's scheduler refuses on "
                      "every rank after the job starts",
                      (f"keep {field}={keep} to continue that schedule, or " if keep is not None else "")
                      + f"add {OVERRIDE} to follow this run's schedule from the resumed iteration on")

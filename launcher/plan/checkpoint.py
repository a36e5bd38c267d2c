"""Checkpoints and resume as Megatron flags: where a run saves, how often, whether in the background, and
which checkpoint it starts from. No side effects: the run directory's checkpoints were already read
(launcher/run/resume.py) and arrive here as a ResumePoint.

  save      train.save, else <run_dir>/checkpoints (every run saves unless train.checkpoint.enabled=false)
  interval  train.save_interval, else min(1000, max(100, train_iters // 10)); Megatron also saves at the end
  load      the save directory when it holds a complete checkpoint (a relaunch continues), else train.load
            (another run's checkpoints); in the save directory a newer
            but incomplete checkpoint there is skipped with --ckpt-step (Megatron would read the tracker file)
  buckets   a resume cuts its gradient buckets as its checkpoint's run did (launcher/plan/resume_buckets.py)
  async     GPUs only: --async-save --async-strategy mcore --use-persistent-ckpt-worker (validate_args turns
            --async-save off without the persistent worker; the nvrx strategy needs nvidia-resiliency-ext)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from launcher.config.schema import RunConfig
from launcher.errors import ConfigError
from launcher.plan.resolve import Resolved
from launcher.plan.resume_buckets import bucket_flags
from launcher.records.checkpoint_buckets import BucketCut, read_saved_buckets
from launcher.records.checkpoint_dir import TRACKER, tracker_iteration
from launcher.records.checkpoint_schedule import Schedule, read_saved_schedule
from launcher.plan.resume_schedule import check_schedule
from launcher.plan.resume_shape import check_shape
from launcher.records.checkpoint_model import read_saved_model
from launcher.plan.tuned import async_saves

CHECKPOINT_SUBDIR = "checkpoints"
SMOKE_ITERS = 100  # at most this many iterations: a smoke run (short collective timeout)


@dataclass(frozen=True)
class ResumePoint:
    """The newest complete checkpoint of a directory, as launcher/run/resume.py found it."""

    directory: str
    iteration: int
    tracker: Optional[int]
    """What latest_checkpointed_iteration.txt says (None: missing or unreadable)."""
    skipped: tuple[str, ...] = ()
    """Newer iter_* directories that are incomplete (a save that was killed)."""
    buckets: Optional[BucketCut] = None
    """How its run cut the gradient buckets its optimizer state follows (None: not kept per bucket, or unread)."""
    schedule: Optional[Schedule] = None
    """The learning-rate schedule its run trained with (None: unread)."""
    model: Optional[dict] = None
    """Its run's model-shaping Megatron arguments (launcher/records/checkpoint_model.py; None: unread)."""


@dataclass(frozen=True)
class Checkpointing:
    """What the run does with checkpoints (plan.json's "checkpoint")."""

    save: Optional[str] = None
    interval: Optional[int] = None
    load: Optional[str] = None
    ckpt_step: Optional[int] = None
    async_save: bool = False
    keep_last: Optional[int] = None
    exit_signal_handler: bool = False
    resumed_from: Optional[int] = None
    """Iteration of the checkpoint this run resumes from (None: fresh start or train.load)."""
    bucket_flags: tuple[str, ...] = ()
    """--ddp-bucket-size/--ddp-num-buckets of the checkpoint resumed from (launcher/plan/resume_buckets.py)."""
    notes: tuple[str, ...] = ()


def default_interval(train_iters: int) -> int:
    """A tenth of the run, at least 100 iterations (saves cost seconds to minutes) and at most 1000 (at a
    few seconds per step a preemption then loses under an hour)."""
    return min(1000, max(SMOKE_ITERS, train_iters // 10))


def save_dir(cfg: RunConfig, run_dir: Optional[Path]) -> Optional[str]:
    """The directory this run saves to; None when it saves nothing."""
    if not cfg.train.checkpoint.enabled:
        return None
    if cfg.train.save:
        return cfg.train.save
    return str((run_dir / CHECKPOINT_SUBDIR).absolute()) if run_dir is not None else None


def resume_point(cfg: RunConfig, run_dir: Optional[Path], resume: Optional[ResumePoint]) -> Optional[ResumePoint]:
    """The checkpoint this run resumes from: its own save directory's newest (found by launcher/run/resume.py), when
    it saves and resumes at all; None for a fresh start or an explicit train.load."""
    return resume if save_dir(cfg, run_dir) is not None and cfg.train.checkpoint.resume else None


def other_load(cfg: RunConfig, save: Optional[str]) -> bool:
    """Whether train.load names another directory than the run's own save directory (which is empty at a fresh
    start, on purpose: the save=load idiom)."""
    load = cfg.train.load
    return bool(load) and (save is None or Path(load).absolute() != Path(save).absolute())


def point_at(directory: Path, iteration: int, tracker: Optional[int], skipped: tuple[str, ...] = ()) -> ResumePoint:
    """The checkpoint of `iteration` in `directory` with what its run saved: bucket cut, schedule and model, from
    its common state (read once per directory, launcher/records/checkpoint_buckets.py read_saved)."""
    it = directory / f"iter_{iteration:07d}"
    return ResumePoint(directory=str(directory), iteration=iteration, tracker=tracker, skipped=skipped,
                       buckets=read_saved_buckets(it), schedule=read_saved_schedule(it), model=read_saved_model(it))


def loaded_point(cfg: RunConfig, save: Optional[str]) -> Optional[ResumePoint]:
    """The checkpoint train.load's tracker names, where this machine sees it and it is another run's (a resume of
    its own finds its newest, launcher/run/resume.py); None otherwise."""
    if not other_load(cfg, save):
        return None
    step = tracker_iteration(Path(cfg.train.load))
    return point_at(Path(cfg.train.load), step, step) if step is not None else None


def saved_buckets(cfg: RunConfig, run_dir: Optional[Path], resume: Optional[ResumePoint]) -> Optional[BucketCut]:
    """The bucket cut of the checkpoint this run loads: its own newest when it resumes, else train.load's."""
    point = resume_point(cfg, run_dir, resume) or loaded_point(cfg, save_dir(cfg, run_dir))
    return point.buckets if point is not None else None


def check_load(cfg: RunConfig) -> None:
    """train.load must hold a checkpoint where this machine can see it: without its tracker file Megatron 0.19.2
    warns and starts from random weights (checkpointing.py _load_base_checkpoint), a silent fresh start. A path
    that does not exist here on a Slurm or container run may live on the cluster: the ranks check it there
    (recipes/checkpoint.py check_paths)."""
    path = Path(cfg.train.load)
    if not path.exists() and cfg.cluster.executor != "local":
        return
    if (path / TRACKER).is_file():
        return
    raise ConfigError("train.load", cfg.train.load, f"holds no Megatron checkpoint ({TRACKER} missing), so Megatron "
                      "would start from random weights", "point it at a run's checkpoints directory "
                      "(<run_dir>/checkpoints), or leave it unset for a fresh start")


def distributed_timeout(cfg: RunConfig, res: Resolved) -> int:
    """Minutes before a collective gives up: short where a hang should end a smoke run quickly, long enough
    for a real run's synchronous checkpoint save (all ranks wait on the slowest writer)."""
    if cfg.train.distributed_timeout_minutes is not None:
        return cfg.train.distributed_timeout_minutes
    return 5 if res.device == "cpu" or cfg.train.train_iters <= SMOKE_ITERS else 30


def checkpointing(cfg: RunConfig, res: Resolved, run_dir: Optional[Path] = None,
                  resume: Optional[ResumePoint] = None) -> Checkpointing:
    """What to save and load. Without a run directory (tests, tools) only explicit train.save/load count."""
    ck, t = cfg.train.checkpoint, cfg.train
    save = save_dir(cfg, run_dir)
    notes: list[str] = []
    load, step, resumed, buckets = t.load, None, None, ()
    # the run's own newest checkpoint wins over train.load: a relaunch continues, it does not start over
    resume = resume_point(cfg, run_dir, resume)
    if resume is not None:
        load, resumed = resume.directory, resume.iteration
        notes.append(f"resuming from {resume.directory} iteration {resume.iteration}")
        for skipped in resume.skipped:
            notes.append(f"warning: skipping incomplete checkpoint {skipped}")
        if resume.tracker != resume.iteration:
            step = resume.iteration  # Megatron reads the tracker file unless told the step
    elif other_load(cfg, save):
        check_load(cfg)
    point = resume or loaded_point(cfg, save)  # the checkpoint loaded: this run's own, or another run's
    if point is not None:
        where = f"{point.directory} iteration {point.iteration}" if resume else f"train.load={t.load}"
        check_shape(cfg, point.model, where, own=resume is not None)
        check_schedule(cfg, point.schedule, where)
        flags, why = bucket_flags(cfg, res, point.buckets)
        buckets = tuple(flags)
        notes += [why] if why else []
    if ck.init_from and resumed is None:
        notes.append(f"starting from the weights in {ck.init_from} (train.checkpoint.init_from: model only, "
                     "fresh optimizer, iteration 0)")
    if save is None:
        return Checkpointing(load=load, bucket_flags=buckets, notes=tuple(notes))
    if load is None and ck.resume:
        # an empty directory: Megatron starts fresh; a requeued Slurm job (same script) finds its checkpoints
        load = save
    interval = t.save_interval or default_interval(t.train_iters)
    return Checkpointing(save=save, interval=interval, load=load, ckpt_step=step,
                         async_save=async_saves(cfg, res.device), bucket_flags=buckets,
                         keep_last=ck.keep_last, exit_signal_handler=ck.exit_signal_handler, resumed_from=resumed,
                         notes=tuple(notes))


def checkpoint_flags(c: Checkpointing) -> list[str]:
    """Megatron flags for the checkpointing decided above."""
    argv: list[str] = []
    if c.save is not None:
        argv += ["--save", c.save, "--save-interval", str(c.interval)]
    if c.load is not None:
        argv += ["--load", c.load]
    if c.ckpt_step is not None:
        argv += ["--ckpt-step", str(c.ckpt_step)]
    argv += list(c.bucket_flags)
    if c.async_save:
        argv += ["--async-save", "--async-strategy", "mcore", "--use-persistent-ckpt-worker"]
    if c.exit_signal_handler:
        argv.append("--exit-signal-handler")
    return argv


def describe(c: Checkpointing) -> str:
    """One line for the launch: where and how often, or that nothing is saved."""
    if c.save is None:
        start = f"; starts from {c.load}" if c.load else ""
        return f"checkpoints: none (train.checkpoint.enabled=false){start}"
    keep = f"keeping the last {c.keep_last}" if c.keep_last else "keeping all"
    how = "async" if c.async_save else "synchronous"
    start = (f"resumes from iteration {c.resumed_from}" if c.resumed_from is not None
             else f"starts from {c.load}" if c.load and c.load != c.save else "fresh start")
    return f"checkpoints: {c.save} every {c.interval} iterations and at the end ({how}, {keep}); {start}"

"""Rules of the training run itself: sequence vs positions, the LR schedule, the profiling window, and what
a CPU run can do. One function each, raising ConfigError(field, value, rule, fix)."""
from __future__ import annotations

from launcher.config.schema import RunConfig
from launcher.errors import ConfigError
from launcher.plan.resolve import Resolved
from launcher.records.steady import iteration_window


def check_seq_vs_positions(cfg: RunConfig, res: Resolved) -> None:
    seq, maxpos = cfg.train.seq_length, cfg.model.max_position_embeddings
    if seq > maxpos:
        raise ConfigError("train.seq_length", seq, f"exceeds model.max_position_embeddings={maxpos}",
                          f"lower train.seq_length or set model.max_position_embeddings={seq}")


def check_lr_schedule(cfg: RunConfig, res: Resolved) -> None:
    """OptimizerParamScheduler asserts warmup < decay steps (decay = train_iters) inside pretrain(),
    after the model is built; validate_args does not check it."""
    t = cfg.train
    if t.lr_warmup_iters >= t.train_iters:
        raise ConfigError("train.lr_warmup_iters", t.lr_warmup_iters,
                          f"warm-up must be shorter than train.train_iters={t.train_iters} (Megatron decays over "
                          "the remaining steps)", f"set train.lr_warmup_iters below {t.train_iters}")


def check_kernel_profile(cfg: RunConfig, res: Resolved) -> None:
    """train.kernel_profile is START:END whole iterations inside the run (recipes/profiling.py stops the
    profiler at the first forward of END+1, or when training ends)."""
    text = cfg.train.kernel_profile
    if not text:
        return
    fix = f"write START:END with 1 <= START <= END <= train.train_iters={cfg.train.train_iters}, e.g. 5:6"
    try:
        _, end = iteration_window(text)
    except ValueError:
        raise ConfigError("train.kernel_profile", text, "START:END iterations", fix) from None
    if end > cfg.train.train_iters:
        raise ConfigError("train.kernel_profile", text, "the window must lie inside the run", fix)


def check_cpu_run(cfg: RunConfig, res: Resolved) -> None:
    """What the CPU (gloo, local spec) path cannot do."""
    if res.device != "cpu":
        return
    if res.transformer_impl != "local":
        raise ConfigError("model.transformer_impl", res.transformer_impl, "a CPU run needs the local spec",
                          "set model.transformer_impl=auto (or local)")
    if cfg.parallel.tp > 1 or cfg.parallel.cp > 1:
        raise ConfigError("parallel.tp" if cfg.parallel.tp > 1 else "parallel.cp",
                          max(cfg.parallel.tp, cfg.parallel.cp), "CPU runs support data, expert and pipeline "
                          "parallelism only (torch norms reject sequence parallelism)", "set it to 1 on CPU")
    if cfg.parallel.use_megatron_fsdp:
        raise ConfigError("parallel.use_megatron_fsdp", True, "Megatron FSDP needs CUDA", "set it to false on CPU")


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def check_loggers(cfg: RunConfig, res: Resolved) -> None:
    """A logger asked for must be importable where the ranks run: Megatron crashes without wandb (`No module
    named 'wandb'`) and silently writes no TensorBoard events without tensorboard (global_vars.py only warns).
    Judged on this node when the ranks run this interpreter (local runs; Slurm without a container image)."""
    c = cfg.cluster
    if c.executor == "container" or getattr(c, "container_image", None):
        return  # the image's packages, not this node's
    for field, value, module in (("train.tensorboard_dir", cfg.train.tensorboard_dir, "tensorboard"),
                                 ("train.wandb_project", cfg.train.wandb_project, "wandb")):
        if value and not _installed(module):
            raise ConfigError(field, value, f"needs the {module} package, which is not installed here",
                              f"pip install -e '.[logging]' (or unset {field})")


def check_checkpoint(cfg: RunConfig, res: Resolved) -> None:
    """Every combination of train.save, save_interval and checkpoint.* that Megatron would meet with a bare
    AssertionError (save without a positive interval) or a hang (async save on gloo) stops here."""
    t, ck = cfg.train, cfg.train.checkpoint
    if t.save_interval is not None and t.save_interval <= 0:
        raise ConfigError("train.save_interval", t.save_interval, "must be a positive number of iterations",
                          "set it to e.g. 1000, or null for the default (a tenth of the run, 100 to 1000)")
    if not ck.enabled and (t.save is not None or t.save_interval is not None):
        field = "train.save" if t.save is not None else "train.save_interval"
        raise ConfigError(field, getattr(t, field.split(".")[1]), "sets checkpoints while "
                          "train.checkpoint.enabled=false", f"drop {field} or set train.checkpoint.enabled=true")
    if ck.keep_last is not None and ck.keep_last < 1:
        raise ConfigError("train.checkpoint.keep_last", ck.keep_last, "must keep at least one checkpoint",
                          "set it to 1 or more, or null to keep all")
    if ck.async_save and res.device == "cpu":
        raise ConfigError("train.checkpoint.async_save", True, "async save hangs on CPU (gloo) runs",
                          "set train.checkpoint.async_save=null (off on CPU)")
    if ck.async_save and cfg.parallel.use_megatron_fsdp:
        raise ConfigError("train.checkpoint.async_save", True, "needs the torch_dist format; Megatron FSDP "
                          "saves fsdp_dtensor", "set train.checkpoint.async_save=null")
    if t.distributed_timeout_minutes is not None and t.distributed_timeout_minutes < 1:
        raise ConfigError("train.distributed_timeout_minutes", t.distributed_timeout_minutes,
                          "must be at least 1 minute", "set it to 1 or more, or null (5 smoke/CPU, 30 real runs)")


def check_restarts(cfg: RunConfig, res: Resolved) -> None:
    """launch.max_restarts relaunches from the newest complete checkpoint: without checkpoints it would start
    the run over (launcher/run/restart.py)."""
    n, ck = cfg.launch.max_restarts, cfg.train.checkpoint
    if n < 0:
        raise ConfigError("launch.max_restarts", n, "must be 0 (never) or a positive count", "set it to 0 or more")
    if n and not (ck.enabled and ck.resume):
        off = "train.checkpoint.enabled" if not ck.enabled else "train.checkpoint.resume"
        raise ConfigError("launch.max_restarts", n, f"restarts resume from checkpoints, and {off}=false",
                          f"set {off}=true, or launch.max_restarts=0")


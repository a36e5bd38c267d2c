"""Training entry, run on every rank by torchrun:

    python -m torch.distributed.run --nproc-per-node N -m recipes.pretrain <megatron argv>

The argv is exactly the launcher's argv.txt. Megatron parses and validates it (its own parser, its
own validator), then megatron.training.pretrain runs the loop.
"""
from __future__ import annotations

import logging
import os
import sys
import time


def _use_prebuilt_dataset_helpers() -> None:
    """The megatron-core wheel ships the compiled dataset helpers but no Makefile, and
    initialize_megatron runs `make` on them (exit 1). Check the shipped module imports instead."""
    import megatron.core.datasets.utils as dsu

    def compile_helpers():
        try:
            import megatron.core.datasets.helpers_cpp  # noqa: F401
        except ImportError as e:
            raise RuntimeError(f"megatron-core's compiled dataset helpers do not import here: {e}") from None
    dsu.compile_helpers = compile_helpers


def _no_one_logger_without_its_package(parser):
    """Megatron enables its E2E metrics logger (one_logger, an NVIDIA-internal package) by default and, when
    the package is missing, prints a warning with an internal wiki link on every run (while it sets its
    globals, inside parse_and_validate_args). It cannot log without the package, so the default is off here
    then: nothing changes but the warning, and the argv (plan.json, argv.txt, the golden argv) stays ours."""
    import importlib.util

    if importlib.util.find_spec("one_logger") is None:
        parser.set_defaults(enable_one_logger=False)
    return parser


def _logging_dirs(args) -> None:
    """train.tensorboard_dir / wandb_*: relative directories are under the run directory, and W&B gets a
    directory and a name there (Megatron's defaults are <--save>/wandb, a TypeError without --save)."""
    run_dir = os.environ.get("MOE_RUN_DIR", ".")
    if args.tensorboard_dir and not os.path.isabs(args.tensorboard_dir):
        args.tensorboard_dir = os.path.join(run_dir, args.tensorboard_dir)
    if getattr(args, "wandb_project", None):
        args.wandb_save_dir = os.path.join(run_dir, args.wandb_save_dir or "wandb")  # an absolute one stays
        args.wandb_exp_name = args.wandb_exp_name or os.path.basename(os.path.abspath(run_dir))


def _modelopt_hooks(args, config):
    """quant.qat and distill (MOE_QAT, MOE_DISTILL from the launcher): nvidia-modelopt hooked into the model
    build, checkpoints and loss (recipes/qat.py, recipes/distill.py). Returns the forward step to train with."""
    from recipes import data, distill, qat

    qspec = qat.spec_from_env()
    if qspec is not None:
        qat.install(args, config, qspec)
    dspec = distill.spec_from_env()
    if dspec is None:
        return data.forward_step
    problem = distill.check(args, dspec)  # the teacher checkpoint as this node sees it, before anything is built
    if problem:
        raise ValueError(problem)
    distill.install(args, config, dspec)
    return distill.forward_step


def _debug_loggers() -> None:
    """MOE_DEBUG_LOGGERS="name,name": those loggers at DEBUG, each line with its time, on stderr (train.log). For
    where a checkpoint save spends its time: megatron.training.checkpointing and megatron.core.dist_checkpointing
    log, at DEBUG only, the state-dict preparation, the save plan, the device-to-host copy and the finalization."""
    for name in filter(None, (n.strip() for n in os.environ.get("MOE_DEBUG_LOGGERS", "").split(","))):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        log = logging.getLogger(name)
        log.setLevel(logging.DEBUG)
        log.addHandler(handler)
        log.propagate = False  # once, not again through the root logger's handler


def main(argv: list[str]) -> int:
    from recipes import lifecycle

    lifecycle.die_with_parent()  # torchrun killed -> this rank killed (recipes/lifecycle.py)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    _debug_loggers()
    from recipes import cpu_compat

    on_cpu = cpu_compat.apply_torch()  # before megatron is imported; no-op on GPUs
    from recipes import distill, megatron_import, qat

    # Megatron's import-time modelopt hooks are dead in the wheel: modelopt only loads where the run uses it
    megatron_import.load_megatron_training(qat.spec_from_env() is not None or distill.spec_from_env() is not None)
    from megatron.core.enums import ModelType
    from megatron.training import get_args, pretrain
    from megatron.training.argument_utils import gpt_config_from_args, pretrain_cfg_container_from_args
    from megatron.training.arguments import parse_and_validate_args

    if on_cpu:
        cpu_compat.apply_megatron()
    cpu_compat.apply_torch_adam()  # checkpoint resume with torch's Adam (no TE/Apex): see cpu_compat
    _use_prebuilt_dataset_helpers()
    from recipes import backends, data

    sys.argv = [sys.argv[0], *argv]  # Megatron's parser reads sys.argv: give it exactly our argv
    args = parse_and_validate_args(extra_args_provider=_no_one_logger_without_its_package)
    if args.rank == 0:
        from recipes import runinfo

        runinfo.write()  # versions.json in MOE_RUN_DIR (set by the launcher's executor): what this run ran on
    try:
        backends.check_all(args)
        from recipes import preflight

        # the doctor's machine checks (deep_ep signatures, NVLink, NVSHMEM, HybridEP JIT, GPU arch) before the
        # model is built; on every rank (each node has its own GPUs and environment) so none builds alone
        preflight.run(args)
    except backends.BackendError as e:
        if args.rank == 0:
            print(f"recipes.pretrain: error: {e}", file=sys.stderr, flush=True)
        return 3
    problem = data.check_files(args)  # every rank reads its own view of the files; rank 0 says why
    if problem:
        if args.rank == 0:
            print(f"recipes.pretrain: error: {problem}", file=sys.stderr, flush=True)
        return 3
    _logging_dirs(args)
    if args.transformer_impl == "local":
        from recipes import moe_keys

        # MoE checkpoints keyed as TE runs key them (recipes/moe_keys.py), unless resuming an old local-layout one
        moe_keys.for_checkpoint(args.load, args.ckpt_step, args.pretrained_checkpoint)
    from recipes import experts

    impl = experts.apply()  # MOE_GROUPED_GEMM_IMPL (model.moe_grouped_gemm_impl): before the model is built
    from recipes import checkpoint

    checkpoint.stamp(args, impl)  # saved with every checkpoint: which expert layout wrote its optimizer state
    try:
        checkpoint.check_paths(args)
        checkpoint.check_resume(args, impl)
    except checkpoint.CheckpointError as e:
        if args.rank == 0:
            print(f"recipes.pretrain: error: {e}", file=sys.stderr, flush=True)
        return 3
    if args.rank == 0 and impl != "te":
        print(f"recipes.pretrain: expert GEMMs through {impl} grouped_mm (recipes/experts.py)", flush=True)
    from recipes import loss

    if loss.apply() and args.rank == 0:  # MOE_CROSS_ENTROPY (train.cross_entropy_fusion_impl): before the model
        print("recipes.pretrain: language-model loss without an FP32 copy of the logits (recipes/loss.py)", flush=True)
    config = pretrain_cfg_container_from_args(args, gpt_config_from_args(args))
    try:
        forward_step = _modelopt_hooks(args, config)
    except ValueError as e:
        if args.rank == 0:
            print(f"recipes.pretrain: error: {e}", file=sys.stderr, flush=True)
        return 3
    from recipes import retention

    keep_last = retention.start(args.save, args.rank)  # train.checkpoint.keep_last while the run goes on
    t0 = time.time()
    try:
        pretrain(config, data.datasets_provider, ModelType.encoder_or_decoder, forward_step)
    except BaseException as e:  # Megatron also exits from inside: signals, exit intervals, checkpoint issues
        if not (isinstance(e, SystemExit) and e.code in (0, None)):  # a clean exit from inside goes on below
            if lifecycle.abort_async_saves():  # else the exit would wait forever for the dead writer
                print(f"recipes.pretrain: rank {args.rank}: the checkpoint writer had died (training ended by "
                      f"{type(e).__name__}); its save stays incomplete", file=sys.stderr, flush=True)
            raise
    if keep_last is not None:
        keep_last.set()  # the launcher prunes what the last save left
    from recipes import profiling

    profiling.finish()  # a kernel_profile window that training ended inside
    # completed steps: samples consumed / samples per step (no batch-size ramp-up in these recipes)
    done = get_args().consumed_train_samples // args.global_batch_size
    if args.rank == 0:
        print(f"recipes.pretrain: done, iteration {done}/{args.train_iters}, {time.time() - t0:.1f}s "
              f"({'cpu' if on_cpu else 'cuda'}, world {args.world_size})", flush=True)
    from recipes.lifecycle import release_process_group

    release_process_group()
    if done < args.train_iters:
        return 4  # Megatron stopped early (exit interval, signal) but returned normally
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    from recipes.lifecycle import recorded

    raise SystemExit(recorded(main)(sys.argv[1:]))  # an exception: its traceback in torchrun's error file too

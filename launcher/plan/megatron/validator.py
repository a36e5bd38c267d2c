"""Megatron-Core's own validator on our argv, at the real world size, on a machine without GPUs.

Three of Megatron's checks run here, in this order:
1. its argparse parser (flag names, types, choices);
2. `validate_args` (batch, VPP/layout, CP, MoE/EP rules) with args.world_size set to the job's;
3. `core_transformer_config_from_args` -> `TransformerConfig.__post_init__` (heads % TP, layout layer
   counts, recompute and router rules), then `initialize_model_parallel` over torch's fake process
   group (the world % (TP*PP*CP) and world % (ETP*EP*PP) grid checks), torn down afterwards.
Megatron reads a few hardware facts while validating (device arch for TP/CP > 1, capability for
grouped GEMM); on a CPU-only machine they are answered for the target GPU (hardware.compute_capability:
9.0 on Hopper, 10.0 on Blackwell). It also
asks which Transformer Engine is installed (version checks, fused RoPE and permute kernels present);
where TE is not installed (a login node) and the argv asks for it, that is answered for the TE the
project pins for GPUs (pyproject's `gpu` extra), with placeholders that are never called.
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from typing import Iterator, Optional

from launcher.errors import ConfigError

HOPPER = (9, 0)  # H100/H200: the capability when a caller names none (hardware.compute_capability does)
TARGET_TE_VERSION = "2.20.2"  # pyproject.toml: gpu = ["transformer-engine[pytorch]==2.20.2"]
# TE kernels whose presence (not None) TransformerConfig checks: module -> names
_TE_KERNELS = {
    "megatron.core.models.common.embeddings.rope_utils": ("fused_apply_rotary_pos_emb",
                                                          "fused_apply_rotary_pos_emb_thd"),
    "megatron.core.transformer.moe.moe_utils": ("fused_permute", "fused_permute_with_probs", "fused_unpermute",
                                                "fused_sort_chunks_by_index",
                                                "fused_sort_chunks_by_index_with_probs"),
}


def _te_placeholder(*args, **kwargs):
    raise RuntimeError("Transformer Engine placeholder used during offline validation")


@contextlib.contextmanager
def _target_te(argv: list[str]) -> Iterator[None]:
    """Stand in for the pinned TE when the argv asks for TE and this machine has none."""
    import importlib
    import importlib.util

    wants_te = "--transformer-impl" in argv and argv[argv.index("--transformer-impl") + 1] == "transformer_engine"
    if not wants_te or importlib.util.find_spec("transformer_engine") is not None:
        yield
        return
    from packaging.version import Version
    import megatron.core.utils as mutils

    saved_version = mutils._te_version
    saved: list[tuple[object, str, object]] = []
    mutils._te_version = Version(TARGET_TE_VERSION)  # get_te_version() returns this cache
    for module_name, names in _TE_KERNELS.items():
        module = importlib.import_module(module_name)
        for name in names:
            if getattr(module, name, None) is None:
                saved.append((module, name, getattr(module, name, None)))
                setattr(module, name, _te_placeholder)
    try:
        yield
    finally:
        mutils._te_version = saved_version
        for module, name, value in saved:
            setattr(module, name, value)


@contextlib.contextmanager
def _target_gpu(env: dict[str, str], capability: tuple[int, int]) -> Iterator[None]:
    """Answer Megatron's hardware questions for the target GPU when this machine has none, and expose
    the run's environment (validate_args asserts CUDA_DEVICE_MAX_CONNECTIONS for TP/CP > 1)."""
    import torch

    from launcher.plan.megatron.training_import import load

    load()  # without modelopt's dead hooks (training_import.py)
    import megatron.training.arguments as margs

    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    patched = not torch.cuda.is_available()
    if patched:
        saved = (margs.get_device_arch_version, torch.cuda.get_device_capability)
        margs.get_device_arch_version = lambda: capability[0]
        torch.cuda.get_device_capability = lambda *a, **k: capability
    try:
        yield
    finally:
        if patched:
            margs.get_device_arch_version, torch.cuda.get_device_capability = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _grid(args) -> None:
    """initialize_model_parallel over a fake process group of args.world_size ranks."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from megatron.core import parallel_state as ps

    if dist.is_initialized():
        return  # a real job already owns the default group; the rules in validate.py still ran
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=args.world_size)
    try:
        ps.initialize_model_parallel(
            tensor_model_parallel_size=args.tensor_model_parallel_size,
            pipeline_model_parallel_size=args.pipeline_model_parallel_size,
            virtual_pipeline_model_parallel_size=args.virtual_pipeline_model_parallel_size,
            context_parallel_size=args.context_parallel_size,
            expert_model_parallel_size=args.expert_model_parallel_size,
            expert_tensor_parallel_size=args.expert_tensor_parallel_size,
            create_gloo_process_groups=False,
        )
    finally:
        ps.destroy_model_parallel()
        dist.destroy_process_group()


def flops_per_sequence(args) -> float:
    """Megatron's own FLOP count (megatron.training.training.num_floating_point_operations, the formula
    behind its logged TFLOP/s/GPU) for one sequence of args.seq_length tokens, forward and backward.
    The benchmark applies the same number to the Hugging Face peer, so both sides share one formula."""
    from megatron.core.tokenizers.utils.build_tokenizer import vocab_size_with_padding

    from launcher.plan.megatron.training_import import load

    load()  # without modelopt's dead hooks (training_import.py)
    from megatron.training.training import num_floating_point_operations

    if getattr(args, "padded_vocab_size", None) is None:  # set by the tokenizer at start-up in a real run
        args.padded_vocab_size = vocab_size_with_padding(args.vocab_size, args, logging_enabled=False)
    return float(num_floating_point_operations(args, 1))


def megatron_validate(argv: list[str], world_size: int, env: dict[str, str],
                      capability: tuple[int, int] = HOPPER, key_argv: Optional[list[str]] = None) -> dict:
    """Megatron's verdict on this argv: from the memo when the same argv, world size, environment, GPU and
    versions passed before (validate_cache.py: no Megatron import), else by running its checks. key_argv: the
    argv with this launch's own paths (the run directory) written generically, so a new run directory with the
    same layout reuses the verdict; validate_args reads no file behind those paths."""
    from launcher.plan.megatron import validate_cache

    key = validate_cache.cache_key(key_argv or argv, world_size, env, capability)
    derived = validate_cache.read(key)
    if derived is None:
        derived = _megatron_validate(argv, world_size, env, capability)
        validate_cache.write(key, derived)
    return derived


def _megatron_validate(argv: list[str], world_size: int, env: dict[str, str], capability: tuple[int, int]) -> dict:
    """Run Megatron's checks as the target GPU (compute capability, e.g. (10, 0) on Blackwell) would see them;
    return a few derived facts, or raise ConfigError with Megatron's words."""
    from launcher.plan.megatron.parser import parser

    p = parser()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            args, unknown = p.parse_known_args(argv)
        except Exception as e:  # noqa: BLE001 - argparse.ArgumentError: bad value or choice
            hit = field_in(str(e), argv)
            if hit:
                raise ConfigError(hit[0], hit[1], f"Megatron's parser rejected it: {e}", f"change {hit[0]}") from None
            raise ConfigError("megatron argv", " ".join(argv[:4]) + " ...", f"Megatron's parser rejected it: {e}",
                              "fix the field or megatron.extra entry behind that flag") from None
        if unknown:
            from launcher.plan.megatron.parser import unknown_flag_error
            raise unknown_flag_error("megatron argv", unknown[0])
        args.rank, args.world_size = 0, world_size
        args._is_global_batch_size_explicitly_specified = args.global_batch_size is not None
        from megatron.training.arguments import validate_args
        from megatron.training.argument_utils import core_transformer_config_from_args

        sink = io.StringIO()
        try:
            with _target_gpu(env, capability), _target_te(argv), contextlib.redirect_stdout(sink), \
                    contextlib.redirect_stderr(sink):
                validate_args(args, {})
                core_transformer_config_from_args(args)
                _grid(args)
                flops = flops_per_sequence(args) if args.vocab_size else None
            dp = args.data_parallel_size
            if args.global_batch_size % (args.micro_batch_size * dp):
                raise AssertionError(f"global batch size {args.global_batch_size} is not divisible by "
                                     f"micro batch size {args.micro_batch_size} x data parallel size {dp}")
        except (AssertionError, ValueError, RuntimeError, TypeError, KeyError, NotImplementedError) as e:
            raise _rejected(e, argv, world_size) from None
    return {"data_parallel_size": args.data_parallel_size,
            "virtual_pipeline_model_parallel_size": args.virtual_pipeline_model_parallel_size,
            "num_microbatches": args.global_batch_size // (args.micro_batch_size * args.data_parallel_size),
            "flops_per_sequence": flops}


def _source_line(e: BaseException) -> str:
    """The statement that raised inside Megatron (a bare `assert a <= b` says nothing in its message)."""
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    return (frames[-1].line or "") if frames else ""


def field_in(text: str, argv: list[str]) -> tuple[str, object] | None:
    """The first schema field behind a dest or flag that Megatron's message or statement names, with the
    value the argv gave it (True for a bare flag), e.g. "args.moe_router_topk" -> model.moe_router_topk."""
    import re

    from launcher.plan.megatron.parser import _options, field_of_dest

    for word in re.findall(r"--[a-z0-9-]+|[a-z][a-z0-9_]+", text):
        dest = _options()[word].dest if word.startswith("--") and word in _options() else word
        field = field_of_dest(dest)
        if not field:
            continue
        flags = [f for f in argv if f.startswith("--") and f in _options() and _options()[f].dest == dest]
        if not flags:
            continue
        i = argv.index(flags[0])
        value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else True
        return field, value
    return None


def _rejected(e: BaseException, argv: list[str], world_size: int) -> ConfigError:
    """Megatron's words, attributed to the field behind the flag they name where one does."""
    msg = " ".join(str(e).split()) or type(e).__name__
    statement = " ".join(_source_line(e).split())
    hit = field_in(f"{msg} {statement}", argv)
    rule = f"Megatron-Core rejected it at world size {world_size}: {msg}" + (
        f" ({statement})" if statement and statement not in msg else "")
    if hit:
        return ConfigError(hit[0], hit[1], rule, f"change {hit[0]}")
    return ConfigError("megatron", f"world_size={world_size}", f"Megatron-Core rejected the argv: {msg}",
                       "change the config field behind that flag (launch.megatron_validate=false "
                       "launch.dry_run=true writes the argv to inspect)")

"""Stop early, with a clear message, when a package the argv asks for is missing or incompatible.

Called on every rank after Megatron parsed the argv and before anything is built. There is no
fallback: a run that asked for DeepEP runs with DeepEP or does not start.
"""
from __future__ import annotations

import importlib
import inspect
from argparse import Namespace


class BackendError(RuntimeError):
    """A requested backend cannot run here."""


def _need(module: str, what: str, fix: str) -> object:
    try:
        return importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken build raising OSError / RuntimeError
        raise BackendError(f"{what} needs the '{module}' package, which cannot be imported here "
                           f"({type(e).__name__}: {e}). Fix: {fix}") from None


def check_transformer_engine(args: Namespace) -> None:
    if args.transformer_impl == "transformer_engine":
        _need("transformer_engine.pytorch", "--transformer-impl transformer_engine",
              "pip install -e '.[gpu]' (or use the container), or set model.transformer_impl=local")


def check_flex_backend(args: Namespace) -> None:
    if args.moe_token_dispatcher_type != "flex":
        return
    backend = args.moe_flex_dispatcher_backend
    fix = "use the project container (container/), which builds DeepEP, or dispatcher=alltoall"
    if backend == "deepep":
        _need("deep_ep", "dispatcher=deepep", fix)
    elif backend == "hybridep":
        mod = _need("deep_ep", "dispatcher=hybridep", fix)
        if not hasattr(mod, "HybridEPBuffer"):
            raise BackendError("dispatcher=hybridep needs deep_ep.HybridEPBuffer (DeepEP's hybrid-ep branch); "
                               f"the installed deep_ep has none. Fix: {fix}")
    elif backend == "ncclep":
        check_ncclep()


# keyword arguments megatron-core 0.19.2 passes to TE's ep_bootstrap (core/transformer/moe/fused_a2a.py)
MCORE_EP_BOOTSTRAP_KWARGS = {"num_experts", "max_tokens_per_rank", "recv_capacity_per_rank", "hidden_dim",
                             "max_num_sms", "zero_copy"}


def check_ncclep() -> None:
    """NCCL EP lives in Transformer Engine; its bootstrap signature must match what Megatron passes."""
    te_ep = _need("transformer_engine.pytorch.ep", "dispatcher=ncclep",
                  "a Transformer Engine build with NCCL EP (NVTE_BUILD_WITH_NCCL_EP=1), or dispatcher=alltoall")
    params = list(inspect.signature(te_ep.ep_bootstrap).parameters.values())[1:]  # first: the EP group
    missing = [p.name for p in params if p.default is inspect.Parameter.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in MCORE_EP_BOOTSTRAP_KWARGS]
    if missing:
        import megatron.core
        import transformer_engine
        raise BackendError(
            f"dispatcher=ncclep: Transformer Engine {transformer_engine.__version__}'s ep_bootstrap() requires "
            f"{', '.join(missing)}, which megatron-core {megatron.core.__version__} does not pass "
            "(the versions disagree). Fix: dispatcher=deepep or dispatcher=alltoall")


def check_gradient_accumulation_fusion(args: Namespace) -> None:
    if getattr(args, "gradient_accumulation_fusion", False):
        _need("fused_weight_gradient_mlp_cuda", "gradient accumulation fusion (APEX's fused wgrad kernel)",
              "install APEX with --cuda_ext, or set train.gradient_accumulation_fusion=false")


def check_gated_delta_net(args: Namespace) -> None:
    if getattr(args, "experimental_attention_variant", None) == "gated_delta_net":
        _need("fla.ops.gated_delta_rule", "gated delta net layers (experimental_attention_variant=gated_delta_net)",
              "pip install -e '.[gpu]' (flash-linear-attention 0.6.0 with tilelang 0.1.15), or use the container")
        check_fla_triton()


def check_fla_triton(capability=None, triton_version=None, have_tilelang=None) -> None:
    """flash-linear-attention's gated delta rule backward gives wrong results with Triton >= 3.4, < 3.7.1 on
    Hopper and fla refuses it inside the first backward (seen on the GPU host: Triton 3.6, fla 0.6.0);
    say so before the model is built. With tilelang installed fla runs that backward with it (measured on H200:
    fla 0.6.0, tilelang 0.1.15, Triton 3.6)."""
    import importlib.util

    import torch

    if capability is None:
        capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    if capability is None or capability[0] != 9:
        return
    if triton_version is None:
        import triton

        triton_version = triton.__version__
    if have_tilelang is None:
        have_tilelang = importlib.util.find_spec("tilelang") is not None
    v = tuple(int(x) for x in triton_version.split("+")[0].split(".")[:3])
    if (3, 4, 0) <= v < (3, 7, 1) and not have_tilelang:
        raise BackendError(f"gated delta net layers on Hopper: flash-linear-attention refuses Triton {triton_version} "
                           "(its gated delta rule backward is wrong with Triton >= 3.4.0, < 3.7.1 on sm_90). Fix: "
                           "install Triton >= 3.7.1 or tilelang (pip install -e '.[gpu]' pins tilelang 0.1.15, the "
                           "container has it), or train on another GPU generation")


def check_all(args: Namespace) -> None:
    check_transformer_engine(args)
    check_gated_delta_net(args)
    check_flex_backend(args)
    check_gradient_accumulation_fusion(args)

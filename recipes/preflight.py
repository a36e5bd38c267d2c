"""The doctor's compute-side checks: can the dispatcher backend the run asked for work on this machine?

Run on rank 0 after Megatron parsed the argv and before the model is built (recipes/pretrain.py), and by
`moe-doctor` on the login/compute node (python -m recipes.preflight). Each failure is one line with the fix;
nothing falls back to another dispatcher. The package checks (import, TE's ep_bootstrap) stay in
recipes/backends.py; this module adds what those cannot see: the installed deep_ep's signatures against
megatron-core 0.19.2's calls, NVLink between the EP group's GPUs, NVSHMEM versions, HybridEP's JIT and NVLink
domain, and the GPU architecture against dispatcher and precision.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from recipes import backends

_BUILD = ("install DeepEP's hybrid-ep branch at 17cfb817bccec3a9c247013360cc550c2bac441e (container/versions.env, "
          "container/README.md), or dispatcher=alltoall")


@dataclass(frozen=True)
class Call:
    """One call megatron-core 0.19.2 makes (megatron/core/transformer/moe/fused_a2a.py): positional count
    after self, and the keyword names it passes."""

    owner: str
    method: str
    positional: int
    keywords: tuple[str, ...] = ()


# deepep: get_buffer, FusedDispatch/FusedCombine forward and backward, set_deepep_num_sms
DEEPEP_CALLS = (
    Call("Buffer", "get_dispatch_config", 1),
    Call("Buffer", "get_combine_config", 1),
    Call("Buffer", "__init__", 3),  # Buffer(group, num_nvl_bytes, num_rdma_bytes)
    Call("Buffer", "get_dispatch_layout", 2, ("previous_event", "async_finish", "allocate_on_comm_stream")),
    Call("Buffer", "dispatch", 1, ("topk_idx", "topk_weights", "num_tokens_per_rank", "num_tokens_per_rdma_rank",
                                   "is_token_in_rank", "num_tokens_per_expert", "previous_event", "async_finish",
                                   "allocate_on_comm_stream")),
    Call("Buffer", "dispatch", 1, ("handle", "previous_event", "async_finish", "allocate_on_comm_stream")),
    Call("Buffer", "combine", 2, ("topk_weights", "previous_event", "async_finish", "allocate_on_comm_stream")),
    Call("Buffer", "combine", 1, ("handle", "async_finish", "previous_event", "allocate_on_comm_stream")),
    Call("Buffer", "set_num_sms", 1),
)
# hybridep: init_hybrid_ep_buffer (the optional SM/block counts are passed when set), HybridEPDispatch/Combine
HYBRIDEP_CALLS = (
    Call("HybridEPBuffer", "__init__", 0, ("group", "hidden_dim", "max_num_of_tokens_per_rank", "num_local_experts",
                                           "use_fp8", "num_sms_dispatch_api", "num_sms_combine_api",
                                           "num_blocks_permute", "num_blocks_unpermute",
                                           "num_sms_preprocessing_api")),
    Call("HybridEPBuffer", "dispatch_with_permute", 0, ("hidden", "routing_map", "probs", "scaling_factor",
                                                        "num_of_experts_per_rank", "pad_multiple",
                                                        "num_permuted_tokens", "non_blocking")),
    Call("HybridEPBuffer", "dispatch_with_permute", 0, ("hidden", "scaling_factor", "handle", "pad_multiple",
                                                        "num_permuted_tokens")),
    Call("HybridEPBuffer", "combine_with_unpermute", 0, ("hidden", "probs", "handle", "pad_multiple")),
)


class PreflightError(backends.BackendError):
    """One or more checks failed; the message has one line per failure."""


def _signature(cls: type, call: Call) -> inspect.Signature:
    static = inspect.getattr_static(cls, call.method)
    sig = inspect.signature(getattr(cls, call.method))
    if call.method == "__init__" or not isinstance(static, (staticmethod, classmethod)):
        # unbound plain methods keep self in the signature; bind a placeholder for it
        params = list(sig.parameters.values())
        sig = sig.replace(parameters=params[1:]) if params else sig
    return sig


def call_mismatch(cls: type, call: Call) -> str | None:
    """Why megatron-core's call would raise TypeError on this class, or None: bind the same arguments."""
    try:
        sig = _signature(cls, call)
    except (AttributeError, TypeError, ValueError) as e:
        return f"{call.owner}.{call.method} is missing or has no signature ({type(e).__name__}: {e})"
    try:
        sig.bind(*range(call.positional), **dict.fromkeys(call.keywords))
    except TypeError as e:
        return f"{call.owner}.{call.method}{sig} cannot take megatron-core's call ({e})"
    return None


def check_deep_ep_api(backend: str) -> list[str]:
    """deep_ep imports and has every argument megatron-core 0.19.2 passes for `backend`."""
    try:
        mod = importlib.import_module("deep_ep")
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken build raising OSError / RuntimeError
        return [f"dispatcher={backend}: deep_ep does not import ({type(e).__name__}: {e}). Fix: {_BUILD}"]
    calls = DEEPEP_CALLS if backend == "deepep" else HYBRIDEP_CALLS
    if backend == "deepep":
        try:  # megatron-core imports these next to Buffer; without them it reports deepep unavailable
            from deep_ep.utils import EventHandle, EventOverlap  # noqa: F401
        except ImportError as e:
            return [f"dispatcher=deepep: deep_ep.utils lacks EventHandle/EventOverlap ({e}): another DeepEP API "
                    f"generation. Fix: {_BUILD}"]
    where = getattr(mod, "__file__", "?")
    whys: list[str] = []
    for call in calls:
        cls = getattr(mod, call.owner, None)
        why = f"deep_ep has no {call.owner}" if cls is None else call_mismatch(cls, call)
        if why and why not in whys:  # a missing class fails each of its calls: say it once
            whys.append(why)
    return [f"dispatcher={backend}: {why} (deep_ep at {where}). Fix: {_BUILD}" for why in whys]


def check_hybridep_fusion(fused: bool) -> list[str]:
    """megatron-core 0.19.2 asks HybridEP for fused permute (moe_permute_fusion_into_hybridep, or block counts)
    only where dispatch_with_permute has fuse_permute_dispatch (a0d27f1 and later), and otherwise only warns and
    runs unfused: refuse that silent fallback here."""
    if not fused:
        return []
    try:
        buffer = importlib.import_module("deep_ep").HybridEPBuffer
        params = inspect.signature(buffer.dispatch_with_permute).parameters
    except Exception:  # noqa: BLE001 - reported by check_deep_ep_api already
        return []
    if "fuse_permute_dispatch" in params:
        return []
    return ["dispatcher=hybridep: moe_permute_fusion_into_hybridep / moe_hybridep_num_blocks_* ask for fused "
            "permute, but this deep_ep's dispatch_with_permute has no fuse_permute_dispatch (Megatron would fall back "
            f"to unfused dispatch with a warning). Fix: {_BUILD}, or drop those settings"]


# ---- NVLink between the GPUs of one EP group --------------------------------------------------------------

def torch_peer_access(a: int, b: int) -> bool:
    import torch

    return bool(torch.cuda.can_device_access_peer(a, b))


def check_nvlink(backend: str, gpus: list[int], peer: Callable[[int, int], bool] = torch_peer_access) -> list[str]:
    """DeepEP's Buffer asserts P2P between every pair of its node's GPUs; HybridEP needs them in one NVLink
    domain. `gpus`: the local GPUs of one EP group (this node's part of it)."""
    bad = [(a, b) for a in gpus for b in gpus if a < b and not (peer(a, b) and peer(b, a))]
    if not bad:
        return []
    pairs = ", ".join(f"{a}<->{b}" for a, b in bad)
    return [f"dispatcher={backend}: GPUs {pairs} of one EP group cannot reach each other peer-to-peer (NVLink); "
            "DeepEP/HybridEP need NVLink P2P inside a node. Fix: a host whose GPUs are NVLink-connected "
            "(nvidia-smi topo -m shows NV#), or dispatcher=alltoall"]


# ---- NVSHMEM host and device libraries ---------------------------------------------------------------------

def _header_version(path: Path) -> str | None:
    text = path.read_text(errors="replace")
    parts = [re.search(rf"#define\s+NVSHMEM_VENDOR_{k}_VERSION\s+(\d+)", text) for k in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(m.group(1) for m in parts) if all(parts) else None


def nvshmem_versions(env: dict[str, str] | None = None) -> dict[str, str]:
    """Every NVSHMEM this process could use, source -> version: the pip distributions (nvidia-nvshmem-cu*:
    host library libnvshmem_host.so and device library libnvshmem_device), and NVSHMEM_HOME's headers."""
    env = os.environ if env is None else env
    out = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith("nvidia-nvshmem"):
            out[f"pip {name}"] = dist.version
    home = env.get("NVSHMEM_HOME")
    if home:
        for rel in ("include/non_abi/nvshmem_version.h", "include/nvshmem_version.h"):
            if (Path(home) / rel).is_file() and (v := _header_version(Path(home) / rel)):
                out[f"NVSHMEM_HOME={home}"] = v
                break
    return out


def check_nvshmem(backend: str, env: dict[str, str] | None = None) -> list[str]:
    """Host and device NVSHMEM of different versions hang internode dispatch (Automodel PR #2614)."""
    found = nvshmem_versions(env)
    if len(set(found.values())) <= 1:
        return []
    listing = ", ".join(f"{k} {v}" for k, v in sorted(found.items()))
    return [f"dispatcher={backend}: NVSHMEM versions disagree ({listing}); host and device libraries of different "
            "versions hang internode dispatch. Fix: keep one NVSHMEM (container/versions.env: nvidia-nvshmem-cu13 "
            "3.4.5), unset NVSHMEM_HOME or point it at the same version, and rebuild DeepEP against it"]


# ---- HybridEP JIT and NVLink domain ------------------------------------------------------------------------

def check_hybridep_jit(env: dict[str, str] | None = None) -> list[str]:
    """HybridEP JIT-compiles kernels at first use with $CUDA_HOME/bin/nvcc and caches them under
    $HYBRID_EP_CACHE_DIR (default $HOME)/.deepep/hybrid_ep/jit."""
    env = os.environ if env is None else env
    out = []
    cuda_home = env.get("CUDA_HOME") or env.get("CUDA_PATH") or "/usr/local/cuda"
    nvcc = Path(cuda_home) / "bin" / "nvcc"
    if not (nvcc.is_file() and os.access(nvcc, os.X_OK)):
        out.append(f"dispatcher=hybridep: HybridEP compiles its kernels at first use with {nvcc}, which is not an "
                   "executable here. Fix: export CUDA_HOME=<CUDA toolkit with bin/nvcc> (the container has it)")
    var = "HYBRID_EP_CACHE_DIR" if env.get("HYBRID_EP_CACHE_DIR") else "HOME"
    base = env.get(var)
    if not base:
        out.append("dispatcher=hybridep: neither HYBRID_EP_CACHE_DIR nor HOME is set, so HybridEP has no JIT cache "
                   "directory. Fix: export HYBRID_EP_CACHE_DIR=<writable directory>")
    else:
        probe = Path(base)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent  # the directory HybridEP would have to create its cache in
        if not (probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)):
            out.append(f"dispatcher=hybridep: HybridEP's JIT cache {var}={base} is not writable. "
                       "Fix: export HYBRID_EP_CACHE_DIR=<writable directory> (e.g. on node-local disk)")
    return out


def check_hybridep_domain(ep_group_size: int, env: dict[str, str] | None = None) -> list[str]:
    """HybridEP reads its NVLink domain size from NUM_OF_HYBRID_EP_RANKS_PER_NVLINK_DOMAIN (else detects the
    ranks it can reach); the EP group must be a whole number of domains."""
    env = os.environ if env is None else env
    value = env.get("NUM_OF_HYBRID_EP_RANKS_PER_NVLINK_DOMAIN")
    if value is None:
        return []  # HybridEP detects the accessible ranks itself (one node: its NVLink-connected GPUs)
    if not value.isdigit() or int(value) < 1 or ep_group_size % int(value):
        return [f"dispatcher=hybridep: NUM_OF_HYBRID_EP_RANKS_PER_NVLINK_DOMAIN={value} must be a positive divisor "
                f"of the EP group size {ep_group_size} (EP x expert TP). Fix: set it to the ranks of one EP group "
                "inside one NVLink domain (8 on HGX, up to 72 on NVL72), or unset it to let HybridEP detect them"]
    return []


# ---- GPU architecture --------------------------------------------------------------------------------------

def check_arch(backend: str | None, fp8_recipe: str | None, capability: tuple[int, int] | None) -> list[str]:
    """DeepEP's and HybridEP's kernels need Hopper or newer (sm_90+); MXFP8 needs Blackwell (sm_100+)."""
    if capability is None:
        return []  # no GPU here (moe-doctor on a login node): nothing to compare
    out = []
    sm = f"sm_{capability[0]}{capability[1]}"
    if backend in ("deepep", "hybridep") and capability < (9, 0):
        out.append(f"dispatcher={backend}: DeepEP's kernels need sm_90 or newer; this GPU is {sm}. "
                   "Fix: dispatcher=alltoall")
    if fp8_recipe == "mxfp8" and capability < (10, 0):
        out.append(f"precision=mxfp8: MXFP8 needs Blackwell (sm_100); this GPU is {sm}. "
                   "Fix: precision=fp8_blockwise (Hopper) or precision=bf16")
    return out


# ---- the whole doctor --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Need:
    """What the resolved run asks of this machine (from Megatron's args or moe-doctor's plan)."""

    backend: str | None  # flex backend, None for alltoall/allgather
    fp8_recipe: str | None
    ep_group_size: int  # expert-model-parallel x expert tensor-parallel: the flex dispatcher's group
    local_gpus: int  # GPUs of this node in the run
    nodes_spanned: int  # nodes one EP group spans (> 1: internode, NVSHMEM in use)
    hybridep_fused: bool = False  # fused permute or block counts asked of HybridEP


def need_from_args(args) -> Need:
    backend = args.moe_flex_dispatcher_backend if args.moe_token_dispatcher_type == "flex" else None
    etp = getattr(args, "expert_tensor_parallel_size", None) or args.tensor_model_parallel_size
    group = args.expert_model_parallel_size * etp
    local = int(os.environ.get("LOCAL_WORLD_SIZE", args.world_size))
    fp8 = args.fp8_recipe if getattr(args, "fp8", None) else None
    asked = bool(getattr(args, "moe_permute_fusion_into_hybridep", False)) or any(
        getattr(args, f"moe_hybridep_num_blocks_{k}", None) is not None for k in ("permute", "unpermute"))
    fused = backend == "hybridep" and asked
    return Need(backend, fp8, group, local, -(-group // max(local, 1)), fused)


def _capability() -> tuple[int, int] | None:
    import torch

    return tuple(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None


def diagnose(need: Need, env: dict[str, str] | None = None,
             peer: Callable[[int, int], bool] = torch_peer_access,
             capability: tuple[int, int] | None | str = "probe") -> list[str]:
    """Every failing check for `need`, one line each (empty: ready)."""
    cap = _capability() if capability == "probe" else capability
    out = check_arch(need.backend, need.fp8_recipe, cap)
    if need.backend == "ncclep":
        try:
            backends.check_ncclep()  # TE built with NCCL EP, ep_bootstrap's signature: one place for it
        except backends.BackendError as e:
            out.append(str(e))
    if need.backend in ("deepep", "hybridep"):
        out += check_deep_ep_api(need.backend)
        if cap is not None:
            out += check_nvlink(need.backend, list(range(min(need.ep_group_size, need.local_gpus))), peer)
        if need.nodes_spanned > 1:
            out += check_nvshmem(need.backend, env)
    if need.backend == "hybridep":
        out += check_hybridep_jit(env) + check_hybridep_domain(need.ep_group_size, env)
        out += check_hybridep_fusion(need.hybridep_fused)
    return out


def run(args) -> None:
    """Rank 0's preflight from recipes/pretrain.py: raise PreflightError with every failure."""
    problems = diagnose(need_from_args(args))
    if problems:
        raise PreflightError("\n".join(problems))


def main(argv: list[str]) -> int:
    """python -m recipes.preflight --api deepep hybridep: the signature check alone (image builds);
    python -m recipes.preflight BACKEND|none FP8_RECIPE|none EP_GROUP LOCAL_GPUS NODES [fused]: the whole doctor
    (fused: HybridEP's fused permute is asked for)."""
    if argv[:1] == ["--api"]:
        problems = [p for b in argv[1:] for p in check_deep_ep_api(b)]
        ok = f"deep_ep API matches megatron-core's calls for {', '.join(argv[1:])}"
    else:
        backend, fp8, group, local, nodes = argv[:5]
        need = Need(None if backend == "none" else backend, None if fp8 == "none" else fp8, int(group), int(local),
                    int(nodes), argv[5:] == ["fused"])
        cap = _capability()
        problems = diagnose(need, capability=cap)
        ok = f"ready: {need}" + ("" if cap else "; no GPU visible here, so NVLink and the GPU architecture were not "
                                 "checked (run moe-doctor on a compute node)")
    for line in problems:
        print(f"moe-doctor: error: {line}", file=sys.stderr)
    if not problems:
        print(f"moe-doctor: {ok}")
        if any(b in argv for b in ("deepep", "hybridep")):
            from importlib import metadata

            mod = importlib.import_module("deep_ep")
            try:
                version = metadata.version("deep_ep")
            except metadata.PackageNotFoundError:
                version = "unknown version"
            print(f"moe-doctor: deep_ep {version} at {Path(mod.__file__).parent}")
    return 3 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

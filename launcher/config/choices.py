"""The closed choices of the schema, as StrEnums: OmegaConf checks a value against them at compose time
("Invalid value 'flexx', expected one of [...]", launcher/config/compose.py adds the did-you-mean), and a
member compares equal to, formats as and serialises as its string. OmegaConf looks members up by name,
so every name equals its value."""
from __future__ import annotations

from enum import StrEnum


class ExecutorKind(StrEnum):
    """Where a run starts (cluster.executor)."""

    local = "local"
    slurm = "slurm"
    container = "container"


class Device(StrEnum):
    auto = "auto"
    cuda = "cuda"
    cpu = "cpu"


class ContainerRuntime(StrEnum):
    docker = "docker"
    podman = "podman"


class TransformerImpl(StrEnum):
    auto = "auto"
    transformer_engine = "transformer_engine"
    local = "local"


class GroupedGemmImpl(StrEnum):
    """auto: the tuned rule in launcher/plan/tuned.py (torch where it is valid on Hopper, else te)."""

    auto = "auto"
    te = "te"
    torch = "torch"


class QatFormat(StrEnum):
    """quant.qat: nvidia-modelopt's fake-quantization config of that name (recipes/qat.py); none = off."""

    none = "none"
    fp8 = "fp8"
    int8 = "int8"
    nvfp4 = "nvfp4"
    mxfp8 = "mxfp8"


class Switch(StrEnum):
    """An on/off knob with a tuned default (launcher/plan/tuned.py). Its schema field is typed
    Union[bool, str] because Hydra reads `=true` and YAML `true` as a bool, which an enum field refuses;
    launcher/plan/tuned.py checks the string against these values."""

    auto = "auto"
    true = "true"
    false = "false"


class ScoreFunction(StrEnum):
    softmax = "softmax"
    sigmoid = "sigmoid"
    sqrtsoftplus = "sqrtsoftplus"


class RopeType(StrEnum):
    rope = "rope"
    yarn = "yarn"


class AttentionVariant(StrEnum):
    """Megatron's other variant, dsa, needs indexer settings the schema does not model."""

    gated_delta_net = "gated_delta_net"


class DispatcherType(StrEnum):
    alltoall = "alltoall"
    allgather = "allgather"
    flex = "flex"


class FlexBackend(StrEnum):
    deepep = "deepep"
    hybridep = "hybridep"
    ncclep = "ncclep"


class RecomputeGranularity(StrEnum):
    none = "none"
    selective = "selective"
    full = "full"


class RecomputeMethod(StrEnum):
    uniform = "uniform"
    block = "block"


class RecomputeModule(StrEnum):
    core_attn = "core_attn"
    moe_act = "moe_act"
    layernorm = "layernorm"
    mla_up_proj = "mla_up_proj"
    mlp = "mlp"
    moe = "moe"
    shared_experts = "shared_experts"
    gdn_norm_out = "gdn_norm_out"


class ParamsDtype(StrEnum):
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


class Fp8Format(StrEnum):
    e4m3 = "e4m3"
    hybrid = "hybrid"


class Fp8Recipe(StrEnum):
    tensorwise = "tensorwise"
    delayed = "delayed"
    mxfp8 = "mxfp8"
    blockwise = "blockwise"


class DataKind(StrEnum):
    mock = "mock"
    indexed = "indexed"


class Routing(StrEnum):
    dropless = "dropless"
    forced_balance = "forced_balance"


class CrossEntropyImpl(StrEnum):
    auto = "auto"
    native = "native"
    te = "te"
    lean = "lean"


class CudaGraphImpl(StrEnum):
    transformer_engine = "transformer_engine"
    local = "local"
    full_iteration = "full_iteration"


class CudaGraphModule(StrEnum):
    attn = "attn"
    mlp = "mlp"
    moe_router = "moe_router"
    moe_preprocess = "moe_preprocess"
    moe = "moe"

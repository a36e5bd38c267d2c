"""The quant and distill groups (nvidia-modelopt inside the recipe: recipes/qat.py, recipes/distill.py): what would
otherwise fail deep inside the run, once the model is built or at the first step, refused here in one line.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

from launcher.config.schema import RunConfig
from launcher.errors import ConfigError
from launcher.plan.resolve import Resolved
from launcher.plan.vocab import padded

EXTRA_FIX = "pip install -e '.[modelopt]'"
# modelopt's NVFP4 fake quant is a Triton kernel that needs compute capability 8.9 (tensor_quant.py:179), its
# MXFP8 one a CUDA extension it compiles on the GPU; neither has a CPU path
GPU_FORMATS = ("nvfp4", "mxfp8")
MIN_CAPABILITY = (8, 9)


def _field(cfg: RunConfig) -> tuple[str, object]:
    """The field that asks for modelopt: quant.qat first, else distill.enabled."""
    if cfg.quant.qat != "none":
        return "quant.qat", str(cfg.quant.qat)
    return "distill.enabled", True


def check_modelopt_installed(cfg: RunConfig, res: Resolved) -> None:
    """QAT and distillation import modelopt on every rank; judged on this node when the ranks run its
    interpreter (not a container image's)."""
    if cfg.quant.qat == "none" and not cfg.distill.enabled:
        return
    c = cfg.cluster
    if c.executor == "container" or getattr(c, "container_image", None):
        return
    if importlib.util.find_spec("modelopt") is None:
        field, value = _field(cfg)
        raise ConfigError(field, value, "needs nvidia-modelopt, which is not installed here", EXTRA_FIX)


def check_qat_format_device(cfg: RunConfig, res: Resolved) -> None:
    fmt = str(cfg.quant.qat)
    if fmt not in GPU_FORMATS:
        return
    if res.device == "cpu":
        raise ConfigError("quant.qat", fmt, "modelopt's NVFP4/MXFP8 fake quantization runs on CUDA only (no CPU "
                          "kernels)", "run on GPUs, or use quant.qat=fp8 or int8 on CPU")
    major, _, minor = cfg.hardware.compute_capability.partition(".")
    if (int(major), int(minor or 0)) < MIN_CAPABILITY:
        raise ConfigError("quant.qat", fmt, f"modelopt's NVFP4/MXFP8 fake-quant kernels need compute capability "
                          f"8.9 or newer; hardware {cfg.hardware.name} is {cfg.hardware.compute_capability}",
                          "use quant.qat=fp8 or int8 on this GPU")


def check_qat_not_te_fp8(cfg: RunConfig, res: Resolved) -> None:
    """modelopt refuses to quantize inside Transformer Engine's FP8 autocast: QAT simulates the format in BF16."""
    if cfg.quant.qat != "none" and cfg.precision.fp8_format is not None:
        raise ConfigError("quant.qat", str(cfg.quant.qat), f"fake quantization cannot run inside Transformer "
                          f"Engine's FP8 training (precision={cfg.precision.name})",
                          "use precision=bf16 with QAT (it simulates the low-precision format)")


def check_qat_experts(cfg: RunConfig, res: Resolved) -> None:
    """modelopt has quantized modules for Megatron's and TE's linears and experts, not for recipes/experts.py's
    TorchGroupedLinear (its experts would silently stay BF16); its SequentialMLP refuses TP and EP together."""
    if cfg.quant.qat == "none":
        return
    if cfg.model.moe_grouped_gemm_impl == "torch":
        raise ConfigError("model.moe_grouped_gemm_impl", "torch", f"quant.qat={cfg.quant.qat}: modelopt cannot "
                          "quantize the torch grouped-GEMM experts", "set model.moe_grouped_gemm_impl=te (or auto)")
    if res.transformer_impl == "local" and cfg.parallel.tp > 1 and cfg.parallel.ep > 1:
        raise ConfigError("parallel.tp", cfg.parallel.tp, f"quant.qat={cfg.quant.qat} with the local spec's "
                          f"SequentialMLP experts: modelopt refuses TP and EP > 1 together",
                          "set parallel.tp=1 or parallel.ep=1 (or run with Transformer Engine)")


def check_qat_pipeline(cfg: RunConfig, res: Resolved) -> None:
    """modelopt's sharded modelopt_state (what resume restores the quantizers from) has one model chunk."""
    if cfg.quant.qat != "none" and (cfg.parallel.vpp or 1) > 1:
        raise ConfigError("parallel.vpp", cfg.parallel.vpp, f"quant.qat={cfg.quant.qat}: modelopt saves and "
                          "restores quantizer state for one model chunk per rank", "set parallel.vpp=null")


def check_modelopt_fsdp(cfg: RunConfig, res: Resolved) -> None:
    """Megatron FSDP saves fsdp_dtensor checkpoints, outside the torch_dist branch where Megatron calls the
    modelopt_state save (checkpointing.py:840): a resumed QAT run would lose its quantizers; and the teacher
    inside a distillation model would be sharded with the student. Neither is supported here."""
    if cfg.parallel.use_megatron_fsdp and (cfg.quant.qat != "none" or cfg.distill.enabled):
        field, value = _field(cfg)
        raise ConfigError(field, value, "is not supported with Megatron FSDP (modelopt's state is saved with "
                          "torch_dist checkpoints only)", "set parallel.use_megatron_fsdp=false")


def check_qat_calibration(cfg: RunConfig, res: Resolved) -> None:
    if cfg.quant.qat != "none" and cfg.quant.calib_batches < 1:
        raise ConfigError("quant.calib_batches", cfg.quant.calib_batches, "must be at least 1 micro batch (the "
                          "quantizers' amax comes from calibration)", "set quant.calib_batches=4")


def check_qat_and_distill(cfg: RunConfig, res: Resolved) -> None:
    """Quantization would also quantize the teacher inside the distillation model; not wired together here."""
    if cfg.quant.qat != "none" and cfg.distill.enabled:
        raise ConfigError("quant.qat", str(cfg.quant.qat), "QAT and distillation in one run are not supported",
                          "run them one after the other (distill, then continue with quant.qat)")


def check_distill_teacher(cfg: RunConfig, res: Resolved) -> None:
    d = cfg.distill
    if d.teacher_checkpoint and not d.enabled:
        raise ConfigError("distill.teacher_checkpoint", d.teacher_checkpoint, "is set while distillation is off",
                          "add distill=kd (or distill.enabled=true), or drop distill.teacher_checkpoint")
    if not d.enabled:
        return
    if not d.teacher_checkpoint:
        raise ConfigError("distill.teacher_checkpoint", None, "distillation needs the teacher's checkpoint",
                          "set distill.teacher_checkpoint=<a run's checkpoints directory or iter_* directory>")
    if cfg.cluster.executor == "local" and not Path(d.teacher_checkpoint).exists():
        raise ConfigError("distill.teacher_checkpoint", d.teacher_checkpoint, "does not exist on this machine",
                          "point it at a run's checkpoints directory (train.save of the teacher's run)")
    if d.temperature <= 0:
        raise ConfigError("distill.temperature", d.temperature, "must be positive (the logits are divided by it)",
                          "set distill.temperature=1.0")
    if d.layer_weight < 0 or d.lm_loss_weight < 0:
        field = "distill.layer_weight" if d.layer_weight < 0 else "distill.lm_loss_weight"
        raise ConfigError(field, getattr(d, field.split(".")[1]), "must be >= 0", f"set {field}=0 (off) or more")
    for pair in d.layer_pairs:
        if len(pair) != 2 or not all(pair):
            raise ConfigError("distill.layer_pairs", list(pair), "each entry is [student module, teacher module]",
                              "e.g. distill.layer_pairs=[[decoder.layers.1,decoder.layers.3]]")


def check_distill_layout(cfg: RunConfig, res: Resolved) -> None:
    """modelopt's distillation: no interleaved pipeline; across plain pipeline stages it needs Megatron's
    tensor-shape hook, which megatron-core 0.19.2's wheel has switched off (training.py:2366 needs
    megatron.post_training); the EP overlap schedule builds the layers' plan without the teacher."""
    if not cfg.distill.enabled:
        return
    p = cfg.parallel
    if (p.vpp or 1) > 1 or p.pp > 1:
        raise ConfigError("parallel.pp", p.pp, "distillation runs teacher and student on one pipeline stage here "
                          "(megatron-core 0.19.2's wheel lacks the stage hook; interleaved stages never)",
                          "set parallel.pp=1 parallel.vpp=null; spread with parallel.ep/tp instead")
    if res.tuned.overlap_moe_expert_parallel_comm:
        raise ConfigError("dispatcher.overlap_moe_expert_parallel_comm", True, "the EP all-to-all overlap schedule "
                          "runs the student's layers without the teacher", "set it to false (or auto)")


def teacher_run_config(path: str) -> Optional[Path]:
    """The config.yaml of the moe-launch run that wrote the teacher checkpoint: <run>/checkpoints[/iter_*]."""
    p = Path(path)
    for d in (p.parent, p.parent.parent):
        if (d / "config.yaml").is_file():
            return d / "config.yaml"
    return None


def check_distill_vocab(cfg: RunConfig, res: Resolved) -> None:
    """Logit KL compares the teacher's and the student's logits token by token: the vocabularies must match.
    Read from the teacher run's config.yaml where the checkpoint sits in a run directory (the compute node
    checks the args saved in the checkpoint itself in every case, recipes/distill.py)."""
    d = cfg.distill
    if not d.enabled or not d.teacher_checkpoint:
        return
    found = teacher_run_config(d.teacher_checkpoint)
    if found is None:
        return
    import yaml

    teacher = (yaml.safe_load(found.read_text()) or {})
    tm, tdata = teacher.get("model", {}), teacher.get("data", {})
    if tdata.get("tokenizer_type", "NullTokenizer") != "NullTokenizer" or cfg.data.tokenizer_type != "NullTokenizer":
        return  # the vocabulary comes from a tokenizer: the compute node compares the padded sizes
    tp = cfg.parallel.tp
    theirs = padded(int(tm["vocab_size"]), int(tm.get("make_vocab_size_divisible_by", 128)), tp)
    ours = padded(cfg.model.vocab_size, cfg.model.make_vocab_size_divisible_by, tp)
    if theirs != ours:
        raise ConfigError("distill.teacher_checkpoint", d.teacher_checkpoint, f"the teacher's vocabulary pads to "
                          f"{theirs} ({found}: model.vocab_size={tm['vocab_size']}), the student's to {ours}; "
                          "logit distillation needs the same vocabulary",
                          f"set model.vocab_size={tm['vocab_size']} or distill from a teacher of this vocabulary")


MODELOPT_RULES = (check_modelopt_installed, check_qat_format_device, check_qat_not_te_fp8, check_qat_experts,
                  check_qat_pipeline, check_modelopt_fsdp, check_qat_calibration, check_qat_and_distill,
                  check_distill_teacher, check_distill_layout, check_distill_vocab)

"""Quantization-aware training with nvidia-modelopt (quant.qat): simulated FP8/INT8/NVFP4/MXFP8 in BF16 training.

megatron-core 0.19.2's own ModelOpt hooks are off in the wheel (it imports megatron.post_training, which only the
Megatron-LM source tree has), so this module makes the calls itself, at three points of megatron.training.pretrain:

  1. after the model is built and wrapped (GPTModelConfig.post_wrap_hooks), before Megatron loads --load: when
     the checkpoint to load was written by a QAT run (it has <iter>/modelopt_state), the quantizers are restored
     from it (modelopt's restore_sharded_modelopt_state: the modes, then each module's quantizer state from its
     `_extra_state` in the checkpoint), so that Megatron's own load fills their amax values. No re-calibration.
  2. after setup_model_and_optimizer (the weights of --load are in): a model without quantizers yet (a fresh QAT
     run, or a BF16 run's checkpoint continued into QAT) is quantized with
     modelopt.torch.quantization.quantize(model, CFG, forward_loop), calibrating on quant.calib_batches micro
     batches of the run's own training data (max calibration: the amax of each quantized tensor).
  3. every checkpoint Megatron saves gets modelopt's sharded modelopt_state beside it, at the place Megatron's own
     (dead) hook would write it (checkpointing.save_checkpoint -> save_sharded_modelopt_state); the per-module
     quantizer state and amax values are in the checkpoint itself (modelopt's megatron plugin adds them to each
     quantized module's sharded_state_dict).

The optimizer is built before step 2: the quantizers of these formats hold buffers (amax), no parameters, so
the optimizer and the DDP buckets see the same parameters either way.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
from typing import Optional

ENV = "MOE_QAT"  # JSON of the quant group, set by the launcher (launcher/plan/plan.py run_env)
FORMATS = {"fp8": "FP8_DEFAULT_CFG", "int8": "INT8_DEFAULT_CFG", "nvfp4": "NVFP4_DEFAULT_CFG",
           "mxfp8": "MXFP8_DEFAULT_CFG"}
STATE_SUBDIR = "modelopt_state"  # modelopt's name for it inside an iteration directory
QUANTIZERS_FILE = "quantizers.json"  # in the run directory: every amax the run trained with (rank 0's modules)


@dataclasses.dataclass(frozen=True)
class QatSpec:
    format: str
    calib_batches: int
    exclude: tuple[str, ...]


def spec_from_env() -> Optional[QatSpec]:
    """The quant group as the launcher passed it; None when QAT is off."""
    raw = os.environ.get(ENV)
    if not raw:
        return None
    d = json.loads(raw)
    if d.get("qat", "none") == "none":
        return None
    return QatSpec(format=d["qat"], calib_batches=int(d["calib_batches"]), exclude=tuple(d["exclude"]))


def quant_config(spec: QatSpec) -> dict:
    """modelopt's default config of the format, with every quant.exclude pattern switched off after it (the
    defaults already exclude *router*, *output_layer* and *lm_head*; later entries win)."""
    import modelopt.torch.quantization as mtq

    cfg = copy.deepcopy(getattr(mtq, FORMATS[spec.format]))
    cfg["quant_cfg"] = [*cfg["quant_cfg"], *({"quantizer_name": p, "enable": False} for p in spec.exclude)]
    return cfg


def _unwrap(model_list) -> list:
    from megatron.core.utils import unwrap_model

    return unwrap_model(model_list)


def is_quantized(module) -> bool:
    import modelopt.torch.opt as mto

    return mto.ModeloptStateManager.is_converted(module)


def quantizer_amax(model_list) -> dict[str, float]:
    """Every enabled quantizer's amax (its largest value for per-channel ones), by name: what the tests and the
    load summary compare."""
    from modelopt.torch.quantization.nn import TensorQuantizer

    out = {}
    for chunk in _unwrap(model_list):
        for name, mod in chunk.named_modules():
            if isinstance(mod, TensorQuantizer) and mod.is_enabled and getattr(mod, "amax", None) is not None:
                out[name] = float(mod.amax.float().max())
    return out


def summary(model_list, msg: str) -> None:
    """On rank 0: one line (train.log) with how many quantizers are on and carry an amax, and every amax in
    <run_dir>/quantizers.json (rank 0's modules), the record of what the run trained with."""
    import torch

    if torch.distributed.get_rank() != 0:
        return
    amax = quantizer_amax(model_list)
    print(f"recipes.qat: {msg}: {len(amax)} enabled quantizers with an amax", flush=True)
    path = os.path.join(os.environ.get("MOE_RUN_DIR", "."), QUANTIZERS_FILE)
    with open(path, "w") as f:
        json.dump({"event": msg, "amax": amax}, f, indent=1, sort_keys=True)


@contextlib.contextmanager
def _new_submodules(model_list):
    """Megatron's DDP keeps a forward pre-hook per submodule (the overlapped parameter all-gather) and asserts
    later that the set is unchanged: off while modelopt adds its quantizer modules, then on for all of them."""
    hooked = [c for c in model_list if getattr(c, "use_forward_hook", False)]
    for chunk in hooked:
        chunk.disable_forward_pre_hook(param_sync=False)  # no all-gather is pending before the first step
    yield
    for chunk in hooked:
        chunk.enable_forward_pre_hook()


# ------------------------------------------------------------------------------ 3. saving with every checkpoint

def _save_sharded_modelopt_state(model, checkpoint_name, sharded_strategy=None, prefix: str = "") -> None:
    """What Megatron's save_checkpoint calls right after its distributed save (checkpointing.py:840), with the
    wrappers (DDP, Float16Module) taken off first: modelopt looks for its state on the model itself."""
    from modelopt.torch.opt.plugins import save_sharded_modelopt_state

    save_sharded_modelopt_state(_unwrap(model), checkpoint_name, sharded_strategy, prefix)


def _save_modelopt_state(model, state_dict) -> None:
    """The same for Megatron's non-distributed formats (checkpointing.py:898): the state in each rank's dict."""
    from modelopt.torch.opt.plugins import save_modelopt_state

    save_modelopt_state(_unwrap(model), state_dict)


def enable_checkpoint_hooks() -> None:
    """Switch on Megatron's own ModelOpt save hook: its module flag is False only because the wheel lacks
    megatron.post_training (checkpointing.py:69); the functions it calls are given here."""
    import megatron.training.checkpointing as ckpt

    ckpt.save_sharded_modelopt_state = _save_sharded_modelopt_state
    ckpt.save_modelopt_state = _save_modelopt_state
    ckpt.print_distributed_quant_summary = summary
    ckpt.has_nvidia_modelopt = True


# ------------------------------------------------------------------------------ 1. restore before Megatron's load

def checkpoint_to_load(args) -> Optional[str]:
    """The iteration directory Megatron's load_checkpoint will read (recipes/checkpoint.py), or None."""
    from recipes.checkpoint import checkpoint_dir

    if not args.load:
        return None
    return checkpoint_dir(args.load, args.ckpt_step)


def restore_hook(args):
    """GPTModelConfig.post_wrap_hook: quantizers of a QAT checkpoint back on the model before its load."""

    def hook(model_list):
        path = checkpoint_to_load(args)
        if path is None or not os.path.isdir(os.path.join(path, STATE_SUBDIR)):
            return model_list
        from megatron.training.checkpointing import _build_sharded_state_dict_metadata
        from modelopt.torch.opt.plugins import restore_sharded_modelopt_state

        chunks = _unwrap(model_list)
        if len(chunks) != 1:
            raise ValueError("quant.qat: modelopt's sharded state does not support virtual pipeline stages")
        restored = [chunks[0]]
        with _new_submodules(model_list):
            restore_sharded_modelopt_state(restored, path, metadata=_build_sharded_state_dict_metadata(args))
        if restored[0] is not chunks[0]:  # modelopt converts in place for these modes; a new root would be lost
            raise RuntimeError("quant.qat: modelopt replaced the model's root module on restore")
        summary(model_list, f"quantizers restored from {path}")
        return model_list

    return hook


# ------------------------------------------------------------------------------ 2. quantize + calibrate after load

def calibration_batches(args, n: int) -> list[dict]:
    """The first n micro batches of the run's own training data (mock or indexed, as configured), the same on
    every rank: every data-parallel replica computes the same amax."""
    import torch

    from recipes import data

    train_ds, _, _ = data.datasets_provider([n * args.micro_batch_size, 0, 0])
    loader = torch.utils.data.DataLoader(train_ds, batch_size=args.micro_batch_size, shuffle=False)
    return [b for _, b in zip(range(n), loader)]


def _calibration_step(data_iterator, model):
    from recipes import data

    batch = data.next_batch(data_iterator)
    output = model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"),
                   labels=batch["labels"], loss_mask=batch["loss_mask"])

    def loss_func(output_tensor):
        return output_tensor.float().sum(), batch["loss_mask"].sum().int(), {}

    return output, loss_func


def forward_loop(args, model_list, batches: list[dict]):
    """modelopt's forward_loop: the calibration batches through Megatron's own forward-only schedule, so that a
    pipeline-parallel model is calibrated stage by stage as it trains."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    def loop(_unwrapped) -> None:
        import torch

        with torch.no_grad():
            get_forward_backward_func()(
                forward_step_func=_calibration_step, data_iterator=iter(batches), model=model_list,
                num_microbatches=len(batches), seq_length=args.seq_length, micro_batch_size=args.micro_batch_size,
                forward_only=True)

    return loop


def quantize_after_load(args, spec: QatSpec, model_list) -> None:
    """Quantize and calibrate a model that has no quantizers yet (fresh QAT, or a BF16 checkpoint continued)."""
    import modelopt.torch.quantization as mtq

    chunks = _unwrap(model_list)
    if is_quantized(chunks[0]):
        return  # restored from a QAT checkpoint (restore_hook): its amax values are the saved ones
    batches = calibration_batches(args, spec.calib_batches)
    with _new_submodules(model_list):
        for chunk in model_list:
            chunk.eval()
        quantized = mtq.quantize(chunks[0], quant_config(spec), forward_loop(args, model_list, batches))
        if quantized is not chunks[0]:
            raise RuntimeError("quant.qat: modelopt replaced the model's root module")
        for chunk in model_list:
            chunk.train()
    summary(model_list, f"{spec.format} fake quantization, calibrated on {len(batches)} micro batches")


def install(args, config_container, spec: QatSpec) -> None:
    """Hook QAT into megatron.training.pretrain (see the module docstring)."""
    import megatron.training.training as training

    enable_checkpoint_hooks()
    config_container.model.post_wrap_hooks.append(restore_hook(args))
    setup = training.setup_model_and_optimizer

    def setup_model_and_optimizer(*a, **kw):
        model, optimizer, scheduler = setup(*a, **kw)
        quantize_after_load(args, spec, model)
        return model, optimizer, scheduler

    training.setup_model_and_optimizer = setup_model_and_optimizer
    if args.rank == 0:
        print(f"recipes.qat: quant.qat={spec.format}: modelopt fake quantization (excluded: "
              f"{', '.join(spec.exclude) or 'modelopt defaults'})", flush=True)

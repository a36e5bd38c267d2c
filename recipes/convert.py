"""Hugging Face <-> Megatron conversion on one process (compute side of moe-convert):

    python -m recipes.convert import HF_DIR OUT -- <megatron argv with --save OUT>
    python -m recipes.convert export HF_CONFIG_DIR OUT [--quant fp8|nvfp4 --calib-data PREFIX
                                     --calib-samples N] -- <megatron argv with --load CKPT [--ckpt-step N]>

The argv is the run plan's own (launcher/tools/convert.py builds it at world 1: TP = PP = EP = 1, the local
spec, no grouped GEMM, so every expert is a SequentialMLP module modelopt's rules name one by one). Megatron
parses and validates it and builds the GPT model exactly as pretraining would; modelopt moves the weights:
  import  modelopt.torch.export.import_mcore_gpt_from_hf, then Megatron's save_checkpoint writes a torch_dist
          checkpoint at iteration 0 (model only). Distributed checkpointing reshards it on load, so a run at any
          TP/PP/EP layout starts from it (train.checkpoint.init_from -> --pretrained-checkpoint).
  export  Megatron's load_checkpoint (model only: --no-load-optim --no-load-rng) reshards any layout's checkpoint
          to this one process; with --quant, modelopt's PTQ calibrates on the user's indexed data; then
          modelopt.torch.export.export_mcore_gpt_to_hf writes safetensors, config.json and (quantized)
          hf_quant_config.json. HF_CONFIG_DIR holds the config.json the launcher wrote for the model.
Exit status: 0 done, 3 refused (one line on stderr: what, why, fix).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

QUANT_CONFIGS = {"fp8": "FP8_DEFAULT_CFG", "nvfp4": "NVFP4_DEFAULT_CFG"}


class ConvertError(RuntimeError):
    """A refusal to print as one line (exit 3)."""


def _options(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(prog="recipes.convert")
    p.add_argument("direction", choices=("import", "export"))
    p.add_argument("hf")
    p.add_argument("out")
    p.add_argument("--quant", choices=tuple(QUANT_CONFIGS))
    p.add_argument("--calib-data")
    p.add_argument("--calib-samples", type=int, default=64)
    return p.parse_args(argv[:split]), argv[split + 1:]


def init_megatron(argv: list[str]):
    """Parse, validate and initialize Megatron at world 1 (CPU: gloo and the patches of recipes/cpu_compat.py)."""
    from recipes import cpu_compat

    on_cpu = cpu_compat.apply_torch()
    from megatron.training import get_args
    from megatron.training.arguments import parse_and_validate_args
    from megatron.training.initialize import initialize_megatron

    if on_cpu:
        cpu_compat.apply_megatron()
    from recipes.pretrain import _no_one_logger_without_its_package, _use_prebuilt_dataset_helpers

    _use_prebuilt_dataset_helpers()
    sys.argv = [sys.argv[0], *argv]
    parse_and_validate_args(extra_args_provider=_no_one_logger_without_its_package)
    initialize_megatron(allow_no_cuda=on_cpu)
    return get_args(), on_cpu


def build_model(args):
    """The GPT model of the argv, as megatron.training builds it (Float16Module around it for BF16), unwrapped
    for modelopt; the list form is what Megatron's checkpoint functions take."""
    from megatron.core.process_groups_config import ProcessGroupCollection
    from megatron.training.argument_utils import gpt_config_from_args, pretrain_cfg_container_from_args
    from megatron.core.utils import unwrap_model

    container = pretrain_cfg_container_from_args(args, gpt_config_from_args(args))
    builder = container.model.get_builder_cls()(container.model)
    models = builder.build_distributed_models(pg_collection=ProcessGroupCollection.use_mpu_process_groups(),
                                              ddp_config=container.ddp, wrap_with_ddp=False)
    return models, unwrap_model(models[0])


def _dtype(args):
    import torch

    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32


VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


def _rows_as_built(rows: int) -> None:
    """modelopt copies embedding and lm_head row for row; where Megatron built fewer rows (its tokenizer's padded
    vocabulary, smaller than the HF embedding: the launcher checked it is not larger), take the first `rows`: the
    rest lie past the tokenizer and are never looked up."""
    from modelopt.torch.export.plugins import megatron_importer

    cls = megatron_importer.GPTModelImporter
    orig = cls._get_safetensor

    def get(self, key, *a, **kw):
        t = orig(self, key, *a, **kw)
        return t[:rows] if key in VOCAB_TENSORS and t.shape[0] > rows else t
    cls._get_safetensor = get


def do_import(hf_dir: str, out: str, args) -> None:
    from megatron.training.checkpointing import save_checkpoint
    from modelopt.torch.export import import_mcore_gpt_from_hf

    models, model = build_model(args)
    _rows_as_built(args.padded_vocab_size)
    import_mcore_gpt_from_hf(model, hf_dir, dtype=_dtype(args), moe_router_dtype=args.moe_router_dtype)
    # iteration 0, no optimizer: what --pretrained-checkpoint loads (Megatron sets finetune, starts at step 0)
    save_checkpoint(0, models, None, None, 0)
    print(f"recipes.convert: imported {hf_dir} into {out} ({sum(p.numel() for p in model.parameters()):,} "
          "parameters)", flush=True)


def read_sequences(prefix: str, seq_length: int, samples: int) -> list:
    """`samples` sequences of seq_length + 1 tokens from Megatron indexed data, documents concatenated in file order
    (PTQ calibration sees real text and the order does not matter for amax; recipes/convert_check.py needs the same
    tokens for both models, nothing more)."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    need = seq_length + 1
    chunks, have = [], 0
    for i in range(len(ds)):
        if have >= samples * need:
            break
        chunks.append(ds[i])
        have += len(ds[i])
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    n = min(samples, len(tokens) // need)
    if n == 0:
        raise ConvertError(f"{prefix}: {len(tokens)} tokens, fewer than one sequence of {need} "
                           "(train.seq_length + 1). Fix: prepare more text, or a shorter train.seq_length")
    return [tokens[i * need:(i + 1) * need].astype(np.int64) for i in range(n)]


def _forward_loop(args, batches):
    """modelopt's calibration loop: plain forward passes of the GPT model over the calibration sequences."""
    import torch

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")

    def loop(model):
        model.eval()
        with torch.no_grad():
            for seq in batches:
                ids = torch.from_numpy(seq[:-1]).unsqueeze(0).to(device)
                pos = torch.arange(ids.shape[1], device=device).unsqueeze(0)
                model(ids, pos, attention_mask=None)
    return loop


def quantize(model, args, quant: str, calib_data: str, samples: int) -> None:
    import modelopt.torch.quantization as mtq

    batches = read_sequences(calib_data, args.seq_length, samples)
    mtq.quantize(model, getattr(mtq, QUANT_CONFIGS[quant]), _forward_loop(args, batches))
    print(f"recipes.convert: {quant} post-training quantization calibrated on {len(batches)} sequences of "
          f"{args.seq_length} tokens from {calib_data}", flush=True)


def _vocab_as_built(config: Path, rows: int) -> None:
    """config.json's vocab_size = the embedding's rows. With a Hugging Face tokenizer Megatron sizes the
    vocabulary from the tokenizer (padded), not from model.vocab_size, which the launcher wrote there."""
    cfg = json.loads(config.read_text())
    if cfg.get("vocab_size") != rows:
        print(f"recipes.convert: vocab_size {cfg.get('vocab_size')} -> {rows} (the embedding Megatron built)",
              flush=True)
        cfg["vocab_size"] = rows
        config.write_text(json.dumps(cfg, indent=2) + "\n")


def do_export(hf_config: str, out: str, args, opts: argparse.Namespace) -> None:
    from megatron.training.checkpointing import load_checkpoint
    from modelopt.torch.export import export_mcore_gpt_to_hf

    models, model = build_model(args)
    iteration, _ = load_checkpoint(models, None, None, strict=True)
    _vocab_as_built(Path(hf_config) / "config.json", args.padded_vocab_size)
    if opts.quant:
        quantize(model, args, opts.quant, opts.calib_data, opts.calib_samples)
    export_mcore_gpt_to_hf(model, hf_config, dtype=_dtype(args), export_dir=out,
                           moe_router_dtype=args.moe_router_dtype)
    print(f"recipes.convert: exported iteration {iteration} of {args.load} to {out}"
          f"{' (' + opts.quant + ')' if opts.quant else ''}", flush=True)


def main(argv: list[str]) -> int:
    opts, megatron_argv = _options(argv)
    t0 = time.time()
    try:
        from recipes import hf_families

        hf_families.register()
        args, on_cpu = init_megatron(megatron_argv)
        if opts.quant == "nvfp4" and on_cpu:
            raise ConvertError("--quant=nvfp4: NVFP4 fake quantization runs modelopt's CUDA kernels; this machine "
                               "has no GPU. Fix: export on a GPU host, or --quant fp8")
        from recipes import moe_keys

        if opts.direction == "import":
            moe_keys.te_keys_for_local_moe_layers()  # the layout TE runs load (recipes/moe_keys.py)
            do_import(opts.hf, opts.out, args)
        else:
            moe_keys.for_checkpoint(args.load, args.ckpt_step)
            do_export(opts.hf, opts.out, args, opts)
    except ConvertError as e:
        print(f"recipes.convert: error: {e}", file=sys.stderr, flush=True)
        return 3
    finally:
        close_process_group()
    print(f"recipes.convert: done in {time.time() - t0:.1f}s ({'cpu' if on_cpu else 'cuda'})", flush=True)
    return 0


def close_process_group() -> None:
    """Tear the process group down before the interpreter exits: left to exit-time destructors, its threads
    aborted an export that had finished ("terminate called without an active exception", exit -6, seen on CPU)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    raise SystemExit(main(sys.argv[1:]))

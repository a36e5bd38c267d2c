"""Does the Hugging Face checkpoint compute what the Megatron checkpoint computes? (compute side of moe-convert
compare; the GPU host's evidence for issue 19):

    python -m recipes.convert_check HF_DIR JSON_OUT --data PREFIX [--samples N] -- <megatron argv with --load>

The same token sequences (the first N of seq_length + 1 tokens from Megatron indexed data, e.g. held-out text
prepared with moe-prepare-data) go through the Megatron GPT model loaded from its checkpoint at world 1 and
through transformers' AutoModelForCausalLM loaded from HF_DIR. Printed and written to JSON_OUT, per model:
next-token accuracy and mean cross-entropy over every position; between them: the share of positions where
the top-1 token agrees and the largest absolute logit difference.

A modelopt-quantized export (hf_quant_config.json) is read by dequantizing its FP8 weights (weight x
weight_scale) into a BF16 copy first: transformers 5.17 does not know modelopt's quant_method and would load the
FP8 bytes without their scales (it warns and "skips the quantization"). That measures the weights' rounding;
activation quantization (input_scale) is what an inference engine (TensorRT-LLM, vLLM, SGLang) adds on top.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def _options(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(prog="recipes.convert_check")
    p.add_argument("hf")
    p.add_argument("json_out")
    p.add_argument("--data", required=True)
    p.add_argument("--samples", type=int, default=16)
    return p.parse_args(argv[:split]), argv[split + 1:]


def dequantized_copy(src: Path, dst: Path) -> Path:
    """A BF16 copy of a modelopt FP8 export that transformers loads with the scales applied."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors: dict = {}
    for f in sorted(src.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    out = {}
    for name, t in tensors.items():
        if name.endswith((".input_scale", ".weight_scale", "_scale")) and not name.endswith(".weight"):
            continue  # scales: applied below (weights) or an inference engine's business (activations)
        scale = tensors.get(name[: -len("weight")] + "weight_scale") if name.endswith(".weight") else None
        if name.endswith(".weight") and t.dtype == torch.uint8:
            raise ValueError(f"{name} is packed FP4 (NVFP4): transformers 5.17 cannot run it and this check "
                             "dequantizes FP8 only; serve it with TensorRT-LLM, vLLM or SGLang")
        if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            if scale is None:
                raise ValueError(f"{name} is FP8 without a weight_scale: not modelopt's per-tensor FP8 format")
            t = t.float() * scale.float()
        out[name] = t.to(torch.bfloat16).contiguous()
    dst.mkdir(parents=True, exist_ok=True)
    save_file(out, str(dst / "model.safetensors"))
    config = json.loads((src / "config.json").read_text())
    config.pop("quantization_config", None)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def _metrics(logits, ids) -> dict:
    import torch.nn.functional as F

    pred, target = logits[:, :-1].float(), ids[:, 1:]
    loss = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1)).item()
    acc = (pred.argmax(-1) == target).float().mean().item()
    return {"next_token_accuracy": acc, "loss": loss}


def hf_logits(hf_dir: Path, sequences, device) -> list:
    """transformers' logits for each sequence, on the CPU. Computed before Megatron is initialized: after it, the
    same transformers model gave other logits from run to run on CPU (measured: loss 6.2662 vs 6.2686)."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=dtype).to(device).eval()
    with torch.no_grad():
        out = [hf(input_ids=torch.from_numpy(seq).unsqueeze(0).to(device)).logits.float().cpu() for seq in sequences]
    del hf
    return out


def megatron_logits(models, sequences, device) -> list:
    import torch

    meg = models[0]
    meg.eval()
    out = []
    with torch.no_grad():
        for seq in sequences:
            ids = torch.from_numpy(seq).unsqueeze(0).to(device)
            pos = torch.arange(ids.shape[1], device=device).unsqueeze(0)
            out.append(meg(ids, pos, attention_mask=None).float().cpu())
    return out


def compare(ours: list, theirs: list, sequences) -> dict:
    import torch

    ids = torch.stack([torch.from_numpy(s) for s in sequences])
    a = torch.cat(ours)
    b = torch.cat(theirs)[..., : a.shape[-1]]  # both have exactly vocab_size columns (import checks the padding)
    return {"sequences": len(sequences), "tokens": int(ids[:, 1:].numel()),
            "megatron": _metrics(a, ids), "hf": _metrics(b, ids),
            "top1_agreement": (a[:, :-1].argmax(-1) == b[:, :-1].argmax(-1)).float().mean().item(),
            "max_abs_logit_diff": (a - b).abs().max().item(), "mean_abs_logit_diff": (a - b).abs().mean().item(),
            "logit_std": b.std().item()}


def _hf_side(hf_dirs: list[str], sequences, device) -> dict:
    """Logits of every HF directory (an FP8 export dequantized first); an unreadable one maps to its reason."""
    out: dict = {}
    for d in hf_dirs:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(d)
            try:
                if (path / "hf_quant_config.json").is_file():
                    path = dequantized_copy(path, Path(tmp) / "bf16")
            except ValueError as e:
                out[d] = str(e)
                continue
            out[d] = hf_logits(path, sequences, device)
    return out


def _line(name: str, r: dict) -> str:
    m, h = r["megatron"], r["hf"]
    return (f"recipes.convert_check: {name}: {r['tokens']} tokens: next-token accuracy megatron "
            f"{m['next_token_accuracy']:.4f} hf {h['next_token_accuracy']:.4f}, loss megatron {m['loss']:.4f} "
            f"hf {h['loss']:.4f}, top-1 agreement {r['top1_agreement']:.4f}, max |logit diff| "
            f"{r['max_abs_logit_diff']:.4f} (mean {r['mean_abs_logit_diff']:.4f})")


def main(argv: list[str]) -> int:
    """HF_DIR and JSON_OUT may be comma-separated lists (one JSON per HF directory): the Megatron model is
    built and run once for all of them."""
    opts, megatron_argv = _options(argv)
    from recipes import hf_families
    from recipes.convert import ConvertError, build_model, init_megatron, read_sequences

    hf_families.register()
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seq_length = int(megatron_argv[megatron_argv.index("--seq-length") + 1])
    try:
        sequences = read_sequences(opts.data, seq_length, opts.samples)
    except ConvertError as e:
        print(f"recipes.convert_check: error: {e}", file=sys.stderr, flush=True)
        return 3
    hf_dirs, outs = opts.hf.split(","), opts.json_out.split(",")
    theirs = _hf_side(hf_dirs, sequences, device)  # first: see hf_logits
    args, on_cpu = init_megatron(megatron_argv)
    from megatron.training.checkpointing import load_checkpoint

    from recipes import moe_keys

    moe_keys.for_checkpoint(args.load, args.ckpt_step)

    models, _ = build_model(args)
    load_checkpoint(models, None, None, strict=True)
    ours = megatron_logits(models, sequences, device)
    failed = 0
    for d, out in zip(hf_dirs, outs):
        if isinstance(theirs[d], str):
            print(f"recipes.convert_check: error: {theirs[d]}", file=sys.stderr, flush=True)
            failed += 1
            continue
        result = compare(ours, theirs[d], sequences)
        result.update({"hf_dir": d, "checkpoint": args.load, "iteration": args.ckpt_step,
                       "quantized": (Path(d) / "hf_quant_config.json").is_file()})
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        print(_line(Path(d).name, result), flush=True)
    return 3 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    from recipes.convert import close_process_group

    try:
        code = main(sys.argv[1:])
    finally:
        close_process_group()  # the reason: recipes/convert.py
    raise SystemExit(code)

"""The Hugging Face transformers peer of the performance benchmark (compute-node side).

    python -m recipes.peer_hf --spec SPEC.json --run-dir DIR            # one GPU (or CPU)
    torchrun --nproc-per-node N -m recipes.peer_hf --spec ... --run-dir # N GPUs, data parallel (DDP)

What a user would otherwise write: `Qwen3MoeForCausalLM` (or `MixtralForCausalLM`) from transformers,
built from the same architecture as our recipe (launcher/tools/bench.py writes SPEC.json from the composed
config), random tokens of the same sequence length, the same tokens per optimizer step (global batch =
micro batch x accumulation x data-parallel ranks), gradient clipping at 1.0 like Megatron, and torch's
fused AdamW. Numerics ("pure_bf16", the only mode): BF16 weights, BF16 gradients and BF16 AdamW states
(torch keeps optimizer state in the parameter dtype); no FP32 master weights; the loss is computed in
FP32 (transformers upcasts the logits). Experts run through transformers' `grouped_mm` implementation
(torch's grouped GEMM, one kernel per projection) and attention through PyTorch SDPA, unless the spec
says otherwise.

Writes into DIR: train.log (one line per step), peer_series.jsonl, peer.json (versions, GPU, spec, peak
memory, status). The launcher computes the steady state and the FLOP rate (Megatron's formula) from them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

FAMILIES = {"qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM"),
            "mixtral": ("MixtralConfig", "MixtralForCausalLM")}


def _dist():
    """(rank, world, local_rank); initialises NCCL/gloo when torchrun started several processes."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return rank, world, local


def build_model(spec: dict, device):
    import torch
    import transformers

    config_cls, model_cls = (getattr(transformers, n) for n in FAMILIES[spec["family"]])
    config = config_cls(**spec["hf_config"])
    config._experts_implementation = spec.get("experts_implementation")  # grouped_mm / batched_mm / eager
    config._attn_implementation = spec.get("attn_implementation", "sdpa")
    torch.manual_seed(spec.get("seed", 1234))
    with torch.device(device):  # allocate straight on the GPU: a 5B-parameter init on the CPU takes minutes
        model = model_cls(config)
    return model.to(torch.bfloat16), config


def _versions(device) -> dict:
    import torch
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda,
           "python": sys.version.split()[0], "device": str(device)}
    if device.type == "cuda":
        out.update(gpu_name=torch.cuda.get_device_name(device), gpus_visible=torch.cuda.device_count())
    return out


def _batch(spec: dict, mbs: int, device, gen):
    import torch

    return torch.randint(0, spec["hf_config"]["vocab_size"], (mbs, spec["seq_length"]), device=device,
                         generator=gen)


def train(spec: dict, run_dir: Path) -> int:
    import torch

    rank, world, local = _dist()
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    mbs, gbs = spec["micro_batch_size"], spec["global_batch_size"]
    if gbs % (mbs * world):
        raise SystemExit(f"peer: global_batch_size {gbs} is not a multiple of micro_batch_size {mbs} x {world} ranks")
    accum = gbs // (mbs * world)
    model, config = build_model(spec, device)
    ddp = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[local] if device.type == "cuda" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.get("lr", 1.2e-4), betas=(0.9, 0.95), weight_decay=0.1,
                            fused=device.type == "cuda")
    gen = torch.Generator(device=device).manual_seed(spec.get("seed", 1234) + rank)
    log = open(run_dir / "train.log", "a") if rank == 0 else None
    series = open(run_dir / "peer_series.jsonl", "w") if rank == 0 else None
    profiler = _Profiler(spec.get("profile_steps"), run_dir, rank)
    n_params = sum(p.numel() for p in params)
    if rank == 0:
        print(f"peer: {spec['family']} {n_params / 1e9:.3f}B parameters, {config.num_hidden_layers} layers, "
              f"experts={config._experts_implementation} attn={config._attn_implementation}, "
              f"MBS {mbs} x {accum} accumulation x {world} ranks = GBS {gbs}, seq {spec['seq_length']}",
              file=log, flush=True)
    for step in range(1, spec["train_iters"] + 1):
        profiler.before(step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        total = torch.zeros((), device=device)
        for micro in range(accum):
            tokens = _batch(spec, mbs, device, gen)
            sync = world == 1 or micro == accum - 1  # all-reduce once per step, like Megatron's DDP
            ctx = ddp.no_sync() if not sync else contextlib.nullcontext()
            with ctx:
                out = ddp(input_ids=tokens, labels=tokens, output_router_logits=True)
                (out.loss / accum).backward()
            total += out.loss.detach() / accum
        grad_norm = torch.nn.utils.clip_grad_norm_(params, spec.get("clip_grad", 1.0))
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) * 1000
        profiler.after(step)
        if rank == 0:
            row = {"iteration": step, "step_ms": round(ms, 2), "loss": round(float(total), 6),
                   "grad_norm": round(float(grad_norm), 4), "global_batch_size": gbs}
            if device.type == "cuda":
                row["max_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                row["max_reserved_mb"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
            series.write(json.dumps(row) + "\n")
            series.flush()
            print(f"peer: iteration {step}/{spec['train_iters']} | step {ms:.1f} ms | loss {row['loss']:.4f} | "
                  f"grad norm {row['grad_norm']:.3f}", file=log, flush=True)
    profiler.finish()
    if rank == 0:
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        (run_dir / "peer.json").write_text(json.dumps({
            "schema": "moe-recipes/peer-run/1", "status": "ok", "spec": spec, "world_size": world,
            "grad_accum": accum, "parameters": n_params, "max_allocated_mb": peak,
            "numerics": "pure_bf16: BF16 weights, gradients and AdamW states, no FP32 master copy; FP32 loss",
            "versions": _versions(device)}, indent=1))
    return 0


class _Profiler:
    """torch.profiler over steps START..END (1-based, inclusive) when the spec asks; summary by
    launcher.records.trace_summary next to the trace, like recipes/profiling.py does for Megatron runs."""

    def __init__(self, steps, run_dir: Path, rank: int):
        self.window = tuple(steps) if steps else None
        self.run_dir, self.rank, self.prof = run_dir, rank, None

    def before(self, step: int) -> None:
        if self.window and step == self.window[0]:
            import torch

            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                           torch.profiler.ProfilerActivity.CUDA])
            self.prof.__enter__()

    def after(self, step: int) -> None:
        if self.prof is not None and step == self.window[1]:
            self.finish()

    def finish(self) -> None:
        if self.prof is None:
            return
        prof, self.prof = self.prof, None
        prof.__exit__(None, None, None)
        if self.rank != 0:
            return
        from recipes.profiling import export

        export(prof, self.rank, self.window[1] - self.window[0] + 1, self.run_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="recipes.peer_hf", description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", required=True, help="JSON written by launcher/tools/bench.py")
    ap.add_argument("--run-dir", required=True)
    a = ap.parse_args(argv)
    spec = json.loads(Path(a.spec).read_text())
    run_dir = Path(a.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return train(spec, run_dir)
    except Exception as e:  # the record says why it stopped (OOM at a large MBS is an expected answer)
        if int(os.environ.get("RANK", "0")) == 0:
            (run_dir / "peer.json").write_text(json.dumps({
                "schema": "moe-recipes/peer-run/1", "status": "failed", "spec": spec,
                "error": f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"}, indent=1))
        raise


if __name__ == "__main__":
    raise SystemExit(main())

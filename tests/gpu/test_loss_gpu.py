"""On the GPU host (`python -m pytest -m gpu tests/gpu`): recipes/loss.py's lean loss, compiled by torch.compile on
the GPU, against Megatron's native fused loss (fusions/fused_cross_entropy.py) at the one-H200 bench shape's
vocabulary: the same per-token loss and BF16 gradient, and a smaller peak than Megatron's (no FP32 logits copy)."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu

ROWS, VOCAB = 8192, 151936  # two 4096-token sequences of Qwen3-30B-A3B's vocabulary


def _run(fn, logits, target, weight):
    import torch

    x = logits.clone().requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn(x, target)
    (out * weight).sum().backward()
    torch.cuda.synchronize()
    return out.detach(), x.grad, torch.cuda.max_memory_allocated() - base


def test_lean_loss_equals_megatrons_fused_loss_on_the_gpu(tmp_path):
    import torch
    import torch.distributed as dist

    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    from megatron.core.fusions.fused_cross_entropy import fused_vocab_parallel_cross_entropy

    from recipes.loss import lean_cross_entropy

    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        group = dist.new_group([0])
        g = torch.Generator(device="cuda").manual_seed(0)
        logits = (torch.randn(ROWS, 1, VOCAB, device="cuda", generator=g) * 3).to(torch.bfloat16)
        target = torch.randint(0, VOCAB, (ROWS, 1), device="cuda", generator=g)
        weight = torch.rand(ROWS, 1, device="cuda", generator=g) / ROWS
        ref_loss, ref_grad, ref_peak = _run(lambda x, t: fused_vocab_parallel_cross_entropy(x, t, group),
                                            logits, target, weight)
        for _ in range(2):  # the first call compiles
            loss, grad, peak = _run(lambda x, t: lean_cross_entropy(x, t, group), logits, target, weight)
    finally:
        dist.destroy_process_group()
    assert torch.allclose(loss, ref_loss, atol=1e-4, rtol=1e-5)
    diff = (grad.float() - ref_grad.float()).abs()
    assert diff.max().item() <= 2 * torch.finfo(torch.bfloat16).eps * ref_grad.float().abs().max().item()
    entries = ROWS * VOCAB
    print(f"peak above the logits: native {ref_peak / entries:.2f} B, lean {peak / entries:.2f} B per entry")
    assert peak < 0.6 * ref_peak
    assert peak / entries < 2.5  # the backward scales the saved gradient in place: no second copy of it

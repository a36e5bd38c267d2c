"""recipes/loss.py (train.cross_entropy_fusion_impl=lean): the same loss and gradient as Megatron's own
vocab-parallel cross entropy, at one rank and split over two tensor-parallel ranks (gloo), with the logits
left as they were and nothing saved in FP32; MOE_CROSS_ENTROPY installs it for every LanguageModule."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recipes import loss

S, B, V = 9, 2, 640


def _case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(S, B, V, generator=g) * 4).to(torch.bfloat16)
    target = torch.randint(0, V, (S, B), generator=g)
    weight = torch.rand(S, B, generator=g)  # a loss mask / token count scale, different per token
    return logits, target, weight


def _megatron(logits, target, weight, group):
    from megatron.core.tensor_parallel.cross_entropy import vocab_parallel_cross_entropy

    x = logits.clone().requires_grad_()
    out = vocab_parallel_cross_entropy(x, target, tp_group=group)
    (out * weight).sum().backward()
    return out.detach(), x.grad


def _lean(logits, target, weight, group):
    x = logits.clone().requires_grad_()
    out = loss.lean_cross_entropy(x, target, group)
    (out * weight).sum().backward()
    return out.detach(), x.grad


def _close(a, b):
    ref_loss, ref_grad = a
    got_loss, got_grad = b
    assert got_loss.dtype == torch.float32 and got_grad.dtype == torch.bfloat16
    assert torch.allclose(got_loss, ref_loss, atol=1e-5, rtol=1e-5)
    # BF16 gradients: Megatron rounds (softmax - onehot) x weight once, the lean loss twice (2^-8 relative each)
    assert torch.allclose(got_grad.float(), ref_grad.float(), atol=2e-3, rtol=1e-2)


def test_equals_megatron_and_torch_at_one_rank(tmp_path):
    logits, target, weight = _case()
    if dist.is_initialized():  # an earlier test in this process left its group
        dist.destroy_process_group()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        group = dist.new_group([0])
        _close(_megatron(logits, target, weight, group), _lean(logits, target, weight, group))
    finally:
        dist.destroy_process_group()
    ref = torch.nn.functional.cross_entropy(logits.float().view(-1, V), target.view(-1), reduction="none")
    assert torch.allclose(loss.lean_cross_entropy(logits, target).view(-1), ref, atol=1e-5)


def test_the_logits_are_not_changed_and_are_kept_without_a_copy():
    logits, target, _ = _case(1)
    x = logits.clone().requires_grad_()
    out = loss.lean_cross_entropy(x, target)
    assert torch.equal(x.detach(), logits)
    kept, lse, target_local = out.grad_fn.saved_tensors
    # the one [rows, V] tensor kept for backward is the logits themselves (their storage), nothing in FP32
    assert kept.data_ptr() == x.data_ptr() and kept.dtype == torch.bfloat16 and kept.shape == (S * B, V)
    assert lse.shape == target_local.shape == (S * B,)


def test_large_logits_do_not_overflow():
    logits, target, weight = _case(2)
    logits = logits + 3000.0  # exp(3000) overflows FP32; the max is subtracted first
    out, grad = _lean(logits.to(torch.bfloat16), target, weight, None)
    assert torch.isfinite(out).all() and torch.isfinite(grad.float()).all()


def _tp_rank(rank: int, path: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    try:
        logits, target, weight = _case(3)
        part = logits[..., rank * (V // 2):(rank + 1) * (V // 2)].contiguous()
        group = dist.group.WORLD
        ref, got = _megatron(part, target, weight, group), _lean(part, target, weight, group)
        results[rank] = (ref[0], ref[1], got[0], got[1])
    finally:
        dist.destroy_process_group()


def test_equals_megatron_split_over_two_tensor_parallel_ranks(tmp_path):
    results = mp.Manager().dict()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_tp_rank, args=(r, str(tmp_path / "pg"), results)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    logits, target, _ = _case(3)
    whole = torch.nn.functional.cross_entropy(logits.float().view(-1, V), target.view(-1), reduction="none")
    for rank in range(2):
        ref_loss, ref_grad, got_loss, got_grad = results[rank]
        _close((ref_loss, ref_grad), (got_loss, got_grad))
        assert torch.allclose(got_loss.view(-1), whole, atol=1e-5)  # every rank has the whole row's loss


def test_apply_installs_the_loss_for_language_models(monkeypatch):
    from megatron.core.models.common.language_module.language_module import LanguageModule
    from megatron.core.models.gpt.gpt_model import GPTModel

    original = LanguageModule.compute_language_model_loss
    monkeypatch.setattr(LanguageModule, "compute_language_model_loss", original)  # restored after the test
    monkeypatch.delenv(loss.ENV, raising=False)
    assert loss.apply() is None and LanguageModule.compute_language_model_loss is original
    monkeypatch.setenv(loss.ENV, "lean")
    assert loss.apply() == "lean"
    assert GPTModel.compute_language_model_loss is loss._compute_language_model_loss


def test_an_unknown_value_is_refused(monkeypatch):
    monkeypatch.setenv(loss.ENV, "fast")
    with pytest.raises(ValueError, match="MOE_CROSS_ENTROPY='fast'.*Fix: set train.cross_entropy_fusion_impl"):
        loss.apply()


def test_the_installed_method_takes_megatrons_layout():
    class Model:
        class pg_collection:  # noqa: N801 - Megatron's attribute name
            tp = None

    logits, target, _ = _case(4)  # logits [s, b, V]; Megatron's labels are [b, s]
    got = loss._compute_language_model_loss(Model(), target.transpose(0, 1), logits)
    assert got.shape == (B, S)
    assert torch.allclose(got.transpose(0, 1), loss.lean_cross_entropy(logits, target))

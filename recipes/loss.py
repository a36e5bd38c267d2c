"""The language-model loss without an FP32 copy of the logits (train.cross_entropy_fusion_impl=lean).

Why: with a 151,936-entry vocabulary the loss is the largest tensor of a step. Megatron's native fused loss
(megatron/core/fusions/fused_cross_entropy.py) turns the BF16 logits into an FP32 copy, works on it in several
passes and keeps the FP32 softmax for backward: 10 bytes per token and vocabulary entry at its peak and 4 kept
(launcher/plan/estimate_memory.py, measured), and 19% of the GPU's busy time in the one-H200 4-layer profile
(perf_results/bench/qwen3_30b_a3b_4l_1gpu_h200_torch_experts: 118 of 625 ms, more than the expert GEMMs).
Megatron's other fused loss (Transformer Engine's, `--cross-entropy-fusion-impl te`) is refused by its own
validator in 0.19.2 ("stability issues").

How: the same arithmetic in two reads of the BF16 logits, all of it in FP32 registers (torch.compile fuses each
step into one kernel on a GPU; on CPU the same functions run eagerly):
  1. forward: per row the max m and the sum of exp(x - m) (one reduction kernel); with tensor parallelism the
     per-rank pairs are combined exactly: M = max over ranks, S = sum of s_r * exp(m_r - M) (two small
     all-reduces, and one for the target's logit, which lives on one rank); the logits are kept, not copied;
  2. backward: the gradient (exp(x - lse) - [v == target]) * incoming per-token gradient, formed in FP32 and
     written once in the logits' dtype (one pointwise kernel).
Peak 4 bytes per entry (the kept logits and the gradient being written, in backward), 2 kept; loss =
lse - x[target] as in Megatron's own (log(sum exp(x - m)) - (x[target] - m)), and the gradient rounded once,
after the scale, as Megatron's fused loss does. An earlier version wrote the unscaled gradient in forward and
scaled it in backward: one more pass over the entries (9.3 ms of a 548 ms step at 65,536 x 151,936 on an H200,
perf_results/bench/qwen3_30b_a3b_4l_1gpu_h200_allgather_mbs16) and a second rounding.

Used by `apply()` (recipes/pretrain.py, before the model is built) when the launcher sets MOE_CROSS_ENTROPY=lean:
LanguageModule.compute_language_model_loss is replaced for every GPT model and its MTP layers. The launcher then
passes no --cross-entropy-loss-fusion, so Megatron's validator sees a plain unfused run.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

ENV = "MOE_CROSS_ENTROPY"
IMPLS = ("lean",)


def _row_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, V] -> (max, sum of exp(x - max)) per row, FP32."""
    xf = x.float()
    m = xf.amax(dim=-1)
    return m, torch.exp(xf - m.unsqueeze(-1)).sum(dim=-1)


def _loss_grad(x: torch.Tensor, lse: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """[rows, V] -> (exp(x - lse) - [v == target]) * scale per row, in x's dtype; a target of -1 (on another
    rank) matches nothing."""
    cols = torch.arange(x.shape[-1], device=x.device)
    hit = (cols.unsqueeze(0) == target.unsqueeze(-1)).float()
    return ((torch.exp(x.float() - lse.unsqueeze(-1)) - hit) * scale.unsqueeze(-1)).to(x.dtype)


_compiled: dict = {}


def _kernel(fn, x: torch.Tensor):
    """fn compiled into fused kernels for GPU tensors (once per function); eager on CPU."""
    if not x.is_cuda:
        return fn
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=False)
    return _compiled[fn]


def _group_size(group) -> int:
    if group is None or not torch.distributed.is_initialized():
        return 1
    return torch.distributed.get_world_size(group)


def _vocab_start(vocab_local: int, group) -> int:
    """First vocabulary id on this rank (Megatron's VocabUtility: equal contiguous partitions)."""
    return 0 if _group_size(group) == 1 else torch.distributed.get_rank(group) * vocab_local


def _lse_and_target_logit(x: torch.Tensor, target_local: torch.Tensor, group) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: log-sum-exp over the whole (vocab-parallel) row and the target's logit, FP32."""
    m, s = _kernel(_row_stats, x)(x)
    here = target_local >= 0
    picked = x.gather(-1, target_local.clamp(min=0).unsqueeze(-1)).squeeze(-1).float()
    picked = torch.where(here, picked, torch.zeros_like(picked))
    if _group_size(group) > 1:
        top = m.clone()
        torch.distributed.all_reduce(top, op=torch.distributed.ReduceOp.MAX, group=group)
        s = s * torch.exp(m - top)  # each rank's sum rescaled to the common max: exact, no overflow
        both = torch.stack((s, picked))
        torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.SUM, group=group)
        s, picked, m = both[0], both[1], top
    return m + torch.log(s), picked


class _LeanCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, group) -> torch.Tensor:
        vocab = logits.shape[-1]
        x = logits.reshape(-1, vocab)
        start = _vocab_start(vocab, group)
        t = target.reshape(-1)
        target_local = torch.where((t >= start) & (t < start + vocab), t - start, torch.full_like(t, -1))
        lse, picked = _lse_and_target_logit(x, target_local, group)
        ctx.save_for_backward(x, lse, target_local)  # x is a view of the logits: kept, not copied
        ctx.logits_shape = logits.shape
        return (lse - picked).view(target.shape)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, lse, target_local = ctx.saved_tensors
        grad = _kernel(_loss_grad, x)(x, lse, target_local, grad_output.reshape(-1).float())
        return grad.view(ctx.logits_shape), None, None


def lean_cross_entropy(logits: torch.Tensor, target: torch.Tensor, group=None) -> torch.Tensor:
    """Per-token loss [s, b] from vocab-parallel logits [s, b, V/tp] and targets [s, b] (Megatron's layout)."""
    return _LeanCrossEntropy.apply(logits, target, group)


def _compute_language_model_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """LanguageModule.compute_language_model_loss with the lean loss: labels [b, s], logits [s, b, V/tp]."""
    loss = lean_cross_entropy(logits, labels.transpose(0, 1).contiguous(), self.pg_collection.tp)
    return loss.transpose(0, 1).contiguous()


def apply() -> Optional[str]:
    """Install the loss named by MOE_CROSS_ENTROPY (before the model is built); None: Megatron's own."""
    impl = os.environ.get(ENV, "")
    if not impl:
        return None
    if impl not in IMPLS:
        raise ValueError(f"{ENV}={impl!r}: not one of {', '.join(IMPLS)}. Fix: set "
                         f"train.cross_entropy_fusion_impl to native or lean")
    from megatron.core.models.common.language_module.language_module import LanguageModule

    LanguageModule.compute_language_model_loss = _compute_language_model_loss
    return impl

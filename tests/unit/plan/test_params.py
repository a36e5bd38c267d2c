"""Parameter counts from the configs (launcher/plan/params.py) against the published figures and against a
model Megatron actually builds.

Published figures are rounded (37B, 3.3B, "3B"): a computed total must be within 1% of the published
total; a computed active count within 1% or one unit of the published figure's last digit, whichever is
looser (37B covers 36-38B), counted the way the publisher counts it (launcher.plan.params.Published).
"""
from __future__ import annotations

import contextlib
import io
import math

import pytest

from conftest import make_cfg, plan_for
from launcher.plan.params import PUBLISHED, count, human
from launcher.tools.presets import family_config

FAMILIES = sorted(PUBLISHED)


@pytest.fixture(scope="module")
def counts():
    return {name: count(family_config(name)) for name in FAMILIES}


def _last_digit_unit(x: float) -> float:
    """37e9 -> 1e9, 3.3e9 -> 1e8, 46.7e9 -> 1e8, 1.04e12 -> 1e10: the published figure's precision."""
    mantissa = f"{x:.6e}".split("e")[0].rstrip("0").rstrip(".")
    significant = len(mantissa.replace(".", ""))
    return 10.0 ** (math.floor(math.log10(x)) - (significant - 1))


def test_last_digit_unit():
    assert _last_digit_unit(37e9) == pytest.approx(1e9)
    assert _last_digit_unit(3.3e9) == pytest.approx(1e8)
    assert _last_digit_unit(46.7e9) == pytest.approx(1e8)
    assert _last_digit_unit(1.04e12) == pytest.approx(1e10)
    assert _last_digit_unit(3e9) == pytest.approx(1e9)


@pytest.mark.parametrize("name", FAMILIES)
def test_total_matches_published(name, counts):
    pub, c = PUBLISHED[name], counts[name]
    assert c.total == pytest.approx(pub.total, rel=0.01), f"{human(c.total)} vs {human(pub.total)} ({pub.source})"


def test_kimi_k2_report_figure_is_the_release_plus_one_mtp_layer():
    """Kimi K2: 61 layers x (64-head MLA + 384 experts of 3 x 7168 x 2048) + 1 dense layer + the 163840-token
    embedding and head = 1,026,408,209,408, the count of the released checkpoint (Hugging Face shows 1.03T;
    the same formula gives DeepSeek-V3's 671.0B). The technical report's 1.04T is 1.3% more: it is what one
    DeepSeek-V3-style MTP layer (17.2B) adds; the released config has none (num_nextn_predict_layers 0)."""
    assert count(family_config("kimi_k2")).total == 1_026_408_209_408
    with_mtp = make_cfg(["model=kimi_k2", "model.mtp_num_layers=1"])  # family_config is cached: not mutated
    assert count(with_mtp).total_with_mtp == pytest.approx(1.04e12, abs=0.005e12)


@pytest.mark.parametrize("name", FAMILIES)
def test_active_matches_published(name, counts):
    pub, c = PUBLISHED[name], counts[name]
    active = pub.active_of(c)
    tol = max(0.01 * pub.active, _last_digit_unit(pub.active))
    assert abs(active - pub.active) <= tol, f"{human(active)} vs {human(pub.active)} ({pub.source})"


def test_deepseek_v3_mtp_module_and_hugging_face_count(counts):
    """671B without the MTP module; Megatron's MTP layer shares the embedding and output head (11.6B), the
    Hugging Face checkpoint stores its own copies (671B + 14B = 685B)."""
    c = counts["deepseek_v3"]
    assert c.mtp == pytest.approx(11.6e9, rel=0.01)
    assert c.hf_checkpoint == pytest.approx(685e9, rel=0.01)
    assert c.total_with_mtp == c.total + c.mtp


def test_counts_follow_the_config():
    base = count(family_config("deepseek_v3"))
    proxy = count(make_cfg(["model=deepseek_v3", "model.num_layers=5"]))
    # 5 layers: the same 3 dense layers, 2 MoE layers (58 fewer)
    per_moe_layer = (base.total - proxy.total) / 56
    assert proxy.total < base.total and per_moe_layer == pytest.approx(11.5e9, rel=0.02)
    assert proxy.mtp == base.mtp  # MTP stays


# ------------------------------------------------------------ against the model Megatron builds


def _megatron_param_count(overrides: list[str]) -> tuple[int, int]:
    """Build the GPT model of the overrides with Megatron's local spec on CPU; (main, mtp) parameters."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec, get_gpt_mtp_block_spec
    from megatron.training.argument_utils import core_transformer_config_from_args
    from megatron.training.arguments import validate_args
    from launcher.plan.megatron.parser import parser

    # allgather: the alltoall dispatcher allocates CUDA streams when it is built
    plan = plan_for([*overrides, "dispatcher=allgather"], validate_megatron=False)
    args = parser().parse_args(plan.argv)
    args.rank, args.world_size = 0, 1
    with contextlib.redirect_stdout(io.StringIO()):
        validate_args(args, {})
    cfg = core_transformer_config_from_args(args)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=1)
    try:
        ps.initialize_model_parallel(create_gloo_process_groups=False)
        spec = get_gpt_decoder_block_spec(cfg, use_transformer_engine=False, normalization=args.normalization)
        mtp = get_gpt_mtp_block_spec(cfg, spec, use_transformer_engine=False) if args.mtp_num_layers else None
        model = GPTModel(cfg, spec, vocab_size=args.vocab_size, max_sequence_length=args.max_position_embeddings,
                         share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
                         position_embedding_type=args.position_embedding_type, rotary_percent=args.rotary_percent,
                         rotary_base=args.rotary_base, mtp_block_spec=mtp)
        named = list(model.named_parameters())
    finally:
        ps.destroy_model_parallel()
        dist.destroy_process_group()
    mtp_n = sum(p.numel() for n, p in named if n.startswith("mtp."))
    return sum(p.numel() for _, p in named) - mtp_n, mtp_n


@pytest.mark.parametrize("overrides", [
    ["model=tiny_moe"],
    # every GQA-path feature the families use: dense first layer, gated shared expert, gated attention,
    # QKV bias, partial RoPE, MTP, tied embeddings (zero-centred norms need TE; they add no parameters)
    ["model=tiny_moe", "model.moe_first_k_dense=1", "model.moe_shared_expert_intermediate_size=64",
     "model.moe_shared_expert_gate=true", "model.attention_output_gate=true", "model.add_qkv_bias=true",
     "model.rotary_percent=0.25", "model.mtp_num_layers=1",
     "model.untie_embeddings_and_output_weights=false"],
], ids=["tiny_moe", "tiny_moe_all_features"])
def test_count_equals_megatron_model(overrides):
    """The formulas are Megatron's modules, parameter for parameter (MLA and gated delta net need
    Transformer Engine to build; their formulas are checked by the published totals above)."""
    main, mtp = _megatron_param_count(overrides)
    c = count(make_cfg(overrides))
    assert (c.total, c.mtp) == (main, mtp)

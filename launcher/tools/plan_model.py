"""moe-plan's analytic throughput model: predicted step time of one layout, from the config alone.

    step = compute x (1 + recompute) + TP comm + exposed EP all-to-all + PP point-to-point
           + pipeline bubble + exposed DP gradient/parameter traffic

compute   the slowest pipeline rank's model FLOPs (Megatron's formula, plan/estimate_flops.py) over the GPU's dense
          peak x ACHIEVABLE; expert GEMMs lose efficiency when few tokens reach one expert (gemm_efficiency).
TP        sequence parallel: an all-gather and a reduce-scatter of the micro batch's activations around attention
          and around a dense MLP, forward and backward (MoE layers with ETP 1 route through the dispatcher).
EP        dispatch + combine, forward and backward: 4 exchanges of tokens x top-k x hidden per MoE layer, the
          part to GPUs of the same NVLink domain at NVLink speed, the rest over the network, at the dispatcher's
          link efficiency (or the bandwidth a dispatcher benchmark measured: --dispatch-calibration).
PP        bubble (pp - 1) / (vpp x micro batches) of a step's compute and communication, plus one activation send
          per stage boundary per micro batch, forward and backward.
DP        reduce-scatter of the gradients and all-gather of the parameters (distributed optimizer), hidden behind
          the last micro batch's backward / first forward except DP_EXPOSED of it.
The constants are engineering estimates, named below with their reason; the ranking, not the absolute number, is
what the planner relies on (tests/unit/tools/test_planner.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from launcher.config.schema import RunConfig
from launcher.errors import ConfigError
from launcher.plan.tuned import tuned_config
from launcher.plan.estimate_flops import estimate_flops
from launcher.plan.estimate_memory import padded_vocab
from launcher.plan.estimate_static import layer_positions, rank_params, stage_layouts
from launcher.plan.resolve import Resolved, moe_layer_pattern

GB = 1e9
# Fraction of the dense tensor-core peak a well-fed MoE training step reaches in its GEMMs and the kernels
# between them (norms, router, permutation, loss): the 2x H200 Qwen3-30B-A3B bench preset measures 34% MFU
# with EP comm hidden; published H100 BF16 rows reach 25-35% with communication included.
ACHIEVABLE = {"bf16": 0.42, "fp8": 0.30}  # FP8 GEMMs speed up, the BF16 kernels around them do not
# Tokens per expert GEMM at which it runs at half its large-M efficiency (a GEMM of M rows, M << N, K).
GEMM_HALF_M = 128
# Fraction of the link bandwidth each exchange reaches: NCCL collectives ~70-80% of NVLink and of the NIC;
# NCCL all-to-all less (many small peer messages); DeepEP's published normal kernels ~150 of H800's 160 GB/s
# NVLink and 43-47 of 50 GB/s RDMA, HybridEP similar inside an NVLink domain.
LINK_EFF = {"nccl": (0.75, 0.80), "alltoall": (0.55, 0.55), "allgather": (0.70, 0.75),
            "deepep": (0.75, 0.85), "hybridep": (0.80, 0.85), "ncclep": (0.60, 0.60)}
# Dispatchers that send one copy per destination node (then forward over NVLink): DeepEP / HybridEP.
NODE_DEDUP = ("deepep", "hybridep")
A2A_LATENCY_S = 30e-6  # per exchange: kernel launch + synchronisation of a small all-to-all
# 1F1B EP all-to-all overlap hides an exchange behind another micro batch's compute; what remains exposed.
A2A_OVERLAP_EXPOSED = 0.25
DP_EXPOSED = 0.10  # bucketed, overlapped gradient reduce-scatter / parameter all-gather: the tail stays exposed
# Recompute of memory-bound modules (norms, activation): a fraction of the step each, no GEMM.
ELEMENTWISE_RECOMPUTE = 0.015


@dataclass(frozen=True)
class Calibration:
    """Measured dispatch bandwidth (GB/s, algorithm bandwidth per GPU) by dispatcher name."""

    bandwidth_gbps: dict[str, float] = field(default_factory=dict)
    source: Optional[str] = None


@dataclass(frozen=True)
class Prediction:
    step_s: float
    tflops_per_gpu: float
    parts: dict[str, float]
    """Seconds per step of each term (compute, recompute, tp, ep, pp_p2p, bubble, dp)."""


def dispatcher_name(cfg: RunConfig) -> str:
    d = cfg.dispatcher
    return str(d.flex_backend) if str(d.type) == "flex" else str(d.type)


def gemm_efficiency(rows: float) -> float:
    return rows / (rows + GEMM_HALF_M)


def _peak(cfg: RunConfig) -> tuple[float, float]:
    hw = cfg.hardware
    if cfg.precision.fp8_recipe is not None:
        return hw.peak_tflops_fp8 * 1e12, ACHIEVABLE["fp8"]
    return hw.peak_tflops_bf16 * 1e12, ACHIEVABLE["bf16"]


def _links(cfg: RunConfig) -> tuple[float, float]:
    hw = cfg.hardware
    if hw.nvlink_gbps is None or hw.network_gbps is None:
        raise ConfigError("hardware.nvlink_gbps", hw.nvlink_gbps, f"moe-plan needs the link bandwidths of {hw.name}",
                          f"add nvlink_gbps and network_gbps to conf/hardware/{hw.name}.yaml")
    return hw.nvlink_gbps * GB, hw.network_gbps * GB


def _flop_shares(cfg: RunConfig) -> dict[str, float]:
    """Per-token forward+backward FLOPs of the parts recompute and GEMM efficiency act on (same formula
    as plan/estimate_flops.py: 6 x multiply-adds)."""
    m, s = cfg.model, cfg.train.seq_length
    moe = moe_layer_pattern(cfg)
    n_moe, n_dense = sum(moe), len(moe) - sum(moe)
    gated = 3 if m.swiglu else 2
    shared = m.moe_shared_expert_intermediate_size or 0
    heads_dim = (m.kv_channels or m.hidden_size // m.num_attention_heads) * m.num_attention_heads
    if m.multi_latent_attention:
        heads_dim = m.num_attention_heads * ((m.qk_head_dim or 128) + (m.qk_pos_emb_head_dim or 64))
    return {"experts": 6 * m.hidden_size * m.moe_ffn_hidden_size * m.moe_router_topk * gated * n_moe,
            "shared": 6 * m.hidden_size * shared * gated * n_moe,
            "dense_mlp": 6 * m.hidden_size * m.ffn_hidden_size * gated * n_dense,
            "core_attn": 6 * heads_dim * s * len(moe),
            "logits": 6 * m.hidden_size * padded_vocab(cfg) * (1 + (m.mtp_num_layers or 0))}


def recompute_fraction(cfg: RunConfig, per_token: float) -> float:
    """Extra work of the recompute choice, as a fraction of the step's FLOPs (a forward is 1/3 of them)."""
    r = cfg.recompute
    if str(r.granularity) == "none":
        return 0.0
    sh = _flop_shares(cfg)
    if str(r.granularity) == "full":
        return (per_token - sh["logits"]) / 3 / per_token
    part = {"core_attn": sh["core_attn"], "mlp": sh["dense_mlp"] + sh["shared"], "shared_experts": sh["shared"],
            "moe": sh["experts"], "mla_up_proj": 0.15 * (per_token - sum(sh.values()))}
    extra = 0.0
    for mod in r.modules:
        name = str(mod)
        extra += part[name] / 3 / per_token if name in part else ELEMENTWISE_RECOMPUTE
    return extra


def _rank_units(cfg: RunConfig, res: Resolved) -> float:
    """Work of the slowest pipeline rank over the average rank's (1.0 for an even split): decoder and MTP
    layers count one each, the output layer its logits' FLOPs in layer units."""
    layouts = stage_layouts(cfg, res)
    per_token = estimate_flops(cfg).per_token
    logits = _flop_shares(cfg)["logits"] / (1 + (cfg.model.mtp_num_layers or 0))
    layers = cfg.model.num_layers + (cfg.model.mtp_num_layers or 0)
    layer_flops = (per_token - logits * (1 + (cfg.model.mtp_num_layers or 0))) / layers
    work = []
    for chunks in layouts:
        text = "".join(chunks)
        work.append(layer_flops * (text.count("t") + text.count("m")) + logits * (text.count("L") + text.count("m")))
    return max(work) / (sum(work) / len(work))


def _ep_exchange_s(cfg: RunConfig, tokens: float, nvl: float, net: float, cal: Calibration) -> float:
    """Seconds of one dispatch (or combine) of `tokens` local tokens over the EP group."""
    m, p, hw = cfg.model, cfg.parallel, cfg.hardware
    if p.ep == 1:
        return 0.0
    name = dispatcher_name(cfg)
    k, b = m.moe_router_topk, 2 * m.hidden_size  # BF16 tokens
    span = p.ep * p.etp  # expert ranks: ETP innermost, then EP
    local = max(1, min(span, hw.nvlink_domain) // p.etp)  # EP peers inside this GPU's NVLink domain
    nodes = max(1, p.ep // local)
    eff_in, eff_out = LINK_EFF.get(name, LINK_EFF["alltoall"])
    if name == "allgather":  # every token to every EP rank, no top-k copies
        intra, inter = tokens * b * (local - 1), tokens * b * (p.ep - local)
    else:
        intra = tokens * k * b * (local - 1) / p.ep
        inter = tokens * k * b * (p.ep - local) / p.ep
        if name in NODE_DEDUP and nodes > 1:  # one copy per distinct remote node a token goes to
            inter = tokens * b * (nodes - 1) * (1 - (1 - 1 / nodes) ** k)
    bw_in = cal.bandwidth_gbps.get(name, 0.0) * GB or nvl * eff_in
    t = max(intra / bw_in, inter / (net * eff_out) if inter else 0.0)
    return t + A2A_LATENCY_S


def _dp_s(cfg: RunConfig, res: Resolved, nvl: float, net: float) -> float:
    """Reduce-scatter of the gradients + all-gather of the parameters of the most loaded rank."""
    p, pr = cfg.parallel, cfg.precision
    layouts = stage_layouts(cfg, res)
    positions = layer_positions(layouts, p.pp)
    grad_b = 2 if pr.grad_reduce_in_bf16 else 4
    world = res.world_size
    dp_dense = world // (p.tp * p.pp)  # DP x CP
    dp_exp = world // (p.ep * p.etp * p.pp)
    worst = 0.0
    for r, chunks in enumerate(layouts):
        rp = rank_params(cfg, chunks, positions[r])
        dense = (rp.sharded + rp.embedding_like) / p.tp + rp.replicated
        experts = rp.experts / (p.ep * p.etp)
        t = 0.0
        for params, size, stride in ((dense, dp_dense, p.tp), (experts, dp_exp, p.ep * p.etp)):
            if size > 1:
                bw = nvl * LINK_EFF["nccl"][0] if size * stride <= cfg.hardware.gpus_per_node else \
                    net * LINK_EFF["nccl"][1]
                t += params * (grad_b + 2) * (size - 1) / size / bw
        worst = max(worst, t)
    return worst


def _memo(memo: Optional[dict], key: tuple, compute):
    """The layout-only terms (rank balance, DP traffic) are the same for every MBS, recompute and dispatcher of
    one grid: a search passes one dict for one model and computes them once per grid."""
    if memo is None:
        return compute()
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def predict(cfg: RunConfig, res: Resolved, cal: Optional[Calibration] = None,
            memo: Optional[dict] = None) -> Prediction:
    """Predicted step time and TFLOP/s/GPU (Megatron's model FLOPs, recompute not counted) of one layout."""
    cfg = tuned_config(cfg, res.tuned)  # the overlap and fusions as the run will have them, not `auto`
    cal = cal or Calibration()
    p0 = cfg.parallel
    grid = (p0.tp, p0.cp, p0.pp, p0.vpp, p0.ep, p0.etp, res.pipeline_layout, cfg.train.global_batch_size,
            cfg.train.seq_length)
    m, p, t = cfg.model, cfg.parallel, cfg.train
    nvl, net = _links(cfg)
    world = res.world_size
    dp = world // (p.tp * p.pp * p.cp)
    mbs_count = max(1, t.global_batch_size // (t.micro_batch_size * dp))
    vpp = p.vpp or 1
    flops = _memo(memo, ("flops", *grid[-2:]), lambda: estimate_flops(cfg))
    peak, achievable = _peak(cfg)
    sh = _memo(memo, ("shares", grid[-1]), lambda: _flop_shares(cfg))
    mb_tokens = t.micro_batch_size * t.seq_length / p.cp  # one micro batch on one TP group
    rank_tokens = mb_tokens / p.tp  # sequence parallel: this rank's share before dispatch
    expert_rows = rank_tokens * m.moe_router_topk * p.ep * p.etp / m.num_experts
    eff_share = sh["experts"] / flops.per_token
    efficiency = achievable * (1 - eff_share + eff_share * gemm_efficiency(expert_rows))
    compute = flops.per_step / world / (peak * efficiency) * _memo(memo, ("units", *grid),
                                                                  lambda: _rank_units(cfg, res))
    recompute = compute * recompute_fraction(cfg, flops.per_token)

    moe = _memo(memo, ("moe",), lambda: moe_layer_pattern(cfg))
    per_rank_layers = (m.num_layers + (m.mtp_num_layers or 0)) / p.pp
    moe_share, dense_share = sum(moe) / len(moe), 1 - sum(moe) / len(moe)
    tp_s = 0.0
    if p.tp > 1:
        coll = mb_tokens * 2 * m.hidden_size * (p.tp - 1) / p.tp
        bw = (nvl if p.tp <= cfg.hardware.nvlink_domain else net) * LINK_EFF["nccl"][0]
        per_layer = 4 + 4 * dense_share + (4 * moe_share if p.etp > 1 else 0)  # fwd AG+RS, bwd RS+AG per block
        tp_s = mbs_count * per_rank_layers * per_layer * coll / bw
    ep_one = _ep_exchange_s(cfg, rank_tokens, nvl, net, cal)
    ep_s = mbs_count * per_rank_layers * moe_share * 4 * ep_one
    if "moe" in [str(x) for x in cfg.recompute.modules]:
        ep_s *= 1.5  # the recomputed forward dispatches and combines again
    if cfg.dispatcher.overlap_moe_expert_parallel_comm:
        ep_s = ep_s * A2A_OVERLAP_EXPOSED + max(0.0, ep_s * (1 - A2A_OVERLAP_EXPOSED) - compute)
    pp_s = 0.0
    if p.pp > 1:
        stage_gpus = world // p.pp
        bw = nvl if stage_gpus < cfg.hardware.gpus_per_node else net
        pp_s = mbs_count * vpp * 2 * rank_tokens * 2 * m.hidden_size / (bw * LINK_EFF["nccl"][1])
    busy = compute + recompute + tp_s + ep_s
    bubble = busy * (p.pp - 1) / (vpp * mbs_count)
    dp_t = _memo(memo, ("dp", *grid), lambda: _dp_s(cfg, res, nvl, net))
    window = busy / mbs_count  # the last micro batch's backward / the first one's forward
    dp_s = max(DP_EXPOSED * dp_t, dp_t - window)
    parts = {"compute": compute, "recompute": recompute, "tp": tp_s, "ep": ep_s, "pp_p2p": pp_s,
             "bubble": bubble, "dp": dp_s}
    step = sum(parts.values())
    return Prediction(step_s=step, tflops_per_gpu=flops.per_step / world / step / 1e12, parts=parts)

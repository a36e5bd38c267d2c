"""Static memory of one rank: the parameters a pipeline rank holds (from its layout and launcher/plan/params.py)
and the bytes of its weights, main gradients, main parameters, Adam moments and FP8 weight copies."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from launcher.plan.resolve import Resolved, linear_attention_pattern, moe_layer_pattern
from launcher.plan.layout import parse_layout
from launcher.plan.params import layer_split, mtp_wrap
from launcher.plan.vocab import padded_vocab
from launcher.config.schema import RunConfig

_DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "fp8": 1, "uint8": 1}


def dtype_bytes(name: Optional[str], default: int) -> int:
    return default if name is None else _DTYPE_BYTES[str(name).replace("torch.", "")]


def master_and_moment_bytes(pr) -> tuple[int, int]:
    """Per parameter (cfg.precision): the main copy the optimizer steps (none with FP32 params: they are their
    own master) and Adam's two moments, in the precision-aware optimizer's dtypes where set."""
    main_b = 0 if pr.params_dtype == "fp32" else dtype_bytes(pr.main_params_dtype, 4)
    return main_b, dtype_bytes(pr.exp_avg_dtype, 4) + dtype_bytes(pr.exp_avg_sq_dtype, 4)


def stage_layouts(cfg: RunConfig, res: Resolved) -> list[list[str]]:
    """Per pipeline rank, the layout of each of its virtual stages (Megatron's order: virtual stage v
    of rank r is stage v * PP + r)."""
    p, m = cfg.parallel, cfg.model
    vpp, mtp = p.vpp or 1, m.mtp_num_layers or 0
    n = p.pp * vpp
    if res.pipeline_layout:
        stages = parse_layout(res.pipeline_layout)
    else:
        base, extra = divmod(m.num_layers, n)
        stages = ["t" * (base + (1 if i < extra else 0)) for i in range(n)]
        stages[0] = "E" + stages[0]
        stages[-1] = stages[-1] + "m" * mtp + "L"
    return [[stages[v * p.pp + r] for v in range(vpp)] for r in range(p.pp)]


@dataclass(frozen=True)
class RankParams:
    sharded: float = 0.0
    replicated: float = 0.0
    experts: float = 0.0
    embedding_like: float = 0.0
    """Embedding and output layer (TP-sharded, not FP8 GEMM weights)."""


def rank_params(cfg: RunConfig, chunks: list[str], layer_index: dict[int, int]) -> RankParams:
    """Parameters one pipeline rank holds, before TP/EP division."""
    m = cfg.model
    moe, linear = moe_layer_pattern(cfg), linear_attention_pattern(cfg)
    emb = padded_vocab(cfg) * m.hidden_size
    text = "".join(chunks)
    sharded = replicated = experts = embedding = 0
    for pos, sym in enumerate(text):
        if sym == "t":
            i = layer_index[pos]
            s = layer_split(m, bool(moe[i]), bool(linear[i]))
        elif sym == "m":
            s = layer_split(m, bool(moe[-1]), False)
            sharded += mtp_wrap(m)
        else:
            continue
        sharded, replicated, experts = sharded + s.sharded, replicated + s.replicated, experts + s.experts
    if "E" in text:
        embedding += emb
    elif "m" in text:
        embedding += emb  # MTP layers embed the shifted tokens: the last stage builds its own embedding
    if "L" in text:
        replicated += m.hidden_size  # final norm
        if m.untie_embeddings_and_output_weights or "E" not in text and "m" not in text:
            embedding += emb  # output layer (a tied one is a copy of the embedding on a stage without it)
    return RankParams(sharded, replicated, experts, embedding)


def layer_positions(layouts: list[list[str]], pp: int) -> list[dict[int, int]]:
    """For each rank, position in its joined chunk text -> decoder layer index."""
    first = first_layers(layouts, pp)
    result = []
    for r in range(pp):
        mapping, pos = {}, 0
        for v, chunk in enumerate(layouts[r]):
            i = first[(v, r)]
            for sym in chunk:
                if sym == "t":
                    mapping[pos] = i
                    i += 1
                pos += 1
        result.append(mapping)
    return result


def first_layers(layouts: list[list[str]], pp: int) -> dict[tuple[int, int], int]:
    """(virtual stage, rank) -> index of its first decoder layer."""
    out, index = {}, 0
    for v in range(len(layouts[0])):
        for r in range(pp):
            out[(v, r)] = index
            index += layouts[r][v].count("t")
    return out


def static_memory(cfg: RunConfig, res: Resolved, prm: RankParams) -> dict[str, int]:
    """Weights, gradients, main parameters, moments and FP8 weight copies of one rank."""
    p, pr, t = cfg.parallel, cfg.precision, cfg.train
    dp_cp = res.world_size // (p.tp * p.pp)            # distributed optimizer shards over DP x CP
    edp = res.world_size // (p.ep * p.etp * p.pp)      # expert data parallel
    dense = (prm.sharded + prm.embedding_like) / p.tp + prm.replicated
    expert = prm.experts / (p.ep * p.etp)
    fp32_params = pr.params_dtype == "fp32"
    param_b = 4 if fp32_params else 2
    grad_b = 2 if (pr.grad_reduce_in_bf16 or dtype_bytes(pr.main_grads_dtype, 4) == 2) and not fp32_params else 4
    fp8 = pr.fp8_recipe is not None
    gemm = prm.sharded / p.tp + expert  # GEMM weights TE casts to FP8
    weights = (dense + expert) * param_b - (gemm * (param_b - 1) if fp8 and pr.fp8_param_gather else 0)
    grads = (dense + expert) * grad_b
    # FP8: TE keeps a row-wise and a column-wise (transposed) FP8 copy of each GEMM weight for the step;
    # with FP8 parameters the row-wise copy is the parameter itself
    fp8_weights = gemm * (1 if pr.fp8_param_gather else 2) if fp8 else 0
    shard = dense / dp_cp + expert / edp if p.use_distributed_optimizer or p.use_megatron_fsdp else dense + expert
    main_b, moment_b = master_and_moment_bytes(pr)
    main, moments = shard * main_b, shard * moment_b
    host = 0
    if t.optimizer_cpu_offload:
        host, main, moments = main + moments, 0, 0
    if p.use_megatron_fsdp:
        # FSDP shards weights and gradients as well (the layers' unsharded working copies:
        # estimate_memory.fsdp_working_set)
        weights, grads = weights * shard / (dense + expert), grads * shard / (dense + expert)
    return {"weights": int(weights), "grads": int(grads), "main_params": int(main), "moments": int(moments),
            "fp8_weights": int(fp8_weights), "host_optimizer": int(host)}

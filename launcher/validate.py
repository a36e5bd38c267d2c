"""Login-node validation: one small function per rule, each raising ConfigError(field, value, rule, fix).

Every rule here mirrors a check Megatron-Core makes later (in validate_args, initialize_model_parallel,
TransformerConfig.__post_init__ or at model construction), so a bad config stops here, before any GPU
is allocated, with a message that names our field instead of Megatron's internals.
"""
from __future__ import annotations

from typing import Callable

from launcher.cluster_checks import CLUSTER_RULES
from launcher.derive import Resolved, eval_layer_pattern, moe_layer_pattern
from launcher.errors import ConfigError, closest
from launcher.layout import parse_layout
from launcher.schema import RunConfig

RECOMPUTE_MODULES = ("core_attn", "moe_act", "layernorm", "mla_up_proj", "mlp", "moe", "shared_experts",
                     "gdn_norm_out")
DISPATCHERS = ("alltoall", "allgather", "flex")
FLEX_BACKENDS = ("deepep", "hybridep", "ncclep")
FP8_RECIPES = ("tensorwise", "delayed", "mxfp8", "blockwise")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _choice(field: str, value, options) -> None:
    if value not in options:
        near = closest(str(value), options)
        hint = f"did you mean {near!r}? " if near else ""
        raise ConfigError(field, value, f"must be one of {', '.join(map(str, options))}",
                          f"{hint}set {field} to one of those")


def check_positive_degrees(cfg: RunConfig, res: Resolved) -> None:
    for name in ("tp", "pp", "ep", "etp", "cp"):
        v = getattr(cfg.parallel, name)
        if v < 1:
            raise ConfigError(f"parallel.{name}", v, "parallel degrees must be >= 1", f"set parallel.{name}=1")
    if cfg.cluster.nodes < 1:
        raise ConfigError("cluster.nodes", cfg.cluster.nodes, "need at least one node", "set cluster.nodes=1")
    if res.nproc_per_node < 1:
        raise ConfigError("cluster.gpus_per_node", res.nproc_per_node, "need at least one process per node",
                          "set cluster.gpus_per_node (or run where a GPU is visible)")


def _world_multiple_of(res: Resolved, size: int, names: str, value: str) -> None:
    """Megatron builds its process groups by dividing the world by `size` (initialize_model_parallel)."""
    if res.world_size % size:
        raise ConfigError("parallel", value, f"world size {res.world_size} is not divisible by {names}={size}",
                          f"use a world size that is a multiple of {size} (cluster.nodes x gpus_per_node) "
                          "or change the layout")


def check_world_dense(cfg: RunConfig, res: Resolved) -> None:
    """world % (TP*PP*CP) == 0: the dense (attention) grid."""
    p = cfg.parallel
    _world_multiple_of(res, p.tp * p.pp * p.cp, "tp*pp*cp", f"tp={p.tp} pp={p.pp} cp={p.cp}")


def check_world_expert(cfg: RunConfig, res: Resolved) -> None:
    """world % (ETP*EP*PP) == 0: the expert grid."""
    p = cfg.parallel
    _world_multiple_of(res, p.etp * p.ep * p.pp, "ep*etp*pp", f"ep={p.ep} etp={p.etp} pp={p.pp}")


def check_experts_divisible_by_ep(cfg: RunConfig, res: Resolved) -> None:
    n, ep = cfg.model.num_experts, cfg.parallel.ep
    if n % ep:
        raise ConfigError("parallel.ep", ep, f"model.num_experts={n} is not divisible by ep",
                          f"pick ep from {_divisors(n)}")


def check_topk(cfg: RunConfig, res: Resolved) -> None:
    m = cfg.model
    if not 1 <= m.moe_router_topk <= m.num_experts:
        raise ConfigError("model.moe_router_topk", m.moe_router_topk,
                          f"must be between 1 and model.num_experts={m.num_experts}", "lower moe_router_topk")


def check_heads_tp(cfg: RunConfig, res: Resolved) -> None:
    heads, tp = cfg.model.num_attention_heads, cfg.parallel.tp
    if heads % tp:
        raise ConfigError("parallel.tp", tp, f"model.num_attention_heads={heads} is not divisible by tp",
                          f"pick tp from {_divisors(heads)}")


def check_query_groups_tp(cfg: RunConfig, res: Resolved) -> None:
    """TransformerConfig: query groups must be a multiple or a divisor of TP."""
    g, tp = cfg.model.num_query_groups, cfg.parallel.tp
    if g is not None and g % tp and tp % g:
        raise ConfigError("parallel.tp", tp, f"model.num_query_groups={g} is neither a multiple nor a divisor of tp",
                          f"pick tp from {sorted(set(_divisors(g) + [g * k for k in (2, 4, 8)]))}")


def check_layers_pipeline(cfg: RunConfig, res: Resolved) -> None:
    """validate_args: layers % PP (and layers/PP % layers per virtual stage) without a layout."""
    p, layers = cfg.parallel, cfg.model.num_layers
    if res.pipeline_layout is not None or p.pp == 1 and not p.vpp:
        return
    stages = p.pp * (p.vpp or 1)
    if layers % stages:
        raise ConfigError("parallel", f"pp={p.pp} vpp={p.vpp}",
                          f"model.num_layers={layers} is not divisible by pp*vpp={stages}",
                          "set parallel.pipeline_layout=auto for an uneven balanced split, or change pp/vpp")


def check_vpp(cfg: RunConfig, res: Resolved) -> None:
    p = cfg.parallel
    if p.vpp is not None and p.vpp < 1:
        raise ConfigError("parallel.vpp", p.vpp, "must be >= 1 or null", "set parallel.vpp=null")
    if p.vpp and p.vpp > 1 and p.pp == 1:
        raise ConfigError("parallel.vpp", p.vpp, "virtual pipeline stages need pipeline parallelism (pp > 1)",
                          "set parallel.pp > 1 or parallel.vpp=null")


def check_layout(cfg: RunConfig, res: Resolved) -> None:
    """pipeline_parallel_layer_layout.validate_layer_layout, on our side."""
    if res.pipeline_layout is None:
        return
    p = cfg.parallel
    stages = parse_layout(res.pipeline_layout)
    field, text = "parallel.pipeline_layout", res.pipeline_layout
    if len(stages) % p.pp:
        raise ConfigError(field, text, f"{len(stages)} stages are not divisible by pp={p.pp}",
                          "use a multiple of pp stages")
    if p.vpp and len(stages) != p.pp * p.vpp:
        raise ConfigError(field, text, f"{len(stages)} stages but pp*vpp={p.pp * p.vpp}",
                          "make the stage count pp*vpp or set parallel.vpp=null")
    flat = "".join(stages)
    if not stages[0].startswith("E") or flat.count("E") != 1:
        raise ConfigError(field, text, "the embedding E must open the first stage, once", "start the layout with E")
    if not stages[-1].endswith("L") or flat.count("L") != 1:
        raise ConfigError(field, text, "the loss L must close the last stage, once", "end the layout with L")
    if flat.count("t") != cfg.model.num_layers:
        raise ConfigError(field, text, f"has {flat.count('t')} decoder layers 't' but model.num_layers="
                          f"{cfg.model.num_layers}", "make the count of t match, or set parallel.pipeline_layout=auto")
    mtp = cfg.model.mtp_num_layers or 0
    if flat.count("m") != mtp:
        raise ConfigError(field, text, f"has {flat.count('m')} MTP layers 'm' but model.mtp_num_layers={mtp}",
                          "make the count of m match, or set parallel.pipeline_layout=auto")


def check_sequence_parallel(cfg: RunConfig, res: Resolved) -> None:
    """MoELayer raises at train time when TP > 1 without sequence parallelism."""
    tp = cfg.parallel.tp
    if tp > 1 and not res.sequence_parallel:
        raise ConfigError("parallel.sequence_parallel", cfg.parallel.sequence_parallel,
                          "MoE with tp > 1 requires sequence parallelism", "set parallel.sequence_parallel=true")
    if tp == 1 and cfg.parallel.sequence_parallel:
        raise ConfigError("parallel.sequence_parallel", True, "sequence parallelism needs tp > 1",
                          "set parallel.sequence_parallel=null")


def check_context_parallel(cfg: RunConfig, res: Resolved) -> None:
    cp, seq = cfg.parallel.cp, cfg.train.seq_length
    if cp > 1 and seq % (2 * cp):
        raise ConfigError("train.seq_length", seq, f"with cp={cp} it must be divisible by 2*cp={2 * cp}",
                          f"use a multiple of {2 * cp}")
    if cp > 1 and res.transformer_impl != "transformer_engine":
        raise ConfigError("parallel.cp", cp, "context parallelism needs Transformer Engine attention",
                          "set parallel.cp=1 or model.transformer_impl=transformer_engine on a GPU")


def check_seq_vs_positions(cfg: RunConfig, res: Resolved) -> None:
    seq, maxpos = cfg.train.seq_length, cfg.model.max_position_embeddings
    if seq > maxpos:
        raise ConfigError("train.seq_length", seq, f"exceeds model.max_position_embeddings={maxpos}",
                          f"lower train.seq_length or set model.max_position_embeddings={seq}")


def check_batch(cfg: RunConfig, res: Resolved) -> None:
    """Microbatch calculator: GBS % (MBS * DP) == 0."""
    t = cfg.train
    dp = res.data_parallel_size(cfg)
    if t.micro_batch_size < 1 or t.global_batch_size % (t.micro_batch_size * dp):
        raise ConfigError("train.global_batch_size", t.global_batch_size,
                          f"must be a multiple of micro_batch_size*dp = {t.micro_batch_size}*{dp}",
                          f"use a multiple of {max(1, t.micro_batch_size) * dp}")


def check_lr_schedule(cfg: RunConfig, res: Resolved) -> None:
    """OptimizerParamScheduler asserts warmup < decay steps (decay = train_iters) inside pretrain(),
    after the model is built; validate_args does not check it."""
    t = cfg.train
    if t.lr_warmup_iters >= t.train_iters:
        raise ConfigError("train.lr_warmup_iters", t.lr_warmup_iters,
                          f"warm-up must be shorter than train.train_iters={t.train_iters} (Megatron decays over "
                          "the remaining steps)", f"set train.lr_warmup_iters below {t.train_iters}")


def check_recompute(cfg: RunConfig, res: Resolved) -> None:
    """TransformerConfig recompute rules."""
    r = cfg.recompute
    _choice("recompute.granularity", r.granularity, ("none", "selective", "full"))
    for mod in r.modules:
        _choice("recompute.modules", mod, RECOMPUTE_MODULES)
    if r.granularity == "selective":
        if not r.modules:
            raise ConfigError("recompute.modules", [], "selective recompute needs at least one module",
                              f"list modules from {', '.join(RECOMPUTE_MODULES)}")
        if r.method or r.num_layers:
            raise ConfigError("recompute.method", r.method, "selective recompute takes no method/num_layers",
                              "set recompute.method=null recompute.num_layers=null")
    elif r.granularity == "full":
        if r.method not in ("uniform", "block") or not r.num_layers:
            raise ConfigError("recompute.method", r.method, "full recompute needs method uniform|block and "
                              "num_layers >= 1", "set recompute.method=uniform recompute.num_layers=1")
        if r.modules:
            raise ConfigError("recompute.modules", list(r.modules), "full recompute takes no module list",
                              "set recompute.modules=[] or granularity=selective")
    elif r.modules or r.method:
        raise ConfigError("recompute.granularity", "none", "modules/method given but recompute is off",
                          "set recompute.granularity=selective (or full)")


def check_recompute_prerequisites(cfg: RunConfig, res: Resolved) -> None:
    mods, te = set(cfg.recompute.modules), res.transformer_impl == "transformer_engine"
    if "moe_act" in mods and not (cfg.model.moe_grouped_gemm and te):
        raise ConfigError("recompute.modules", "moe_act", "needs grouped-GEMM experts (Transformer Engine and "
                          "model.moe_grouped_gemm=true)", "drop moe_act or enable both")
    if "layernorm" in mods and not te:
        # CheckpointWithoutOutput references TE's FP8 state manager even in bf16 (random.py:693)
        raise ConfigError("recompute.modules", "layernorm", "output-discarding recompute needs Transformer "
                          "Engine", "drop layernorm or run with model.transformer_impl=transformer_engine")
    if "mla_up_proj" in mods and not cfg.model.multi_latent_attention:
        raise ConfigError("recompute.modules", "mla_up_proj", "needs multi-latent attention "
                          "(model.multi_latent_attention=false)", "drop mla_up_proj")
    if "gdn_norm_out" in mods and cfg.model.experimental_attention_variant != "gated_delta_net":
        raise ConfigError("recompute.modules", "gdn_norm_out", "needs gated delta-net layers "
                          "(model.experimental_attention_variant=gated_delta_net)", "drop gdn_norm_out")
    if "shared_experts" in mods:
        if not cfg.model.moe_shared_expert_intermediate_size:
            raise ConfigError("recompute.modules", "shared_experts", "the model has no shared expert",
                              "drop shared_experts")
        if cfg.dispatcher.shared_expert_overlap:
            raise ConfigError("recompute.modules", "shared_experts", "incompatible with "
                              "dispatcher.shared_expert_overlap", "set dispatcher.shared_expert_overlap=false")


def _pattern(field: str, text: str, num_layers: int) -> list[int]:
    try:
        pattern = eval_layer_pattern(text)
    except (ValueError, SyntaxError, TypeError) as e:
        raise ConfigError(field, text, f"is not a Megatron layer pattern ({e})",
                          'write a list expression of 0 and 1 such as "([0]*3+[1]*58)"') from None
    if len(pattern) != num_layers:
        raise ConfigError(field, text, f"lists {len(pattern)} layers but model.num_layers={num_layers}",
                          "make the pattern as long as model.num_layers (for dense first layers use "
                          "model.moe_first_k_dense, which follows num_layers)")
    return pattern


def check_moe_layer_freq(cfg: RunConfig, res: Resolved) -> None:
    """Megatron's layer-spec builders assert the pattern length; a pattern with no MoE layer has no experts."""
    m = cfg.model
    k = m.moe_first_k_dense
    if k is not None:
        if "[" in m.moe_layer_freq or m.moe_layer_freq.strip() != "1":
            raise ConfigError("model.moe_first_k_dense", k, f"excludes model.moe_layer_freq={m.moe_layer_freq!r}",
                              "set model.moe_layer_freq=1 or model.moe_first_k_dense=null")
        if not 0 <= k < m.num_layers:
            raise ConfigError("model.moe_first_k_dense", k, f"must leave at least one MoE layer of "
                              f"model.num_layers={m.num_layers}", f"set it between 0 and {m.num_layers - 1}")
        return
    text = m.moe_layer_freq.strip()
    if "[" in text:
        if 1 not in _pattern("model.moe_layer_freq", text, m.num_layers):
            raise ConfigError("model.moe_layer_freq", text, "has no MoE layer (no 1)", "mark at least one layer 1")
    elif not text.isdigit() or int(text) < 1:
        raise ConfigError("model.moe_layer_freq", text, "must be a positive integer N (one MoE layer every N) "
                          "or a list expression", 'use "1" (every layer MoE)')


def check_attention_variant(cfg: RunConfig, res: Resolved) -> None:
    """validate_args and TransformerConfig rules for multi-latent attention, gated attention and gated delta net."""
    m, te = cfg.model, res.transformer_impl == "transformer_engine"
    if m.layernorm_zero_centered_gamma and not te:
        raise ConfigError("model.layernorm_zero_centered_gamma", True, "zero-centred norms come from Transformer "
                          f"Engine (torch norms reject them; transformer_impl resolved to {res.transformer_impl})",
                          "run with Transformer Engine or set it to false for a CPU smoke run")
    if m.rope_type is not None:
        _choice("model.rope_type", m.rope_type, ("rope", "yarn"))
        if m.rope_type != "rope" and not m.multi_latent_attention:
            raise ConfigError("model.rope_type", m.rope_type, "only multi-latent attention takes yarn here",
                              "set model.rope_type=null (or rope)")
    if m.mtp_num_layers and m.position_embedding_type not in ("rope", "none"):
        raise ConfigError("model.mtp_num_layers", m.mtp_num_layers, "multi-token prediction needs rope or no "
                          f"position embedding, not {m.position_embedding_type}",
                          "set model.position_embedding_type=rope")
    if m.multi_latent_attention:
        if m.num_query_groups is not None:
            raise ConfigError("model.num_query_groups", m.num_query_groups, "grouped-query attention excludes "
                              "multi-latent attention", "set model.num_query_groups=null")
        if m.attention_output_gate:
            raise ConfigError("model.attention_output_gate", True, "is not supported with multi-latent attention",
                              "set model.attention_output_gate=false")
        if not te:
            # MLASelfAttention passes k/v channels that only TE's DotProductAttention accepts
            raise ConfigError("model.multi_latent_attention", True, "needs Transformer Engine attention "
                              f"(transformer_impl resolved to {res.transformer_impl})",
                              "run on GPUs with Transformer Engine (model.transformer_impl=auto or transformer_engine)")
    variant = m.experimental_attention_variant
    if variant is None:
        if m.linear_attention_freq is not None:
            raise ConfigError("model.linear_attention_freq", m.linear_attention_freq, "is only used with "
                              "model.experimental_attention_variant=gated_delta_net",
                              "set model.linear_attention_freq=null")
        return
    _choice("model.experimental_attention_variant", variant, ("gated_delta_net",))
    if m.linear_attention_freq is None:
        raise ConfigError("model.linear_attention_freq", None, "gated delta net needs the linear/full attention "
                          "pattern", 'set model.linear_attention_freq="4" (every 4th layer full attention)')
    text = m.linear_attention_freq.strip()
    if "[" in text:
        _pattern("model.linear_attention_freq", text, m.num_layers)
    elif not text.isdigit() or int(text) < 1:
        raise ConfigError("model.linear_attention_freq", text, "must be a positive integer N (every N-th layer "
                          "full attention) or a list expression", 'use "4"')
    keys = m.linear_num_key_heads or 16  # Megatron's defaults
    values = m.linear_num_value_heads or 32
    if values % keys:
        raise ConfigError("model.linear_num_value_heads", values, f"must be a multiple of "
                          f"model.linear_num_key_heads={keys}", "change one of them")
    split = cfg.parallel.tp * cfg.parallel.cp
    if keys % split or values % split:
        raise ConfigError("parallel", f"tp={cfg.parallel.tp} cp={cfg.parallel.cp}", f"gated delta net splits its "
                          f"{keys} key and {values} value heads over tp*cp={split}",
                          f"pick tp*cp from {sorted(set(_divisors(keys)) & set(_divisors(values)))}")
    if not te:
        raise ConfigError("model.experimental_attention_variant", variant, "gated delta net is built from "
                          f"Transformer Engine layers (transformer_impl resolved to {res.transformer_impl})",
                          "run on GPUs with Transformer Engine")


def check_dispatcher(cfg: RunConfig, res: Resolved) -> None:
    d = cfg.dispatcher
    _choice("dispatcher.type", d.type, DISPATCHERS)
    if d.type == "flex":
        if d.flex_backend is None:
            raise ConfigError("dispatcher.flex_backend", None, "the flex dispatcher needs a backend",
                              f"set dispatcher.flex_backend to one of {', '.join(FLEX_BACKENDS)}")
        _choice("dispatcher.flex_backend", d.flex_backend, FLEX_BACKENDS)
        if res.device != "cuda" or res.transformer_impl != "transformer_engine":
            raise ConfigError("dispatcher.type", "flex", f"the {d.flex_backend} backend needs CUDA GPUs and "
                              "Transformer Engine", "use dispatcher=alltoall here")
    elif d.flex_backend is not None:
        raise ConfigError("dispatcher.flex_backend", d.flex_backend, f"only used with type=flex, not {d.type}",
                          "set dispatcher=deepep (or hybridep/ncclep), or dispatcher.flex_backend=null")
    if d.shared_expert_overlap:
        if d.type == "allgather":
            raise ConfigError("dispatcher.shared_expert_overlap", True, "needs the alltoall or flex dispatcher",
                              "use dispatcher=alltoall")
        if not cfg.model.moe_shared_expert_intermediate_size:
            raise ConfigError("dispatcher.shared_expert_overlap", True, "the model has no shared expert",
                              "set dispatcher.shared_expert_overlap=false")
    if (d.permute_fusion or d.router_fusion) and res.transformer_impl != "transformer_engine":
        raise ConfigError("dispatcher.permute_fusion" if d.permute_fusion else "dispatcher.router_fusion", True,
                          "fused permute/router kernels come from Transformer Engine",
                          "set it to false or run with Transformer Engine")


def check_router(cfg: RunConfig, res: Resolved) -> None:
    m = cfg.model
    _choice("model.moe_router_score_function", m.moe_router_score_function, ("softmax", "sigmoid", "sqrtsoftplus"))
    if m.moe_router_enable_expert_bias and m.moe_router_score_function == "softmax":
        raise ConfigError("model.moe_router_enable_expert_bias", True, "expert bias needs a sigmoid or "
                          "sqrtsoftplus score function", "set model.moe_router_score_function=sigmoid")
    if m.moe_router_num_groups:
        if m.num_experts % m.moe_router_num_groups:
            raise ConfigError("model.moe_router_num_groups", m.moe_router_num_groups,
                              f"model.num_experts={m.num_experts} is not divisible by it",
                              f"pick from {_divisors(m.num_experts)}")
        if not m.moe_router_group_topk or m.moe_router_group_topk > m.moe_router_num_groups:
            raise ConfigError("model.moe_router_group_topk", m.moe_router_group_topk,
                              f"must be between 1 and moe_router_num_groups={m.moe_router_num_groups}",
                              "set it in that range")
    if m.moe_router_topk == 1 and m.moe_router_score_function == "softmax" and not m.moe_router_pre_softmax:
        raise ConfigError("model.moe_router_pre_softmax", False, "top-1 softmax routing needs pre-softmax "
                          "(softmax over one logit is constant)", "set model.moe_router_pre_softmax=true")


def check_routing(cfg: RunConfig, res: Resolved) -> None:
    _choice("train.routing", cfg.train.routing, ("dropless", "forced_balance"))


def check_precision(cfg: RunConfig, res: Resolved) -> None:
    pr = cfg.precision
    _choice("precision.params_dtype", pr.params_dtype, ("bf16", "fp16", "fp32"))
    if pr.fp8_format is not None or pr.fp8_recipe is not None:
        _choice("precision.fp8_format", pr.fp8_format, ("e4m3", "hybrid"))
        _choice("precision.fp8_recipe", pr.fp8_recipe, FP8_RECIPES)
        if res.transformer_impl != "transformer_engine":
            raise ConfigError("precision.fp8_recipe", pr.fp8_recipe, "FP8 needs Transformer Engine on a GPU",
                              "use precision=bf16 here")
    if pr.use_precision_aware_optimizer and not cfg.parallel.use_distributed_optimizer:
        raise ConfigError("precision.use_precision_aware_optimizer", True, "needs the distributed optimizer",
                          "set parallel.use_distributed_optimizer=true")


def check_fp8_hardware(cfg: RunConfig, res: Resolved) -> None:
    """MXFP8 scales blocks of 32 values with E8M0 exponents in the tensor cores of Blackwell (sm_100+) only."""
    cc = cfg.hardware.compute_capability
    if cfg.precision.fp8_recipe == "mxfp8" and int(cc.split(".")[0]) < 10:
        raise ConfigError("precision.fp8_recipe", "mxfp8", f"needs Blackwell (compute capability >= 10); "
                          f"hardware={cfg.hardware.name} is {cc}", "use hardware=b200 (gb200, gb300) or "
                          "precision=fp8_blockwise on Hopper")


def check_optimizer_offload(cfg: RunConfig, res: Resolved) -> None:
    """validate_args: CPU offload reuses the precision-aware optimizer's code path; with FP8 parameter
    gather it supports delayed scaling only."""
    t, pr = cfg.train, cfg.precision
    if t.overlap_cpu_optimizer_d2h_h2d and not t.optimizer_cpu_offload:
        raise ConfigError("train.overlap_cpu_optimizer_d2h_h2d", True, "overlaps the offloaded optimizer's copies",
                          "set train.optimizer_cpu_offload=true or drop it")
    if t.optimizer_cpu_offload and not pr.use_precision_aware_optimizer:
        raise ConfigError("train.optimizer_cpu_offload", True, "needs precision.use_precision_aware_optimizer=true",
                          "set precision.use_precision_aware_optimizer=true")
    if t.optimizer_cpu_offload and pr.fp8_param_gather and pr.fp8_recipe != "delayed":
        raise ConfigError("train.optimizer_cpu_offload", True, f"with precision.fp8_param_gather needs fp8_recipe "
                          f"delayed, not {pr.fp8_recipe}", "set precision.fp8_param_gather=false")


def check_overlap(cfg: RunConfig, res: Resolved) -> None:
    p = cfg.parallel
    if p.overlap_param_gather and not (p.use_distributed_optimizer and p.overlap_grad_reduce):
        raise ConfigError("parallel.overlap_param_gather", True, "needs use_distributed_optimizer and "
                          "overlap_grad_reduce", "set parallel.overlap_param_gather=false or enable both")


def check_ep_overlap_layout(cfg: RunConfig, res: Resolved) -> None:
    """TransformerConfig: the 1F1B A2A overlap interleaves two microbatches' EP all-to-alls on CUDA streams."""
    d, p, field = cfg.dispatcher, cfg.parallel, "dispatcher.overlap_moe_expert_parallel_comm"
    if not d.overlap_moe_expert_parallel_comm:
        if d.delay_wgrad_compute:
            raise ConfigError("dispatcher.delay_wgrad_compute", True, f"needs {field}=true", f"set {field}=true")
        return
    if p.ep < 2:
        raise ConfigError(field, True, "overlaps expert-parallel communication: needs parallel.ep > 1",
                          "set parallel.ep >= 2 or turn the overlap off")
    if d.type not in ("alltoall", "flex"):
        raise ConfigError(field, True, f"needs the alltoall or flex dispatcher, not {d.type}", "use dispatcher=alltoall")
    if p.pp > 1 and (p.vpp or 1) < 2:
        raise ConfigError(field, True, "with pp > 1 needs the interleaved schedule (virtual pipeline stages)",
                          "set parallel.vpp >= 2")
    if res.device != "cuda" or (d.delay_wgrad_compute and res.transformer_impl != "transformer_engine"):
        raise ConfigError(field, True, "needs CUDA streams (and Transformer Engine for delay_wgrad_compute)",
                          "turn it off here")


def check_ep_overlap_conflicts(cfg: RunConfig, res: Resolved) -> None:
    """TransformerConfig: what the overlapped schedule cannot split or recompute."""
    if not cfg.dispatcher.overlap_moe_expert_parallel_comm:
        return
    field, r = "dispatcher.overlap_moe_expert_parallel_comm", cfg.recompute
    if r.granularity == "full" or "moe" in r.modules:
        raise ConfigError(field, True, "cannot recompute the whole layer or MoE block it splits",
                          "use recompute=norm_act (or none) with the overlap")
    if cfg.precision.params_dtype not in ("bf16", "fp16"):
        raise ConfigError(field, True, f"needs a bf16 or fp16 model, not {cfg.precision.params_dtype}",
                          "use precision=bf16")
    if cfg.dispatcher.shared_expert_overlap:
        raise ConfigError(field, True, "replaces dispatcher.shared_expert_overlap", "set that to false")
    if (cfg.model.mtp_num_layers or 0) > 1:
        raise ConfigError(field, True, "supports at most one MTP layer", "set model.mtp_num_layers to 1 or null")


CUDA_GRAPH_MODULES = ("attn", "mlp", "moe", "moe_router", "moe_preprocess")


def check_cuda_graphs(cfg: RunConfig, res: Resolved) -> None:
    """TransformerConfig / validate_args CUDA-graph rules (transformer_config.py: cuda_graph_* checks)."""
    t, field = cfg.train, "train.cuda_graph_modules"
    mods = list(t.cuda_graph_modules)
    for mod in mods:
        _choice(field, mod, CUDA_GRAPH_MODULES)
    if t.cuda_graph_impl in (None, "none"):
        if mods:
            raise ConfigError(field, mods, "captures nothing without train.cuda_graph_impl",
                              "set train.cuda_graph_impl=transformer_engine")
        return
    _choice("train.cuda_graph_impl", t.cuda_graph_impl, ("local", "transformer_engine", "full_iteration"))
    if res.device != "cuda":
        raise ConfigError("train.cuda_graph_impl", t.cuda_graph_impl, "CUDA graphs need CUDA GPUs",
                          "set train.cuda_graph_impl=null here")
    if t.cuda_graph_impl == "transformer_engine" and res.transformer_impl != "transformer_engine":
        raise ConfigError("train.cuda_graph_impl", t.cuda_graph_impl, "needs Transformer Engine",
                          "use train.cuda_graph_impl=local or run with Transformer Engine")
    if t.cuda_graph_impl == "full_iteration":
        if mods:
            raise ConfigError(field, mods, "must be empty with cuda_graph_impl=full_iteration (the whole step "
                              "is one graph)", f"set {field}=[]")
        return
    if "moe" in mods and "moe_router" in mods:
        raise ConfigError(field, mods, "moe and moe_router exclude each other", "keep one of them")
    if "moe_preprocess" in mods and "moe_router" not in mods:
        raise ConfigError(field, mods, "moe_preprocess is captured together with moe_router", "add moe_router")
    if "mlp" in mods and 0 not in moe_layer_pattern(cfg):
        raise ConfigError(field, mods, "mlp captures dense MLP layers and this model has none", "drop mlp")
    r = cfg.recompute
    if r.granularity == "full":
        raise ConfigError("recompute.granularity", "full", "full recompute works only with "
                          "train.cuda_graph_impl=full_iteration", "use selective recompute with per-layer graphs")
    if t.cuda_graph_impl == "transformer_engine" and "moe" in r.modules and "moe_router" in mods:
        raise ConfigError("recompute.modules", list(r.modules), "recomputing the MoE block would re-run its "
                          "captured router graph", "drop moe from recompute.modules or moe_router from " + field)


def check_cpu_run(cfg: RunConfig, res: Resolved) -> None:
    """What the CPU (gloo, local spec) path cannot do."""
    if res.device != "cpu":
        return
    if res.transformer_impl != "local":
        raise ConfigError("model.transformer_impl", res.transformer_impl, "a CPU run needs the local spec",
                          "set model.transformer_impl=auto (or local)")
    if cfg.parallel.tp > 1 or cfg.parallel.cp > 1:
        raise ConfigError("parallel.tp" if cfg.parallel.tp > 1 else "parallel.cp",
                          max(cfg.parallel.tp, cfg.parallel.cp), "CPU runs support data, expert and pipeline "
                          "parallelism only (torch norms reject sequence parallelism)", "set it to 1 on CPU")
    if cfg.parallel.use_megatron_fsdp:
        raise ConfigError("parallel.use_megatron_fsdp", True, "Megatron FSDP needs CUDA", "set it to false on CPU")


def check_executor(cfg: RunConfig, res: Resolved) -> None:
    c = cfg.cluster
    _choice("cluster.executor", c.executor, ("local", "slurm", "container"))
    if c.executor != "slurm" and c.nodes > 1 and not cfg.launch.dry_run:
        raise ConfigError("cluster.nodes", c.nodes, f"the {c.executor} executor runs on this one machine",
                          "set cluster.nodes=1, cluster=slurm for several nodes, or launch.dry_run=true to render "
                          "a multi-node layout")


def check_data(cfg: RunConfig, res: Resolved) -> None:
    _choice("data.kind", cfg.data.kind, ("mock", "indexed"))
    if cfg.data.kind == "indexed" and not cfg.data.paths:
        raise ConfigError("data.paths", [], "indexed data needs at least one .bin/.idx prefix",
                          "set data.paths=[/path/to/prefix] or data=mock")
    if cfg.data.tokenizer_type != "NullTokenizer" and not cfg.data.tokenizer_model:
        # Megatron's build_tokenizer would only fail once every rank has started
        raise ConfigError("data.tokenizer_model", None, f"{cfg.data.tokenizer_type} needs a tokenizer model",
                          "set data.tokenizer_model (e.g. a Hugging Face id or a path)")
    if cfg.data.kind == "mock" and cfg.data.paths:
        raise ConfigError("data.paths", list(cfg.data.paths), "mock data reads no files", "set data=indexed")


def check_gated_delta_net_mtp(cfg: RunConfig, res: Resolved) -> None:
    """megatron-core 0.19.2 builds MTP through get_gpt_decoder_layer_specs, which asserts on any
    experimental attention variant (training/models/gpt.py mtp_block_spec); validate_args accepts it."""
    m = cfg.model
    if m.experimental_attention_variant and m.mtp_num_layers:
        raise ConfigError("model.mtp_num_layers", m.mtp_num_layers, f"megatron-core 0.19.2 cannot build MTP layers "
                          f"with experimental_attention_variant={m.experimental_attention_variant}",
                          "set model.mtp_num_layers=null")


RULES: tuple[Callable[[RunConfig, Resolved], None], ...] = (
    check_positive_degrees, check_executor, *CLUSTER_RULES, check_world_dense, check_world_expert, check_experts_divisible_by_ep,
    check_topk, check_moe_layer_freq, check_attention_variant, check_heads_tp, check_query_groups_tp, check_vpp,
    check_layers_pipeline, check_layout,
    check_sequence_parallel, check_context_parallel, check_seq_vs_positions, check_batch, check_lr_schedule,
    check_recompute,
    check_recompute_prerequisites, check_dispatcher, check_router, check_routing, check_precision,
    check_fp8_hardware, check_optimizer_offload, check_overlap, check_ep_overlap_layout, check_ep_overlap_conflicts,
    check_cuda_graphs, check_cpu_run, check_data, check_gated_delta_net_mtp,
)


def validate(cfg: RunConfig, res: Resolved) -> None:
    """Run every rule; the first violation raises ConfigError."""
    for rule in RULES:
        rule(cfg, res)

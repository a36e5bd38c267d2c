"""Model and feature rules (recompute, layer patterns, attention variants, dispatcher, router, precision,
optimizer offload, overlap, CUDA graphs): one function each, listed in validate.RULES. Like the others, each
mirrors a check Megatron-Core makes later, so a config stops on the login node under our field's name.
"""
from __future__ import annotations

from typing import Optional

from launcher.plan.resolve import Resolved, eval_layer_pattern, moe_layer_pattern
from launcher.errors import ConfigError
from launcher.plan.rules.common import divisors as _divisors
from launcher.config.choices import FlexBackend, RecomputeModule
from launcher.config.schema import RunConfig



def check_recompute(cfg: RunConfig, res: Resolved) -> None:
    """TransformerConfig recompute rules."""
    r = cfg.recompute
    if r.granularity == "selective":
        if not r.modules:
            raise ConfigError("recompute.modules", [], "selective recompute needs at least one module",
                              f"list modules from {', '.join(RecomputeModule)}")
        if r.method or r.num_layers:
            raise ConfigError("recompute.method", r.method, "selective recompute takes no method/num_layers",
                              "set recompute.method=null recompute.num_layers=null")
    elif r.granularity == "full":
        if r.method is None or not r.num_layers:
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


def _frequency(field: str, text: str, num_layers: int, meaning: str, example: str) -> Optional[list[int]]:
    """A Megatron layer-frequency value: "N" (returns None) or a list expression (returns its pattern)."""
    text = text.strip()
    if "[" in text:
        return _pattern(field, text, num_layers)
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(field, text, f"must be a positive integer N ({meaning}) or a list expression", example)
    return None


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
    pattern = _frequency("model.moe_layer_freq", m.moe_layer_freq, m.num_layers, "one MoE layer every N",
                         'use "1" (every layer MoE)')
    if pattern is not None and 1 not in pattern:
        raise ConfigError("model.moe_layer_freq", m.moe_layer_freq.strip(), "has no MoE layer (no 1)",
                          "mark at least one layer 1")


def check_attention_variant(cfg: RunConfig, res: Resolved) -> None:
    """validate_args and TransformerConfig rules for multi-latent attention, gated attention and gated delta net."""
    m, te = cfg.model, res.transformer_impl == "transformer_engine"
    if m.layernorm_zero_centered_gamma and not te:
        raise ConfigError("model.layernorm_zero_centered_gamma", True, "zero-centred norms come from Transformer "
                          f"Engine (torch norms reject them; transformer_impl resolved to {res.transformer_impl})",
                          "run with Transformer Engine or set it to false for a CPU smoke run")
    if m.rope_type is not None:
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
    if m.linear_attention_freq is None:
        raise ConfigError("model.linear_attention_freq", None, "gated delta net needs the linear/full attention "
                          "pattern", 'set model.linear_attention_freq="4" (every 4th layer full attention)')
    _frequency("model.linear_attention_freq", m.linear_attention_freq, m.num_layers,
               "every N-th layer full attention", 'use "4"')
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
    if d.type == "flex":
        if d.flex_backend is None:
            raise ConfigError("dispatcher.flex_backend", None, "the flex dispatcher needs a backend",
                              f"set dispatcher.flex_backend to one of {', '.join(FlexBackend)}")
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


def check_precision(cfg: RunConfig, res: Resolved) -> None:
    pr = cfg.precision
    if pr.fp8_format is not None or pr.fp8_recipe is not None:
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
        raise ConfigError(field, True, f"needs the alltoall or flex dispatcher, not {d.type}",
                          "use dispatcher=alltoall")
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


def check_cuda_graphs(cfg: RunConfig, res: Resolved) -> None:
    """TransformerConfig / validate_args CUDA-graph rules (transformer_config.py: cuda_graph_* checks)."""
    t, field = cfg.train, "train.cuda_graph_modules"
    mods = list(t.cuda_graph_modules)
    if t.cuda_graph_impl is None:
        if mods:
            raise ConfigError(field, mods, "captures nothing without train.cuda_graph_impl",
                              "set train.cuda_graph_impl=transformer_engine")
        return
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


def check_gated_delta_net_mtp(cfg: RunConfig, res: Resolved) -> None:
    """megatron-core 0.19.2 builds MTP through get_gpt_decoder_layer_specs, which asserts on any
    experimental attention variant (training/models/gpt.py mtp_block_spec); validate_args accepts it."""
    m = cfg.model
    if m.experimental_attention_variant and m.mtp_num_layers:
        raise ConfigError("model.mtp_num_layers", m.mtp_num_layers, f"megatron-core 0.19.2 cannot build MTP layers "
                          f"with experimental_attention_variant={m.experimental_attention_variant}",
                          "set model.mtp_num_layers=null")


def check_topk(cfg: RunConfig, res: Resolved) -> None:
    m = cfg.model
    if not 1 <= m.moe_router_topk <= m.num_experts:
        raise ConfigError("model.moe_router_topk", m.moe_router_topk,
                          f"must be between 1 and model.num_experts={m.num_experts}", "lower moe_router_topk")


def check_torch_grouped_gemm(cfg: RunConfig, res: Resolved) -> None:
    """model.moe_grouped_gemm_impl=torch swaps TEGroupedMLP's two grouped linears for torch's grouped_mm
    (recipes/experts.py): what that module does not implement is refused here."""
    m = cfg.model
    if m.moe_grouped_gemm_impl != "torch":
        return
    fix = "set model.moe_grouped_gemm_impl=te"
    conflicts = (
        # on CPU (no TE) recipes/experts.py puts the same TEGroupedMLP into the local spec
        ("model.transformer_impl", res.transformer_impl,
         res.transformer_impl != "transformer_engine" and res.device != "cpu",
         "the torch experts live inside Megatron's TE grouped MLP (transformer_impl=transformer_engine)"),
        ("model.moe_grouped_gemm", m.moe_grouped_gemm, not m.moe_grouped_gemm, "needs grouped-GEMM experts"),
        ("parallel.etp", cfg.parallel.etp, cfg.parallel.etp != 1, "expert tensor parallelism is not implemented"),
        ("model.add_bias_linear", m.add_bias_linear, m.add_bias_linear, "expert biases are not implemented"),
        ("precision.fp8_recipe", cfg.precision.fp8_recipe, cfg.precision.fp8_format is not None,
         "FP8 expert GEMMs need Transformer Engine's grouped linear"),
        ("dispatcher.delay_wgrad_compute", True, cfg.dispatcher.delay_wgrad_compute,
         "delayed weight gradients are a TE grouped-linear feature"),
        # measured on H200 (perf_results/gpu_test_fsdp_checkpoint_torch_experts_h200.log): the first save fails
        ("parallel.use_megatron_fsdp", True, cfg.parallel.use_megatron_fsdp,
         "Megatron FSDP's fsdp_dtensor checkpoints name each expert by TE's per-expert weights (weight0..N-1, "
         "megatron/core/transformer/fsdp_dtensor_checkpoint.py), not the torch experts' one [N, out, in] weight"),
    )
    for field, value, bad, rule in conflicts:
        if bad:
            raise ConfigError(field, value, f"model.moe_grouped_gemm_impl=torch: {rule}", fix)

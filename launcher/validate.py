"""Login-node validation: one small function per rule, each raising ConfigError(field, value, rule, fix).

Every rule here mirrors a check Megatron-Core makes later (in validate_args, initialize_model_parallel,
TransformerConfig.__post_init__ or at model construction), so a bad config stops here, before any GPU
is allocated, with a message that names our field instead of Megatron's internals.
"""
from __future__ import annotations

from typing import Callable

from launcher.cluster_checks import CLUSTER_RULES
from launcher.derive import Resolved
from launcher.errors import ConfigError
from launcher.feature_checks import (check_attention_variant, check_cuda_graphs, check_dispatcher,
                                     check_ep_overlap_conflicts, check_ep_overlap_layout, check_fp8_hardware,
                                     check_gated_delta_net_mtp, check_moe_layer_freq, check_optimizer_offload,
                                     check_overlap, check_precision, check_recompute,
                                     check_recompute_prerequisites, check_router, check_routing)
from launcher.layout import parse_layout
from launcher.rules import choice as _choice, divisors as _divisors, iteration_window
from launcher.schema import RunConfig


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


def _degree_divides(field: str, degree: int, count_name: str, count: int) -> None:
    """A parallel degree must divide what it splits (experts over EP ranks, heads over TP ranks)."""
    name = field.rsplit(".", 1)[-1]
    if count % degree:
        raise ConfigError(field, degree, f"{count_name}={count} is not divisible by {name}",
                          f"pick {name} from {_divisors(count)}")


def check_experts_divisible_by_ep(cfg: RunConfig, res: Resolved) -> None:
    _degree_divides("parallel.ep", cfg.parallel.ep, "model.num_experts", cfg.model.num_experts)


def check_topk(cfg: RunConfig, res: Resolved) -> None:
    m = cfg.model
    if not 1 <= m.moe_router_topk <= m.num_experts:
        raise ConfigError("model.moe_router_topk", m.moe_router_topk,
                          f"must be between 1 and model.num_experts={m.num_experts}", "lower moe_router_topk")


def check_heads_tp(cfg: RunConfig, res: Resolved) -> None:
    _degree_divides("parallel.tp", cfg.parallel.tp, "model.num_attention_heads", cfg.model.num_attention_heads)


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


def check_torch_grouped_gemm(cfg: RunConfig, res: Resolved) -> None:
    """model.moe_grouped_gemm_impl=torch swaps TEGroupedMLP's two grouped linears for torch's grouped_mm
    (recipes/experts.py): what that module does not implement is refused here."""
    m = cfg.model
    _choice("model.moe_grouped_gemm_impl", m.moe_grouped_gemm_impl, ("te", "torch"))
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
    )
    for field, value, bad, rule in conflicts:
        if bad:
            raise ConfigError(field, value, f"model.moe_grouped_gemm_impl=torch: {rule}", fix)


def check_kernel_profile(cfg: RunConfig, res: Resolved) -> None:
    """train.kernel_profile is START:END whole iterations inside the run (recipes/profiling.py stops the
    profiler at the first forward of END+1, or when training ends)."""
    text = cfg.train.kernel_profile
    if not text:
        return
    fix = f"write START:END with 1 <= START <= END <= train.train_iters={cfg.train.train_iters}, e.g. 5:6"
    try:
        _, end = iteration_window(text)
    except ValueError:
        raise ConfigError("train.kernel_profile", text, "START:END iterations", fix) from None
    if end > cfg.train.train_iters:
        raise ConfigError("train.kernel_profile", text, "the window must lie inside the run", fix)


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


RULES: tuple[Callable[[RunConfig, Resolved], None], ...] = (
    check_positive_degrees, check_executor, *CLUSTER_RULES, check_world_dense, check_world_expert, check_experts_divisible_by_ep,
    check_topk, check_moe_layer_freq, check_attention_variant, check_heads_tp, check_query_groups_tp, check_vpp,
    check_layers_pipeline, check_layout,
    check_sequence_parallel, check_context_parallel, check_seq_vs_positions, check_batch, check_lr_schedule,
    check_recompute,
    check_recompute_prerequisites, check_dispatcher, check_router, check_routing, check_precision,
    check_fp8_hardware, check_optimizer_offload, check_overlap, check_ep_overlap_layout, check_ep_overlap_conflicts,
    check_cuda_graphs, check_torch_grouped_gemm, check_kernel_profile, check_cpu_run, check_data, check_gated_delta_net_mtp,
)


def validate(cfg: RunConfig, res: Resolved) -> None:
    """Run every rule; the first violation raises ConfigError."""
    for rule in RULES:
        rule(cfg, res)

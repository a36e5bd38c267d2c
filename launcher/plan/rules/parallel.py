"""Rules of the parallel layout: world size vs the dense and expert grids, what each degree splits, the
pipeline (layers, VPP, layout string), sequence and context parallelism, and the batch over DP.
One function each, raising ConfigError(field, value, rule, fix); each mirrors a check Megatron-Core makes
later (validate_args, initialize_model_parallel, TransformerConfig.__post_init__)."""
from __future__ import annotations

from launcher.config.schema import RunConfig
from launcher.errors import ConfigError
from launcher.plan.layout import parse_layout
from launcher.plan.resolve import Resolved
from launcher.plan.rules.common import divisors as _divisors


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


def check_batch(cfg: RunConfig, res: Resolved) -> None:
    """Microbatch calculator: GBS % (MBS * DP) == 0."""
    t = cfg.train
    dp = res.data_parallel_size(cfg)
    if t.micro_batch_size < 1 or t.global_batch_size % (t.micro_batch_size * dp):
        raise ConfigError("train.global_batch_size", t.global_batch_size,
                          f"must be a multiple of micro_batch_size*dp = {t.micro_batch_size}*{dp}",
                          f"use a multiple of {max(1, t.micro_batch_size) * dp}")

"""Schema field -> Megatron flag, as a table.

Row kinds:
  VALUE  `--flag value` (omitted when the value is None)
  TRUE   `--flag` when the field is true
  FALSE  `--flag` when the field is false (e.g. add_bias_linear=false -> --disable-bias-linear)
  LIST   `--flag v1 v2 ...` (omitted when empty)
A few fields need a small function (SPECIAL); fields that only steer the launcher are listed in
LAUNCHER_ONLY with the reason; fields resolved per launch go through `resolved_flags` (DERIVED).
tests/unit/plan/test_mapping.py fails when a schema field is in none of these.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from launcher.plan.checkpoint import Checkpointing, checkpoint_flags, distributed_timeout
from launcher.plan.resolve import Resolved, moe_layer_freq
from launcher.config.schema import RunConfig

VALUE, TRUE, FALSE, LIST = "value", "true", "false", "list"

TABLE: tuple[tuple[str, str, str], ...] = (
    # model architecture
    ("model.num_layers", "--num-layers", VALUE),
    ("model.hidden_size", "--hidden-size", VALUE),
    ("model.ffn_hidden_size", "--ffn-hidden-size", VALUE),
    ("model.num_attention_heads", "--num-attention-heads", VALUE),
    ("model.kv_channels", "--kv-channels", VALUE),
    ("model.max_position_embeddings", "--max-position-embeddings", VALUE),
    ("model.make_vocab_size_divisible_by", "--make-vocab-size-divisible-by", VALUE),
    ("model.normalization", "--normalization", VALUE),
    ("model.norm_epsilon", "--norm-epsilon", VALUE),
    ("model.position_embedding_type", "--position-embedding-type", VALUE),
    ("model.rotary_base", "--rotary-base", VALUE),
    ("model.rotary_percent", "--rotary-percent", VALUE),
    ("model.swiglu", "--swiglu", TRUE),
    ("model.qk_layernorm", "--qk-layernorm", TRUE),
    ("model.untie_embeddings_and_output_weights", "--untie-embeddings-and-output-weights", TRUE),
    ("model.add_bias_linear", "--disable-bias-linear", FALSE),
    ("model.attention_dropout", "--attention-dropout", VALUE),
    ("model.hidden_dropout", "--hidden-dropout", VALUE),
    ("model.init_method_std", "--init-method-std", VALUE),
    # MoE
    ("model.num_experts", "--num-experts", VALUE),
    ("model.moe_ffn_hidden_size", "--moe-ffn-hidden-size", VALUE),
    ("model.moe_router_topk", "--moe-router-topk", VALUE),
    ("model.moe_layer_freq", "--moe-layer-freq", VALUE),
    ("model.moe_shared_expert_intermediate_size", "--moe-shared-expert-intermediate-size", VALUE),
    ("model.moe_router_score_function", "--moe-router-score-function", VALUE),
    ("model.moe_router_pre_softmax", "--moe-router-pre-softmax", TRUE),
    ("model.moe_router_topk_scaling_factor", "--moe-router-topk-scaling-factor", VALUE),
    ("model.moe_router_load_balancing_type", "--moe-router-load-balancing-type", VALUE),
    ("model.moe_aux_loss_coeff", "--moe-aux-loss-coeff", VALUE),
    ("model.moe_z_loss_coeff", "--moe-z-loss-coeff", VALUE),
    ("model.moe_router_dtype", "--moe-router-dtype", VALUE),
    ("model.moe_router_enable_expert_bias", "--moe-router-enable-expert-bias", TRUE),
    ("model.moe_router_bias_update_rate", "--moe-router-bias-update-rate", VALUE),
    ("model.moe_router_num_groups", "--moe-router-num-groups", VALUE),
    ("model.moe_router_group_topk", "--moe-router-group-topk", VALUE),
    ("model.mtp_num_layers", "--mtp-num-layers", VALUE),
    ("model.moe_shared_expert_gate", "--moe-shared-expert-gate", TRUE),
    # attention variants, norms, RoPE scaling
    ("model.add_qkv_bias", "--add-qkv-bias", TRUE),
    ("model.attention_output_gate", "--attention-output-gate", TRUE),
    ("model.layernorm_zero_centered_gamma", "--apply-layernorm-1p", TRUE),
    ("model.rope_type", "--rope-type", VALUE),
    ("model.rotary_scaling_factor", "--rotary-scaling-factor", VALUE),
    ("model.mscale", "--mscale", VALUE),
    ("model.mscale_all_dim", "--mscale-all-dim", VALUE),
    # multi-latent attention
    ("model.multi_latent_attention", "--multi-latent-attention", TRUE),
    ("model.q_lora_rank", "--q-lora-rank", VALUE),
    ("model.kv_lora_rank", "--kv-lora-rank", VALUE),
    ("model.qk_head_dim", "--qk-head-dim", VALUE),
    ("model.qk_pos_emb_head_dim", "--qk-pos-emb-head-dim", VALUE),
    ("model.v_head_dim", "--v-head-dim", VALUE),
    # gated delta net (hybrid linear attention)
    ("model.experimental_attention_variant", "--experimental-attention-variant", VALUE),
    ("model.linear_attention_freq", "--linear-attention-freq", VALUE),
    ("model.linear_conv_kernel_dim", "--linear-conv-kernel-dim", VALUE),
    ("model.linear_key_head_dim", "--linear-key-head-dim", VALUE),
    ("model.linear_value_head_dim", "--linear-value-head-dim", VALUE),
    ("model.linear_num_key_heads", "--linear-num-key-heads", VALUE),
    ("model.linear_num_value_heads", "--linear-num-value-heads", VALUE),
    # parallel layout
    ("parallel.tp", "--tensor-model-parallel-size", VALUE),
    ("parallel.pp", "--pipeline-model-parallel-size", VALUE),
    ("parallel.ep", "--expert-model-parallel-size", VALUE),
    ("parallel.etp", "--expert-tensor-parallel-size", VALUE),
    ("parallel.cp", "--context-parallel-size", VALUE),
    ("parallel.use_distributed_optimizer", "--use-distributed-optimizer", TRUE),
    ("parallel.overlap_grad_reduce", "--overlap-grad-reduce", TRUE),
    ("parallel.overlap_param_gather", "--overlap-param-gather", TRUE),
    # dispatcher
    ("dispatcher.type", "--moe-token-dispatcher-type", VALUE),
    ("dispatcher.flex_backend", "--moe-flex-dispatcher-backend", VALUE),
    ("dispatcher.flex_num_sms", "--moe-flex-dispatcher-num-sms", VALUE),
    ("dispatcher.permute_fusion", "--moe-permute-fusion", TRUE),
    ("dispatcher.router_fusion", "--moe-router-fusion", TRUE),
    ("dispatcher.shared_expert_overlap", "--moe-shared-expert-overlap", TRUE),
    ("dispatcher.overlap_moe_expert_parallel_comm", "--overlap-moe-expert-parallel-comm", TRUE),
    ("dispatcher.delay_wgrad_compute", "--delay-wgrad-compute", TRUE),
    # recompute (granularity is SPECIAL: "none" emits nothing)
    ("recompute.modules", "--recompute-modules", LIST),
    ("recompute.method", "--recompute-method", VALUE),
    ("recompute.num_layers", "--recompute-num-layers", VALUE),
    # precision
    ("precision.fp8_format", "--fp8-format", VALUE),
    ("precision.fp8_recipe", "--fp8-recipe", VALUE),
    ("precision.fp8_param_gather", "--fp8-param-gather", TRUE),
    ("precision.use_precision_aware_optimizer", "--use-precision-aware-optimizer", TRUE),
    ("precision.main_grads_dtype", "--main-grads-dtype", VALUE),
    ("precision.main_params_dtype", "--main-params-dtype", VALUE),
    ("precision.exp_avg_dtype", "--exp-avg-dtype", VALUE),
    ("precision.exp_avg_sq_dtype", "--exp-avg-sq-dtype", VALUE),
    ("precision.grad_reduce_in_bf16", "--grad-reduce-in-bf16", TRUE),
    # data
    ("data.split", "--split", VALUE),  # COMPUTED: split_of (its default follows train.eval_iters)
    ("data.tokenizer_type", "--tokenizer-type", VALUE),
    ("data.tokenizer_model", "--tokenizer-model", VALUE),
    ("data.num_workers", "--num-workers", VALUE),
    # training
    ("train.seq_length", "--seq-length", VALUE),
    ("train.micro_batch_size", "--micro-batch-size", VALUE),
    ("train.global_batch_size", "--global-batch-size", VALUE),
    ("train.train_iters", "--train-iters", VALUE),
    ("train.optimizer", "--optimizer", VALUE),
    ("train.optimizer_cpu_offload", "--optimizer-cpu-offload", TRUE),
    ("train.overlap_cpu_optimizer_d2h_h2d", "--overlap-cpu-optimizer-d2h-h2d", TRUE),
    ("train.lr", "--lr", VALUE),
    ("train.min_lr", "--min-lr", VALUE),
    ("train.lr_decay_style", "--lr-decay-style", VALUE),
    ("train.lr_warmup_iters", "--lr-warmup-iters", VALUE),
    ("train.weight_decay", "--weight-decay", VALUE),
    ("train.adam_beta1", "--adam-beta1", VALUE),
    ("train.adam_beta2", "--adam-beta2", VALUE),
    ("train.clip_grad", "--clip-grad", VALUE),
    ("train.seed", "--seed", VALUE),
    ("train.log_interval", "--log-interval", VALUE),
    ("train.eval_iters", "--eval-iters", VALUE),
    ("train.eval_interval", "--eval-interval", VALUE),
    ("train.manual_gc", "--manual-gc", TRUE),
    ("train.manual_gc_interval", "--manual-gc-interval", VALUE),
    ("train.profile", "--profile", TRUE),
    ("train.profile_step_start", "--profile-step-start", VALUE),
    ("train.profile_step_end", "--profile-step-end", VALUE),
    ("train.profile_ranks", "--profile-ranks", LIST),
    ("train.cuda_graph_impl", "--cuda-graph-impl", VALUE),
    ("train.cuda_graph_modules", "--cuda-graph-modules", LIST),
    ("train.tensorboard_dir", "--tensorboard-dir", VALUE),
    ("train.wandb_project", "--wandb-project", VALUE),
    ("train.wandb_exp_name", "--wandb-exp-name", VALUE),
    ("train.wandb_save_dir", "--wandb-save-dir", VALUE),
    # starting weights (moe-convert import); the run's own checkpoints win (training/checkpointing.py load_checkpoint)
    ("train.checkpoint.init_from", "--pretrained-checkpoint", VALUE),
)


def _gqa(cfg: RunConfig) -> list[str]:
    g = cfg.model.num_query_groups
    return [] if g is None else ["--group-query-attention", "--num-query-groups", str(g)]


def _vocab(cfg: RunConfig) -> list[str]:
    # NullTokenizer has no vocabulary file: Megatron takes the size from --vocab-size
    return ["--vocab-size", str(cfg.model.vocab_size)] if cfg.data.tokenizer_type == "NullTokenizer" else []


def _granularity(cfg: RunConfig) -> list[str]:
    g = cfg.recompute.granularity
    return [] if g == "none" else ["--recompute-granularity", g]


def _dtype(cfg: RunConfig) -> list[str]:
    return {"bf16": ["--bf16"], "fp16": ["--fp16"], "fp32": []}[cfg.precision.params_dtype]


def _data(cfg: RunConfig) -> list[str]:
    d = cfg.data
    if d.kind == "mock":
        return ["--mock-data"]
    if d.paths:
        return ["--data-path", *d.paths]
    # separate blends: Megatron's BlendedMegatronDatasetConfig refuses a split beside blend_per_split
    return [*(["--train-data-path", *d.train_paths] if d.train_paths else []),
            *(["--valid-data-path", *d.valid_paths] if d.valid_paths else []),
            *(["--test-data-path", *d.test_paths] if d.test_paths else [])]


def split_of(cfg: RunConfig) -> Optional[str]:
    """data.split, or its default: without evaluation (train.eval_iters=0) Megatron asks for 0 validation
    samples, and a blend of several prefixes then builds a 0-sample validation BlendedDataset whose sampler
    asserts "no sample to consume: 0"; "100,0,0" builds no validation split at all. Mock data keeps
    Megatron's own default (it generates any size asked)."""
    if cfg.data.kind == "indexed" and not cfg.data.paths:
        return None  # separate blends: BlendedMegatronDatasetConfig refuses a split beside blend_per_split
    if cfg.data.split is not None:
        return cfg.data.split
    return "100,0,0" if cfg.data.kind == "indexed" and cfg.train.eval_iters == 0 else "99,1,0"


def _routing(cfg: RunConfig) -> list[str]:
    return ["--moe-router-force-load-balancing"] if cfg.train.routing == "forced_balance" else []


def _fsdp(cfg: RunConfig) -> list[str]:
    # validate_args: Megatron FSDP checkpoints only in its fsdp_dtensor format
    return ["--use-megatron-fsdp", "--ckpt-format", "fsdp_dtensor"] if cfg.parallel.use_megatron_fsdp else []


def _ce(cfg: RunConfig) -> list[str]:
    # Megatron's fused losses (native, te) are its flags; the lean one is ours (recipes/loss.py, MOE_CROSS_ENTROPY),
    # so Megatron sees an unfused loss there. The implementation flag only means something with the fusion on.
    t = cfg.train
    if not t.cross_entropy_loss_fusion or t.cross_entropy_fusion_impl == "lean":
        return []
    return ["--cross-entropy-loss-fusion", "--cross-entropy-fusion-impl", str(t.cross_entropy_fusion_impl)]


SPECIAL: dict[str, Callable[[RunConfig], list[str]]] = {
    "train.cross_entropy_loss_fusion": _ce,
    "train.cross_entropy_fusion_impl": _ce,
    "model.num_query_groups": _gqa,
    "model.vocab_size": _vocab,
    "recompute.granularity": _granularity,
    "precision.params_dtype": _dtype,
    "data.kind": _data,
    "data.paths": _data,
    "data.train_paths": _data,
    "data.valid_paths": _data,
    "data.test_paths": _data,
    "train.routing": _routing,
    "parallel.use_megatron_fsdp": _fsdp,
}

# Resolved per launch (derive.py) and emitted by resolved_flags().
DERIVED = frozenset({
    "model.transformer_impl", "model.moe_grouped_gemm", "parallel.vpp", "parallel.pipeline_layout",
    "parallel.sequence_parallel", "train.gradient_accumulation_fusion",
})

LAUNCHER_ONLY: dict[str, str] = {
    "model.name": "names the run",
    "model.moe_first_k_dense": "folded into the --moe-layer-freq row (COMPUTED: derive.moe_layer_freq)",
    "precision.name": "names the precision option",
    "cluster": "where to run: becomes the torchrun/srun/sbatch/docker command and environment, not Megatron flags",
    "launch": "what the launcher does (dry run, run directory, validation)",
    "hardware": "the target system: MFU peaks, topology and node layout, not Megatron flags",
    "megatron": "the escape hatch itself, appended after the table's flags",
    "model.moe_grouped_gemm_impl": "which module computes the experts (recipes/experts.py), passed as "
                                   "MOE_GROUPED_GEMM_IMPL",
    "data.vocab_size": "the tokenizer's vocabulary, checked against the model's padded vocabulary before launch "
                       "(plan/rules/data.py); Megatron reads it from the tokenizer itself",
    "train.expandable_segments": "the allocator setting, passed as PYTORCH_CUDA_ALLOC_CONF (launcher/plan/tuned.py)",
    "train.kernel_profile": "our own profiler window (recipes/profiling.py), passed as MOE_PROFILE_STEPS",
    "quant": "nvidia-modelopt fake quantization inside the recipe (recipes/qat.py), passed as MOE_QAT: Megatron's "
             "own --modelopt flags need megatron.post_training, which the 0.19.2 wheel lacks",
    "distill": "nvidia-modelopt distillation inside the recipe (recipes/distill.py), passed as MOE_DISTILL",
    "dispatcher.tuned": "a dispatcher benchmark's best knobs, folded into dispatcher.flex_num_sms and megatron.extra "
                        "before mapping (plan/dispatch_tuned.py)",
    # these need the run directory and what it holds: launch_flags() below, through plan/checkpoint.py
    "train.save": "--save (default <run_dir>/checkpoints) in launch_flags",
    "train.save_interval": "--save-interval (default from train_iters) in launch_flags",
    "train.load": "--load (or the run's own newest checkpoint) in launch_flags",
    "train.checkpoint.enabled": "whether launch_flags saves at all",
    "train.checkpoint.resume": "--load/--ckpt-step of the newest complete checkpoint in launch_flags",
    "train.checkpoint.keep_last": ("ours: rank 0 prunes older complete checkpoints during the run (recipes/retention"
                                   ".py, MOE_KEEP_LAST), the launcher after it"),
    "train.checkpoint.async_save": "--async-save --async-strategy mcore --use-persistent-ckpt-worker in launch_flags",
    "train.checkpoint.exit_signal_handler": "--exit-signal-handler in launch_flags",
    "train.checkpoint.host_register": "the pinned host allocator setting, passed as PYTORCH_CUDA_ALLOC_CONF "
                                      "(launcher/plan/tuned.py)",
    "train.distributed_timeout_minutes": "--distributed-timeout-minutes (auto: smoke or real run) in launch_flags",
}


# Flags of one launch into one run directory (launch_flags): checkpoints, resume, signals, timeouts.
LAUNCH_FLAGS: tuple[str, ...] = ("--save", "--save-interval", "--load", "--ckpt-step", "--async-save",
                                 "--async-strategy", "--use-persistent-ckpt-worker", "--exit-signal-handler",
                                 "--distributed-timeout-minutes")


def launch_flags(cfg: RunConfig, res: Resolved, ck: Checkpointing) -> list[str]:
    """Flags that belong to a launch rather than to the model and layout (the golden argv have none): the
    checkpointing decided for this run directory and the collective timeout."""
    return checkpoint_flags(ck) + ["--distributed-timeout-minutes", str(distributed_timeout(cfg, res))]


# Every flag a schema field can emit (TABLE, SPECIAL, DERIVED): megatron.extra/raw may not set these.
# The field behind each flag SPECIAL and DERIVED emit (TABLE rows name their own).
FLAG_FIELDS: dict[str, str] = {
    "--group-query-attention": "model.num_query_groups", "--num-query-groups": "model.num_query_groups",
    "--vocab-size": "model.vocab_size", "--recompute-granularity": "recompute.granularity",
    "--bf16": "precision.params_dtype", "--fp16": "precision.params_dtype", "--mock-data": "data.kind",
    "--data-path": "data.paths", "--train-data-path": "data.train_paths", "--valid-data-path": "data.valid_paths",
    "--test-data-path": "data.test_paths", "--moe-router-force-load-balancing": "train.routing",
    "--use-megatron-fsdp": "parallel.use_megatron_fsdp", "--transformer-impl": "model.transformer_impl",
    "--moe-grouped-gemm": "model.moe_grouped_gemm", "--sequence-parallel": "parallel.sequence_parallel",
    "--pipeline-model-parallel-layout": "parallel.pipeline_layout",
    "--num-virtual-stages-per-pipeline-rank": "parallel.vpp", "--num-layers-per-virtual-pipeline-stage": "parallel.vpp",
    "--no-gradient-accumulation-fusion": "train.gradient_accumulation_fusion",
    "--cross-entropy-fusion-impl": "train.cross_entropy_fusion_impl",
    "--cross-entropy-loss-fusion": "train.cross_entropy_loss_fusion",
}

# Every flag a schema field can emit (TABLE, SPECIAL, DERIVED): megatron.extra/raw may not set these.
OWNED_FLAGS: tuple[str, ...] = tuple(flag for _, flag, _ in TABLE) + tuple(FLAG_FIELDS) + tuple(LAUNCH_FLAGS)


def field_of_flag(flag: str) -> Optional[str]:
    """The schema field that emits a Megatron flag (--num-experts -> model.num_experts), or None."""
    row = next((path for path, f, _ in TABLE if f == flag), None)
    return row or FLAG_FIELDS.get(flag)


# TABLE rows whose value is computed from more than one field.
COMPUTED: dict[str, Callable[[RunConfig], Any]] = {
    "model.moe_layer_freq": moe_layer_freq,  # model.moe_first_k_dense follows model.num_layers
    "data.split": split_of,
}


def _get(cfg: Any, path: str) -> Any:
    if path in COMPUTED:
        return COMPUTED[path](cfg)
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _fmt(value: Any) -> str:
    # floats print in full precision (repr); inf/nan pass through for Megatron's parser to judge
    return repr(value) if isinstance(value, float) and not value.is_integer() else str(value)


def table_flags(cfg: RunConfig) -> list[str]:
    """Flags from TABLE and SPECIAL, in table order."""
    argv: list[str] = []
    for path, flag, kind in TABLE:
        value = _get(cfg, path)
        if isinstance(value, str) and value == "auto" and kind != VALUE:
            # a caller bug, not user input: plan.megatron_argv resolves the tuned knobs first (plan/tuned.py)
            raise ValueError(f"{path}=auto reached the flag table unresolved: pass tuned_config(cfg, res.tuned)")
        if kind == VALUE and value is not None:
            argv += [flag, _fmt(value)]
        elif kind == TRUE and value:
            argv.append(flag)
        elif kind == FALSE and value is False:
            argv.append(flag)
        elif kind == LIST and value:
            argv += [flag, *map(str, value)]
    done: set[int] = set()
    for fn in SPECIAL.values():
        if id(fn) not in done:
            done.add(id(fn))
            argv += fn(cfg)
    return argv


def resolved_flags(cfg: RunConfig, res: Resolved) -> list[str]:
    """Flags that depend on this launch: implementation, layout, device-specific settings."""
    argv = ["--transformer-impl", res.transformer_impl]
    te = res.transformer_impl == "transformer_engine"
    if cfg.model.moe_grouped_gemm and te:
        argv.append("--moe-grouped-gemm")  # grouped GEMM exists only as TE GroupedLinear in 0.19.2
    if res.sequence_parallel:
        argv.append("--sequence-parallel")
    if res.pipeline_layout is not None:
        argv += ["--pipeline-model-parallel-layout", res.pipeline_layout]
    elif cfg.parallel.vpp and cfg.parallel.vpp > 1:
        argv += ["--num-virtual-stages-per-pipeline-rank", str(cfg.parallel.vpp)]
    if not res.gradient_accumulation_fusion:
        argv.append("--no-gradient-accumulation-fusion")  # its fused kernel comes from APEX
    # Megatron's throughput line (TFLOP/s/GPU) and per-iteration timing
    argv += ["--log-throughput"]
    if te:
        # TE builds the causal mask itself; a dataloader mask is seq^2 bytes per sample
        argv.append("--no-create-attention-mask-in-dataloader")
    else:
        # the local spec has no fused RoPE, torch norms have no persistent kernel, and the fused
        # masked softmax is a CUDA extension (scaled_masked_softmax_cuda) the pip wheel does not ship
        argv += ["--no-rope-fusion", "--no-persist-layer-norm", "--no-masked-softmax-fusion"]
    if res.device == "cpu":
        argv += ["--use-cpu-initialization", "--distributed-backend", "gloo"]
    return argv


def schema_fields(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Every leaf field path of the schema, e.g. model.num_layers."""
    out = []
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            out += schema_fields(sub, path + ".")
        else:
            out.append(path)
    return out

"""Typed schemas for every config group.

Each dataclass is the schema of one Hydra group (conf/<group>/*.yaml). Hydra merges the YAML into
the dataclass, so a misspelled key or a wrongly typed value fails at compose time, and
`OmegaConf.to_object` hands the rest of the launcher plain typed objects. `register_configs()` is the
only ConfigStore call.

Field names follow Megatron's argparse *dest* names wherever a field maps to one Megatron flag, so
the mapping table (megatron_args.py) stays readable. `None` means "Megatron's default" or, where the
docstring says so, "derived by the launcher" (derive.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from launcher.config.choices import (CrossEntropyImpl, CudaGraphImpl, CudaGraphModule, DataKind,
                                     DispatcherType, FlexBackend, Fp8Format, Fp8Recipe, ParamsDtype,
                                     QatFormat, RecomputeGranularity, RecomputeMethod, RecomputeModule, Routing, Switch)
from launcher.config.cluster import CLUSTER_SCHEMAS, ClusterConfig
from launcher.config.schema_model import ModelConfig


@dataclass
class ParallelConfig:
    """Parallel layout. World size comes from the cluster group (nodes x gpus_per_node)."""

    tp: int = 1
    """Tensor parallel size."""
    pp: int = 1
    """Pipeline parallel size."""
    vpp: Optional[int] = None
    """Virtual pipeline stages per pipeline rank (interleaved 1F1B); None = no interleaving."""
    pipeline_layout: Optional[str] = None
    """Megatron layout string (E embedding, t layer, m MTP, L loss, | stage); "auto" = balanced
    layout derived from num_layers, pp and vpp (first and last stage lighter)."""
    ep: int = 1
    """Expert parallel size."""
    etp: int = 1
    """Expert tensor parallel size."""
    cp: int = 1
    """Context parallel size."""
    sequence_parallel: Optional[bool] = None
    """None = on exactly when tp > 1 (Megatron requires it for MoE with TP)."""
    use_distributed_optimizer: bool = True
    overlap_grad_reduce: Union[bool, str] = Switch.auto.value
    """Reduce gradients in buckets during backward. auto = on, off where every gradient-reduce group has one rank
    (data x context parallel 1 for dense weights, expert data parallel 1: nothing to hide; launcher/plan/tuned.py)."""
    overlap_param_gather: Union[bool, str] = Switch.auto.value
    """All-gather the distributed optimizer's parameters during forward; auto = with overlap_grad_reduce and
    the distributed optimizer."""
    use_megatron_fsdp: bool = False


@dataclass
class DispatcherConfig:
    """MoE token dispatcher."""

    type: DispatcherType = DispatcherType.alltoall
    """alltoall, allgather or flex."""
    flex_backend: Optional[FlexBackend] = None
    """With type=flex: deepep, hybridep or ncclep."""
    flex_num_sms: Optional[int] = None
    """SMs the flex backend may use; None = backend default."""
    tuned: Optional[str] = None
    """A moe-dispatch-bench result (perf_results/dispatch/NAME.json, or a .json path): its fastest correct case
    for this dispatcher sets flex_num_sms and HybridEP's block counts (launcher/plan/dispatch_tuned.py)."""
    permute_fusion: Union[bool, str] = Switch.auto.value
    """Fused permute/unpermute (needs Transformer Engine); auto = on with TE (launcher/plan/tuned.py)."""
    router_fusion: Union[bool, str] = Switch.auto.value
    """Fused router top-k/softmax (needs Transformer Engine >= 2.7); auto = on with TE."""
    shared_expert_overlap: bool = False
    """Overlap shared-expert compute with dispatch (alltoall/flex only)."""
    overlap_moe_expert_parallel_comm: Union[bool, str] = Switch.auto.value
    """Hide the EP all-to-all behind another microbatch's compute (1F1B A2A overlap; EP > 1,
    alltoall or flex, VPP when PP > 1, no full recompute). ModelZoo's A2A_OVERLAP=1. auto = on where
    its prerequisites hold and it was measured to pay (launcher/plan/tuned.py)."""
    delay_wgrad_compute: bool = False
    """Delay expert weight-gradient GEMMs to overlap them with the combine (needs the overlap above, TE)."""


@dataclass
class RecomputeConfig:
    """Activation recomputation."""

    granularity: RecomputeGranularity = RecomputeGranularity.none
    """none, selective or full."""
    modules: list[RecomputeModule] = field(default_factory=list)
    """With selective: any of core_attn, moe_act, layernorm, mla_up_proj, mlp, moe, shared_experts,
    gdn_norm_out."""
    method: Optional[RecomputeMethod] = None
    """With full: uniform or block."""
    num_layers: Optional[int] = None
    """With full: layers per recompute unit (uniform) or recomputed layers per stage (block)."""


@dataclass
class PrecisionConfig:
    """Numerics of parameters, activations and the optimizer."""

    name: str = "bf16"
    params_dtype: ParamsDtype = ParamsDtype.bf16
    """bf16, fp16 or fp32 (fp32 only for CPU smoke runs)."""
    fp8_format: Optional[Fp8Format] = None
    """e4m3 or hybrid; None = no FP8."""
    fp8_recipe: Optional[Fp8Recipe] = None
    """tensorwise, delayed, mxfp8 (Blackwell) or blockwise."""
    fp8_param_gather: bool = False
    use_precision_aware_optimizer: bool = False
    main_grads_dtype: Optional[str] = None
    main_params_dtype: Optional[str] = None
    exp_avg_dtype: Optional[str] = None
    exp_avg_sq_dtype: Optional[str] = None
    grad_reduce_in_bf16: bool = False


@dataclass
class DataConfig:
    """Training data."""

    kind: DataKind = DataKind.mock
    """mock (synthetic tokens, no files) or indexed (Megatron .bin/.idx prefixes in paths)."""
    paths: list[str] = field(default_factory=list)
    """With kind=indexed: one blend for every split, prefixes optionally weighted ([0.3, /data/a, 0.7, /data/b]),
    divided by `split` (--data-path)."""
    train_paths: list[str] = field(default_factory=list)
    """With kind=indexed, instead of paths: the training blend (--train-data-path); valid_paths and test_paths
    are then the evaluation blends (--valid-data-path, --test-data-path) and `split` is not used."""
    valid_paths: list[str] = field(default_factory=list)
    test_paths: list[str] = field(default_factory=list)
    split: Optional[str] = None
    """Train,valid,test weights of `paths`; None = "99,1,0" when train.eval_iters > 0, else "100,0,0": with no
    evaluation Megatron builds a 0-sample validation blend and its sampler asserts "no sample to consume: 0"
    (blended_megatron_dataset_builder sizes a blend's split by the samples asked, eval_iters x batch)."""
    tokenizer_type: str = "NullTokenizer"
    tokenizer_model: Optional[str] = None
    """A Hugging Face tokenizer directory (or hub id) for HuggingFaceTokenizer."""
    vocab_size: Optional[int] = None
    """The tokenizer's vocabulary, checked against the model's padded vocabulary before launch; None = read it
    from the tokenizer (where the login node can load it) or the data's moe-prepare-data summary."""
    num_workers: int = 2


@dataclass
class CheckpointConfig:
    """How a run saves and resumes (the directory and interval are train.save, train.save_interval)."""

    enabled: bool = True
    """Save checkpoints and resume from them; false = neither (train.save/load must then be unset)."""
    resume: bool = True
    """Relaunching into a directory that holds a complete checkpoint continues from the newest one."""
    keep_last: Optional[int] = 3
    """Complete checkpoints kept after a run ends (older iter_* directories are deleted by the launcher;
    Megatron 0.19.2 only has save_retain_interval); None = keep all."""
    async_save: Optional[bool] = None
    """Write checkpoints in the background (torch_dist, --async-strategy mcore, persistent worker); None = on
    GPUs, off on CPU (async save hangs on gloo)."""
    exit_signal_handler: bool = True
    """SIGTERM makes Megatron finish the iteration, save and exit (--exit-signal-handler)."""
    host_register: Union[bool, str] = Switch.auto.value
    """The background save's device-to-host copy takes pinned host memory from torch's caching host allocator;
    true = its pages are registered by 8 threads (PYTORCH_CUDA_ALLOC_CONF pinned_use_cuda_host_register,
    pinned_num_register_threads): a first save held training 6.9 s instead of 18.6 s on H200; auto = on for GPU
    runs that save in the background (launcher/plan/tuned.py). cluster.env and the calling shell win."""
    init_from: Optional[str] = None
    """A Megatron checkpoint directory to take the starting weights from (moe-convert import writes one), at any
    layout; Megatron's --pretrained-checkpoint: read only while the run's own load directory holds no checkpoint,
    so a relaunch resumes the run. Model weights only: fresh optimizer, iteration 0."""


@dataclass
class TrainConfig:
    """Batch sizes, steps, optimizer and LR schedule."""

    seq_length: int = 4096
    micro_batch_size: int = 1
    global_batch_size: int = 32
    train_iters: int = 100
    routing: Routing = Routing.dropless
    """dropless (real router) or forced_balance (benchmarking: random balanced routing)."""
    optimizer: str = "adam"
    optimizer_cpu_offload: bool = False
    """Keep optimizer states on the CPU and step there (needs precision.use_precision_aware_optimizer)."""
    overlap_cpu_optimizer_d2h_h2d: bool = False
    """Overlap the offloaded optimizer's device<->host copies with compute."""
    lr: float = 3e-4
    min_lr: float = 3e-5
    lr_decay_style: str = "cosine"
    lr_warmup_iters: int = 10
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    clip_grad: float = 1.0
    seed: int = 1234
    log_interval: int = 1
    eval_iters: int = 0
    eval_interval: int = 1000
    save: Optional[str] = None
    """Checkpoint directory; None = <run_dir>/checkpoints for every run (train.checkpoint.enabled=false: none).
    A run resumes from the newest complete checkpoint found here (launcher/plan/checkpoint.py)."""
    save_interval: Optional[int] = None
    """Iterations between checkpoints (Megatron also saves at the end); None = min(1000, max(100, train_iters/10))."""
    load: Optional[str] = None
    """Start from another run's checkpoint directory; None = resume from train.save when it holds one."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed_timeout_minutes: Optional[int] = None
    """Collective timeout (a hung or dead rank ends the job after it); None = 5 on CPU or for runs of at most
    100 iterations (smoke), 30 otherwise (a real run's checkpoint save must fit inside it)."""
    manual_gc: bool = True
    manual_gc_interval: int = 10
    profile: bool = False
    """Megatron's profiler range: cudaProfilerStart/Stop around the profile steps on profile_ranks (what
    `nsys profile --capture-range=cudaProfilerApi` records), or torch.profiler with megatron.extra."""
    profile_step_start: Optional[int] = None
    """None = Megatron's default (10)."""
    profile_step_end: Optional[int] = None
    """None = Megatron's default (12)."""
    profile_ranks: list[int] = field(default_factory=list)
    """Global ranks that profile; empty = every rank (Megatron's default)."""
    cross_entropy_loss_fusion: Union[bool, str] = Switch.auto.value
    """Megatron's fused vocab-parallel cross entropy (--cross-entropy-loss-fusion): no FP32 copy of the
    full logits; with a 150k vocabulary the logits are the largest activation of a small MoE. auto = on
    on GPUs (launcher/plan/tuned.py)."""
    cross_entropy_fusion_impl: CrossEntropyImpl = CrossEntropyImpl.auto
    """Which fused loss, with cross_entropy_loss_fusion: native or te (Megatron's, --cross-entropy-fusion-impl;
    0.19.2's validator refuses te), or lean (recipes/loss.py: no FP32 copy of the logits, two reads of them;
    passed as MOE_CROSS_ENTROPY). auto = lean on GPUs (launcher/plan/tuned.py)."""
    kernel_profile: Optional[str] = None
    """"START:END" (1-based iterations, inclusive): torch.profiler over those whole iterations on rank 0,
    written with a GPU-time summary by category to <run_dir>/profile (recipes/profiling.py); null = off.
    Independent of `profile` (Megatron's nsys range)."""
    expandable_segments: Union[bool, str] = Switch.auto.value
    """PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True for the ranks (less fragmentation); auto = on for GPU
    runs without TE CUDA graphs (launcher/plan/tuned.py). cluster.env and the calling shell win."""
    gradient_accumulation_fusion: str = "auto"
    """true, false, or auto (on when APEX's fused kernel is importable where the run starts)."""
    cuda_graph_impl: Optional[CudaGraphImpl] = None
    """CUDA graphs: transformer_engine (per-layer graphs made by TE, what the MoE recipes use), local, or
    full_iteration; None = off."""
    cuda_graph_modules: list[CudaGraphModule] = field(default_factory=list)
    """With a per-layer cuda_graph_impl, the parts of each layer captured: attn, mlp (dense layers),
    moe_router, moe_preprocess (with moe_router), moe (drop-and-pad MoE only); empty = the whole layer."""
    tensorboard_dir: Optional[str] = None
    """TensorBoard event files (--tensorboard-dir; needs the `logging` extra); a relative path is under the
    run directory. None = off."""
    wandb_project: Optional[str] = None
    """Weights & Biases project (--wandb-project; needs the `logging` extra); None = off."""
    wandb_exp_name: Optional[str] = None
    """W&B run name (--wandb-exp-name, which Megatron requires with a project); None = the run directory's name."""
    wandb_save_dir: Optional[str] = None
    """W&B files (--wandb-save-dir); None = <run_dir>/wandb. WANDB_MODE=offline in cluster.env keeps them local."""


@dataclass
class QuantConfig:
    """Quantization-aware (continued) training with nvidia-modelopt: BF16 training through fake-quantized
    linears (recipes/qat.py; needs the `modelopt` extra). Passed to the recipe as MOE_QAT."""

    qat: QatFormat = QatFormat.none
    """fp8 (E4M3 per tensor), int8 (per-channel weights), nvfp4 / mxfp8 (GPU only); none = off."""
    calib_batches: int = 4
    """Micro batches of the run's own training data that set the quantizers' amax (max calibration), once:
    a resumed QAT run restores them from its checkpoint."""
    exclude: list[str] = field(default_factory=lambda: ["*router*", "*output_layer*", "*embedding*"])
    """Quantizer name patterns (fnmatch) left unquantized, on top of modelopt's defaults (which already skip
    the router and lm_head)."""


@dataclass
class DistillConfig:
    """Knowledge distillation from a frozen teacher with nvidia-modelopt (recipes/distill.py; needs the
    `modelopt` extra). Passed to the recipe as MOE_DISTILL."""

    enabled: bool = False
    teacher_checkpoint: Optional[str] = None
    """The teacher's Megatron checkpoint: a save directory (its newest checkpoint) or an iter_* directory. Its
    architecture is the one saved in it; it is laid out as the student (same TP/EP/CP, one pipeline stage)."""
    temperature: float = 1.0
    """Temperature of the logit KL divergence."""
    layer_pairs: list[list[str]] = field(default_factory=list)
    """Intermediate [student module, teacher module] pairs (cosine loss), e.g.
    [[decoder.layers.1, decoder.layers.3]]; empty = logits only."""
    layer_weight: float = 1.0
    """Weight of the mean intermediate-layer loss against the logit KL."""
    lm_loss_weight: float = 0.0
    """Weight of the student's own LM loss in what is trained (0: pure KD; the LM loss is printed anyway)."""


@dataclass
class HardwareConfig:
    """The GPU system a job targets: used for MFU, topology checks and the Slurm node layout."""

    name: str = MISSING
    gpu: str = MISSING
    """GPU model as nvidia-smi names it, e.g. "NVIDIA H100 80GB HBM3"."""
    gpus_per_node: int = 8
    nvlink_domain: int = 8
    """GPUs that share one NVLink domain (8 on HGX boards, 72 on NVL72 racks)."""
    peak_tflops_bf16: float = MISSING
    """Dense BF16 tensor-core peak per GPU (vendor datasheet, no sparsity)."""
    peak_tflops_fp8: float = MISSING
    """Dense FP8 tensor-core peak per GPU (vendor datasheet, no sparsity)."""
    memory_gib: float = MISSING
    compute_capability: str = MISSING
    """e.g. "9.0" (Hopper), "10.0" (Blackwell)."""
    nvlink_gbps: Optional[float] = None
    """NVLink bandwidth per GPU and direction, GB/s (the planner's TP and intra-domain EP traffic)."""
    network_gbps: Optional[float] = None
    """Scale-out network bandwidth per GPU and direction, GB/s (the planner's inter-node EP, DP, PP traffic)."""


@dataclass
class MegatronConfig:
    """Escape hatch for any Megatron flag the schema does not model."""

    extra: dict[str, Any] = field(default_factory=dict)
    """dest or flag name -> value: {moe_permute_fusion: true, cuda_graph_impl: transformer_engine,
    recompute_modules: [moe, layernorm]}. true -> bare flag, false/null -> omitted."""
    raw: list[str] = field(default_factory=list)
    """Raw argv appended last, e.g. ["--recompute-granularity", "selective"]."""


@dataclass
class LaunchConfig:
    """What the launcher itself does."""

    dry_run: bool = False
    """Write the run directory and print the command, run nothing."""
    run_dir: Optional[str] = None
    """None = runs/<model>-<timestamp> under the current directory."""
    name: Optional[str] = None
    """Names the run directory and the Slurm job; None = the chosen preset's name (set at compose,
    launcher/config/compose.py), else the model's."""
    megatron_validate: bool = True
    """Also run Megatron's own validator on the generated argv at the real world size."""
    skip_memory_check: bool = False
    """Launch even when the estimated peak memory (launcher/plan/estimate_memory.py) exceeds the device."""
    max_restarts: int = 0
    """After a failure a restart can fix (a rank killed by a signal, a collective timeout), relaunch from the
    newest complete checkpoint, at most this many times, each a new attempt (launcher/run/restart.py); 0 = never."""
    verbose: bool = False
    """Show every line the ranks print live (MOE_VERBOSE=1 too); otherwise the console has the plan, one
    status line and the outcome, and everything else is in train.log."""


@dataclass
class RunConfig:
    """The whole composed config: one field per group."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    dispatcher: DispatcherConfig = field(default_factory=DispatcherConfig)
    recompute: RecomputeConfig = field(default_factory=RecomputeConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    megatron: MegatronConfig = field(default_factory=MegatronConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)


def register_configs() -> None:
    """Register the top-level schema; conf/config.yaml lists it first in its defaults, so every group's
    YAML merges into a typed node and a misspelled or mistyped key fails at compose time."""
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    for kind, schema in CLUSTER_SCHEMAS.items():  # conf/cluster/<kind>.yaml lists <kind>_schema first
        store.store(group="cluster", name=f"{kind}_schema", node=schema)

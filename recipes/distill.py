"""Knowledge distillation with nvidia-modelopt (the distill group): a student MoE trained from a frozen teacher
through the normal megatron.training.pretrain loop.

The teacher is described by its checkpoint (distill.teacher_checkpoint): its architecture is the one Megatron
saved with it (the args namespace in the checkpoint's common state, the same source as Megatron's
--use-checkpoint-args), laid out as the student is (modelopt's limitation: one pipeline, the same TP/EP/CP
groups), so the weights and the description cannot disagree. Before the student is wrapped (GPTModelConfig.
pre_wrap_hooks) the teacher is built, its weights loaded from the checkpoint (model only: no optimizer, frozen),
and the student becomes modelopt's DistillationModel (modelopt.torch.distill.convert with the criterion of
modelopt.torch.distill.plugins.megatron.setup_distillation_config, then adjust_distillation_model_for_mcore:
the teacher runs under no_grad and is hidden from the student's checkpoints). The forward step below adds the
KD loss: logit KL at distill.temperature, plus distill.layer_weight x the mean of the intermediate-layer losses
(distill.layer_pairs, cosine), plus distill.lm_loss_weight x the student's own LM loss. train.log prints each
part ("lm loss" is always the student's cross entropy, trained on only with lm_loss_weight > 0).

megatron-core 0.19.2 has no hook for distillation across pipeline stages in its wheel (training.py:2366 needs
megatron.post_training), so the launcher refuses parallel.pp > 1 (launcher/plan/rules/modelopt.py).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Optional

ENV = "MOE_DISTILL"  # JSON of the distill group, set by the launcher (launcher/plan/plan.py run_env)

# What describes the teacher's architecture: Megatron argument names read from the teacher checkpoint's saved args
# (every other argument, the parallel layout included, is the student's).
ARCH_ARGS = (
    "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
    "group_query_attention", "kv_channels", "max_position_embeddings", "padded_vocab_size", "vocab_size",
    "make_vocab_size_divisible_by", "normalization", "norm_epsilon", "position_embedding_type", "rotary_base",
    "rotary_percent", "rotary_interleaved", "swiglu", "qk_layernorm", "untie_embeddings_and_output_weights",
    "add_bias_linear", "add_qkv_bias", "init_method_std", "num_experts", "moe_ffn_hidden_size",
    "moe_router_topk", "moe_layer_freq", "moe_shared_expert_intermediate_size", "moe_shared_expert_gate",
    "moe_router_score_function", "moe_router_pre_softmax", "moe_router_topk_scaling_factor",
    "moe_router_num_groups", "moe_router_group_topk", "moe_router_enable_expert_bias", "moe_router_dtype",
    "mtp_num_layers", "multi_latent_attention", "q_lora_rank", "kv_lora_rank", "qk_head_dim",
    "qk_pos_emb_head_dim", "v_head_dim", "rope_type", "rotary_scaling_factor", "mscale", "mscale_all_dim",
    "experimental_attention_variant", "linear_attention_freq", "linear_conv_kernel_dim", "linear_key_head_dim",
    "linear_value_head_dim", "linear_num_key_heads", "linear_num_value_heads", "attention_output_gate",
    "layernorm_zero_centered_gamma",
)


@dataclasses.dataclass(frozen=True)
class DistillSpec:
    teacher_checkpoint: str
    temperature: float
    layer_pairs: tuple[tuple[str, str], ...]
    layer_weight: float
    lm_loss_weight: float


def spec_from_env() -> Optional[DistillSpec]:
    raw = os.environ.get(ENV)
    if not raw:
        return None
    d = json.loads(raw)
    return DistillSpec(teacher_checkpoint=d["teacher_checkpoint"], temperature=float(d["temperature"]),
                       layer_pairs=tuple((s, t) for s, t in d["layer_pairs"]), layer_weight=float(d["layer_weight"]),
                       lm_loss_weight=float(d["lm_loss_weight"]))


def teacher_dir(path: str) -> Optional[str]:
    """The iteration directory to read: a save directory's newest (its tracker file), or an iter_* directory."""
    from recipes.checkpoint import checkpoint_dir

    if os.path.isfile(os.path.join(path, "metadata.json")):
        return path
    return checkpoint_dir(path, None)


def teacher_args(args, path: str):
    """The student's args with the teacher's architecture (from the args saved in its checkpoint)."""
    from megatron.core import dist_checkpointing

    saved = dist_checkpointing.load_common_state_dict(path).get("args")
    if saved is None:
        raise ValueError(f"distill.teacher_checkpoint={path}: the checkpoint holds no Megatron args to describe "
                         "the teacher. Fix: point it at a checkpoint that megatron.training (moe-launch) saved")
    targs = copy.copy(args)
    for name in ARCH_ARGS:
        if hasattr(saved, name):
            setattr(targs, name, getattr(saved, name))
    return targs


def check(args, spec: DistillSpec) -> Optional[str]:
    """What the login node could not read (the teacher checkpoint, as this node sees it): None when the teacher
    fits this student, else one line."""
    field = f"distill.teacher_checkpoint={spec.teacher_checkpoint}"
    path = teacher_dir(spec.teacher_checkpoint)
    if path is None:
        return (f"{field}: no complete checkpoint there (no metadata.json, no latest_checkpointed_iteration.txt). "
                "Fix: point it at a run's checkpoints directory or one of its iter_* directories")
    try:
        t = teacher_args(args, path)
    except ValueError as e:
        return str(e)
    if t.padded_vocab_size != args.padded_vocab_size:
        return (f"{field}: the teacher's padded vocabulary is {t.padded_vocab_size}, the student's "
                f"{args.padded_vocab_size}; logit distillation compares them token by token. Fix: distill from a "
                "teacher trained with the student's tokenizer and model.vocab_size")
    if t.num_experts and t.num_experts % args.expert_model_parallel_size:
        return (f"{field}: the teacher's {t.num_experts} experts do not divide over the student's EP "
                f"{args.expert_model_parallel_size} (teacher and student share the layout). Fix: pick parallel.ep "
                "dividing both expert counts")
    if t.num_attention_heads % args.tensor_model_parallel_size:
        return (f"{field}: the teacher's {t.num_attention_heads} heads do not divide over the student's TP "
                f"{args.tensor_model_parallel_size}. Fix: pick parallel.tp dividing both head counts")
    return None


def build_teacher(args, spec: DistillSpec, pg_collection):
    """The teacher model (one pipeline stage), its weights loaded from the checkpoint and frozen."""
    from megatron.core import dist_checkpointing
    from megatron.training.argument_utils import gpt_config_from_args
    from megatron.training.checkpointing import _build_sharded_state_dict_metadata

    path = teacher_dir(spec.teacher_checkpoint)
    targs = teacher_args(args, path)
    cfg = gpt_config_from_args(targs)
    teacher = cfg.get_builder_cls()(cfg).build_model(pg_collection, pre_process=True, post_process=True)
    # the content metadata the teacher was saved with decides its sharded layout (as Megatron's load does)
    metadata = dist_checkpointing.load_content_metadata(path) or _build_sharded_state_dict_metadata(targs)
    loaded = dist_checkpointing.load({"model": teacher.sharded_state_dict(metadata=metadata)}, path)
    teacher.load_state_dict(loaded["model"], strict=True)
    teacher.requires_grad_(False)
    return teacher


def distill_hook(args, spec: DistillSpec):
    """GPTModelConfig.pre_wrap_hook: the student chunk becomes a DistillationModel around the loaded teacher."""

    def hook(model_list):
        import modelopt.torch.distill as mtd
        import modelopt.torch.distill.plugins.megatron as mtd_mcore
        from megatron.core.process_groups_config import ProcessGroupCollection

        if len(model_list) != 1:
            raise ValueError("distill: modelopt's distillation does not support virtual pipeline stages")
        student = model_list[0]
        teacher = build_teacher(args, spec, ProcessGroupCollection.use_mpu_process_groups())
        # skip_lm_loss=False: the student's cross entropy is always computed, to print it and weigh it in
        cfg = mtd_mcore.setup_distillation_config(
            mtd_mcore.DistillationConfig(intermediate_layer_pairs=[list(p) for p in spec.layer_pairs],
                                         logit_kl_temperature=spec.temperature, skip_lm_loss=False),
            student.config, teacher.config)
        kd_config = {"teacher_model": teacher, "criterion": cfg.criterion, "loss_balancer": cfg.loss_balancer}
        model = mtd.convert(student, mode=[("kd_loss", kd_config)])
        mtd_mcore.adjust_distillation_model_for_mcore(model, cfg)
        if args.rank == 0:
            n = sum(p.numel() for p in teacher.parameters())  # this rank's share
            print(f"recipes.distill: teacher {teacher.config.num_layers} layers, {n / 1e6:.2f}M parameters on rank 0 "
                  f"(frozen) from {teacher_dir(spec.teacher_checkpoint)}; KD: logit KL at temperature "
                  f"{spec.temperature}, {len(spec.layer_pairs)} layer pairs x {spec.layer_weight}, "
                  f"lm loss x {spec.lm_loss_weight}", flush=True)
        return [model]

    return hook


def install(args, config_container, spec: DistillSpec) -> None:
    global _SPEC
    _SPEC = spec
    config_container.model.pre_wrap_hooks.append(distill_hook(args, spec))


_SPEC: Optional[DistillSpec] = None


def combine(losses: dict, spec: DistillSpec):
    """modelopt's loss dict (masked sums) -> (trained loss, logits KL, layer loss): the logit KL, plus
    layer_weight x the mean of the intermediate losses, plus lm_loss_weight x the student's LM loss."""
    from modelopt.torch.distill.loss_balancers import STUDENT_LOSS_KEY

    lm = losses.pop(STUDENT_LOSS_KEY)
    logits = sum(v for k, v in losses.items() if "Logits" in k)
    layers = [v for k, v in losses.items() if "Logits" not in k]
    layer = sum(layers) / len(layers) if layers else lm.new_zeros(())
    return logits + spec.layer_weight * layer + spec.lm_loss_weight * lm, logits, layer


def _masked_sum(loss_mask):
    """The loss-mask reduction of one per-token loss to a sum. modelopt's Megatron losses come as (loss [b, s],
    tp_reduce, is_sequence_parallel): a logit KL over this TP rank's vocabulary shard is summed over TP, and a
    sequence-parallel intermediate loss covers this rank's slice of the sequence (of the mask, too)."""
    import torch
    from megatron.core import parallel_state

    def reduce(t):
        tp_reduce = sequence_parallel = False
        if isinstance(t, tuple):
            t, tp_reduce, sequence_parallel = t
        mask = loss_mask
        tp = parallel_state.get_tensor_model_parallel_world_size()
        if sequence_parallel:
            mask = torch.tensor_split(loss_mask, tp, dim=1)[parallel_state.get_tensor_model_parallel_rank()]
        total = torch.sum(t.reshape(-1).float() * mask.reshape(-1).float())
        if (tp_reduce or sequence_parallel) and tp > 1:
            from torch.distributed.nn.functional import all_reduce  # differentiable: each rank's share gets grads

            total = all_reduce(total, group=parallel_state.get_tensor_model_parallel_group())
        return total

    return reduce


def forward_step(data_iterator, model, return_schedule_plan: bool = False):
    """recipes/data.py's forward step with the KD loss: returns (trained loss sum, tokens, printed parts)."""
    import torch
    from megatron.core.utils import unwrap_model
    from megatron.training import get_args

    from recipes import data, profiling

    if return_schedule_plan:
        raise ValueError("distill: the EP all-to-all overlap schedule is not supported with distillation")
    profiling.maybe_step(get_args())
    batch = data.next_batch(data_iterator)
    loss_mask = batch["loss_mask"]
    output = model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"),
                   labels=batch["labels"], loss_mask=loss_mask)
    kd_model = unwrap_model(model)

    def loss_func(output_tensor):
        mask = loss_mask.view(-1).float()
        masked_sum = _masked_sum(loss_mask)
        lm = masked_sum(output_tensor)
        losses = kd_model.compute_kd_loss(student_loss=lm, loss_reduction_fn=masked_sum, skip_balancer=True)
        total, logits, layer = combine(losses, _SPEC)
        n = mask.sum().to(torch.int)

        def row(v):
            return torch.cat([v.detach().float().view(1), n.view(1)])

        report = {"lm loss": row(lm), "kd logits loss": row(logits)}
        if _SPEC.layer_pairs:
            report["kd layer loss"] = row(layer)
        report["kd total loss"] = row(total)
        return total, n, report

    return output, loss_func

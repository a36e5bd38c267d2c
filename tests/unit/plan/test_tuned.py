"""Issue 17: the tuned choices are rules (launcher/plan/tuned.py). The plain command a user types resolves on an
H200 description with Transformer Engine to what the tuned EP2 bench preset measured; where a choice is not valid
(CPU, FP8, etp > 1, TP on Hopper, Blackwell, one micro batch, CUDA graphs, ...) each knob resolves to its safe
choice with the reason; a pinned value stays; every model family's proxy plans with the rules applied."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from conftest import PROBE, make_cfg
from launcher.errors import ConfigError
from launcher.plan.plan import build_plan
from launcher.plan.probe import MachineProbe
from launcher.plan.tuned import SAFE

ROOT = Path(__file__).resolve().parents[3]
H200X2 = MachineProbe(gpus=2, transformer_engine=True, apex_fused_wgrad=False, deep_ep=False, cpu_count=16)
H200X1 = dataclasses.replace(H200X2, gpus=1)
PLAIN = ["model=qwen3_30b_a3b", "model.num_layers=8", "train=pretrain", "hardware=h200", "parallel=ep2",
         "train.micro_batch_size=4", "train.global_batch_size=32"]
PRESET = ["preset=qwen3_30b_a3b_8l_2xh200_ep2_bench_bf16", "train.routing=dropless"]
FAST = dict(moe_grouped_gemm_impl="torch", permute_fusion=True, router_fusion=True, cross_entropy_loss_fusion=True,
            overlap_moe_expert_parallel_comm=True, expandable_segments=True, cross_entropy_fusion_impl="lean",
            overlap_grad_reduce=True, overlap_param_gather=True, host_register=True)
REGISTER = "pinned_use_cuda_host_register:True,pinned_num_register_threads:8"


def _plan(overrides: list[str], probe: MachineProbe = H200X2, validate: bool = False):
    cfg = make_cfg(overrides)
    cfg.launch.megatron_validate = validate
    return build_plan(cfg, probe)


def _tuned(plan) -> dict:
    return dataclasses.asdict(plan.resolved.tuned)


def test_the_plain_command_resolves_to_the_tuned_preset():
    """Same argv and environment as the EP2 bench preset with dropless routing (the preset pins nothing of these
    any more: it pins routing, the layer cut and the node size on purpose), and Megatron accepts it at 2 GPUs."""
    plain, preset = _plan(PLAIN, validate=True), _plan(PRESET)
    assert plain.argv == preset.argv and plain.env == preset.env
    assert _tuned(plain) == FAST
    for flag in ("--moe-permute-fusion", "--moe-router-fusion", "--overlap-moe-expert-parallel-comm"):
        assert flag in plain.argv
    # the lean loss is the recipe's (recipes/loss.py): Megatron's argv has no fused loss of its own
    assert plain.env["MOE_CROSS_ENTROPY"] == "lean" and "--cross-entropy-loss-fusion" not in plain.argv
    assert plain.env["MOE_GROUPED_GEMM_IMPL"] == "torch"
    assert plain.env["PYTORCH_CUDA_ALLOC_CONF"] == f"expandable_segments:True,{REGISTER}"
    assert plain.env["CUDA_DEVICE_MAX_CONNECTIONS"] == "32"  # the overlap's streams
    assert plain.facts["tuned"] == FAST and plain.megatron["num_microbatches"] == 4


def test_each_auto_note_names_a_measurement_that_exists():
    notes = [n for n in _plan(PLAIN).resolved.notes if "=auto -> " in n]
    assert len(notes) == 9
    for note in notes:
        paths = re.findall(r"perf_results/[\w./-]+", note)
        assert paths, note
        for p in paths:
            assert (ROOT / p.rstrip(".,)")).exists(), p


def test_cpu_resolves_every_knob_to_its_safe_choice():
    plan = _plan(["model=tiny_moe"], probe=PROBE)
    assert plan.resolved.device == "cpu" and plan.resolved.tuned == SAFE
    assert "MOE_GROUPED_GEMM_IMPL" not in plan.env and "PYTORCH_CUDA_ALLOC_CONF" not in plan.env
    assert any(n.startswith("permute_fusion=auto -> false") for n in plan.resolved.notes)


def test_without_transformer_engine_on_the_gpu_host_the_te_kernels_stay_off():
    plan = _plan(PLAIN, probe=dataclasses.replace(H200X2, transformer_engine=False))
    assert plan.resolved.transformer_impl == "local"
    t = plan.resolved.tuned
    assert (t.moe_grouped_gemm_impl, t.permute_fusion, t.router_fusion, t.overlap_moe_expert_parallel_comm) == \
        ("te", False, False, False)
    assert t.cross_entropy_loss_fusion and t.expandable_segments  # GPU paths without TE


@pytest.mark.parametrize("extra,impl,why", [
    (["precision=fp8_blockwise"], "te", "precision fp8_blockwise"),
    (["hardware=b200"], "te", "compute capability 10.0"),
    (["dispatcher.delay_wgrad_compute=true"], "te", "delay_wgrad_compute"),
    (["model.moe_grouped_gemm=false"], "te", "moe_grouped_gemm=false"),
    # measured: the torch experts' weight fails Megatron FSDP's first checkpoint save on H200
    (["parallel.use_megatron_fsdp=true"], "te", "Megatron FSDP"),
])
def test_expert_gemms_fall_back_to_te_where_torch_is_not_valid(extra, impl, why):
    plan = _plan(PLAIN + extra)
    assert plan.resolved.tuned.moe_grouped_gemm_impl == impl
    assert any(n.startswith("moe_grouped_gemm_impl=auto -> te") and why in n for n in plan.resolved.notes)
    assert "MOE_GROUPED_GEMM_IMPL" not in plan.env


def test_expert_biases_resolve_te_and_are_refused_by_the_moe_rule():
    """torch's experts have no bias; nor have megatron-core 0.19.2's (plan/rules/moe.py refuses the run)."""
    from launcher.errors import ConfigError
    from launcher.plan.resolve import resolve

    cfg = make_cfg(PLAIN + ["model.add_bias_linear=true"])
    res = resolve(cfg, H200X2)
    assert res.tuned.moe_grouped_gemm_impl == "te"
    assert any(n.startswith("moe_grouped_gemm_impl=auto -> te") and "expert biases" in n for n in res.notes)
    with pytest.raises(ConfigError, match="take no linear bias"):
        _plan(PLAIN + ["model.add_bias_linear=true"])


def test_pinned_torch_experts_under_megatron_fsdp_are_refused():
    from launcher.errors import ConfigError

    with pytest.raises(ConfigError, match="parallel.use_megatron_fsdp.*fsdp_dtensor checkpoints name each expert") as e:
        _plan(PLAIN + ["parallel.use_megatron_fsdp=true", "model.moe_grouped_gemm_impl=torch"])
    assert "set model.moe_grouped_gemm_impl=te" in str(e.value) and "\n" not in str(e.value)


def test_expert_tensor_parallelism_keeps_te():
    plan = _plan(["model=qwen3_30b_a3b", "model.num_layers=8", "train=pretrain", "hardware=h200", "parallel.ep=2",
                  "parallel.etp=2", "cluster.gpus_per_node=4", "train.micro_batch_size=1",
                  "train.global_batch_size=8"], probe=dataclasses.replace(H200X2, gpus=4))
    assert plan.resolved.tuned.moe_grouped_gemm_impl == "te"


@pytest.mark.parametrize("extra,why", [
    (["parallel=single", "cluster.gpus_per_node=1", "train.global_batch_size=16"], "parallel.ep=1"),
    (["train.global_batch_size=8"], "one micro batch per step"),
    (["recompute=full"], "recompute full"),
    (["precision.params_dtype=fp32"], "params fp32"),
    (["dispatcher=allgather"], "dispatcher allgather"),
    (["parallel=tp2_ep4", "cluster.gpus_per_node=8", "train.global_batch_size=64"], "tp=2 cp=1 before Blackwell"),
])
def test_the_overlap_stays_off_where_it_is_not_valid(extra, why):
    probe = dataclasses.replace(H200X2, gpus=8) if "cluster.gpus_per_node=8" in extra else H200X2
    plan = _plan(PLAIN + extra, probe=probe)
    assert not plan.resolved.tuned.overlap_moe_expert_parallel_comm
    assert any(n.startswith("overlap_moe_expert_parallel_comm=auto -> false") and why in n
               for n in plan.resolved.notes), plan.resolved.notes
    assert plan.env.get("CUDA_DEVICE_MAX_CONNECTIONS") != "32"


ONE_GPU = ["preset=qwen3_30b_a3b_4l_1xh200_bench_bf16"]


def test_the_gradient_overlap_is_off_where_every_reduce_group_has_one_rank():
    """One GPU: Megatron gets neither overlap flag (one gradient bucket, one NaN check a step); the note names the
    A/B records. Megatron accepts the argv."""
    plan = _plan(ONE_GPU, probe=H200X1, validate=True)
    t = plan.resolved.tuned
    assert (t.overlap_grad_reduce, t.overlap_param_gather) == (False, False)
    assert "--overlap-grad-reduce" not in plan.argv and "--overlap-param-gather" not in plan.argv
    note = next(n for n in plan.resolved.notes if n.startswith("overlap_grad_reduce=auto -> false"))
    assert "every gradient-reduce group has one rank" in note and "allgather_no_overlap" in note


@pytest.mark.parametrize("extra,probe,grad,param", [
    ([], H200X2, True, True),                                           # EP 2 on 2 GPUs: dense gradients reduce over 2
    (["parallel=single", "parallel.tp=2", "cluster.gpus_per_node=2", "train.global_batch_size=8"], H200X2, True,
     True),                                                             # TP 2: dense data-parallel 1, experts' 2
    (["parallel.cp=2", "train.global_batch_size=8"], H200X2, True, True),  # EP 2 over CP 2: dense weights reduce
                                                                        # over the 2 context-parallel ranks
    (["parallel.use_distributed_optimizer=false"], H200X2, True, False),  # the param gather needs it
    (["parallel.overlap_grad_reduce=false"], H200X2, False, False),    # pinned off: the gather follows
])
def test_the_gradient_overlap_stays_on_where_a_reduce_group_has_ranks(extra, probe, grad, param):
    t = _plan(PLAIN + extra, probe=probe).resolved.tuned
    assert (t.overlap_grad_reduce, t.overlap_param_gather) == (grad, param)


def test_a_pinned_gradient_overlap_stays_on_one_gpu():
    plan = _plan(ONE_GPU + ["parallel.overlap_grad_reduce=true", "parallel.overlap_param_gather=true"], probe=H200X1)
    assert "--overlap-grad-reduce" in plan.argv and "--overlap-param-gather" in plan.argv
    assert not [n for n in plan.resolved.notes if n.startswith("overlap_grad_reduce=auto")]


def test_cuda_graphs_turn_the_allocator_setting_off():
    plan = _plan(PLAIN + ["+preset/with=cuda_graph_moe_router"])
    assert not plan.resolved.tuned.expandable_segments
    # Megatron asserts only against expandable segments there; the save's host memory stays registered
    assert plan.env["PYTORCH_CUDA_ALLOC_CONF"] == REGISTER


def test_the_save_host_memory_is_registered_only_where_saves_are_async():
    """train.checkpoint.host_register: auto follows async saves (GPU, torch_dist); off with synchronous saves,
    without checkpoints and on CPU; a pinned value stays."""
    for off in (["train.checkpoint.async_save=false"], ["train.checkpoint.enabled=false"],
                ["train.checkpoint.host_register=false"]):
        plan = _plan(PLAIN + off)
        assert not plan.resolved.tuned.host_register, off
        assert plan.env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True", off
    notes = " ".join(_plan(PLAIN + ["train.checkpoint.async_save=false"]).resolved.notes)
    assert "host_register=auto -> false: no background checkpoint saves" in notes
    fsdp = _plan(PLAIN + ["parallel.use_megatron_fsdp=true"])
    assert not fsdp.resolved.tuned.host_register  # fsdp_dtensor saves synchronously
    pinned = _plan(["model=tiny_moe", "train.checkpoint.host_register=true"], probe=PROBE)
    assert pinned.resolved.tuned.host_register and pinned.env["PYTORCH_CUDA_ALLOC_CONF"] == REGISTER


def test_a_cluster_env_allocator_value_keeps_its_place():
    plan = _plan(PLAIN + ["+cluster.env.PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False"])
    assert plan.env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:False"


def test_pinned_choices_stay():
    pins = ["model.moe_grouped_gemm_impl=te", "dispatcher.permute_fusion=false", "dispatcher.router_fusion=false",
            "dispatcher.overlap_moe_expert_parallel_comm=false", "train.cross_entropy_loss_fusion=false",
            "train.expandable_segments=false", "parallel.overlap_grad_reduce=true",
            "parallel.overlap_param_gather=true", "train.checkpoint.host_register=false"]
    plan = _plan(PLAIN + pins)
    assert plan.resolved.tuned == SAFE and not [n for n in plan.resolved.notes if "=auto -> " in n]
    assert "--moe-permute-fusion" not in plan.argv and "--cross-entropy-loss-fusion" not in plan.argv


def test_the_loss_implementation_megatrons_or_the_recipes():
    """native/te are Megatron's flags; lean is the recipe's (MOE_CROSS_ENTROPY) and may be pinned on CPU too
    (recipes/loss.py runs its arithmetic eagerly there); auto keeps Megatron's with distillation."""
    native = _plan(PLAIN + ["train.cross_entropy_fusion_impl=native"])
    i = native.argv.index("--cross-entropy-loss-fusion")
    assert native.argv[i + 1:i + 3] == ["--cross-entropy-fusion-impl", "native"]
    assert "MOE_CROSS_ENTROPY" not in native.env
    assert not [n for n in native.resolved.notes if n.startswith("cross_entropy_fusion_impl=")]
    cpu = _plan(["model=tiny_moe", "train.cross_entropy_loss_fusion=true", "train.cross_entropy_fusion_impl=lean"],
                probe=PROBE)
    assert cpu.env["MOE_CROSS_ENTROPY"] == "lean" and "--cross-entropy-loss-fusion" not in cpu.argv
    auto_cpu = _plan(["model=tiny_moe", "train.cross_entropy_loss_fusion=true"], probe=PROBE)
    assert auto_cpu.resolved.tuned.cross_entropy_fusion_impl == "native"
    assert "cross_entropy_fusion_impl=auto -> native: CPU run" in " ".join(auto_cpu.resolved.notes)
    from launcher.plan.tuned import Stack, cross_entropy_impl

    kd = make_cfg(PLAIN + ["distill=kd"])
    assert kd.distill.enabled
    impl, note = cross_entropy_impl(kd, Stack("cuda", "transformer_engine", 2), True)
    assert impl == "native" and "distillation" in note


def test_a_pinned_fast_choice_where_it_is_not_valid_is_refused_by_its_rule():
    with pytest.raises(ConfigError) as ei:
        _plan(PLAIN + ["precision=fp8_blockwise", "model.moe_grouped_gemm_impl=torch"])
    assert ei.value.field == "precision.fp8_recipe" and "moe_grouped_gemm_impl=torch" in ei.value.rule
    with pytest.raises(ConfigError) as ei:
        _plan(["model=tiny_moe", "dispatcher.permute_fusion=true"], probe=PROBE)
    assert ei.value.field == "dispatcher.permute_fusion"


def test_a_switch_takes_auto_true_or_false():
    with pytest.raises(ConfigError) as ei:
        _plan(PLAIN + ["dispatcher.router_fusion=yes"])
    assert (ei.value.field, ei.value.value) == ("dispatcher.router_fusion", "yes")
    assert "auto, true or false" in ei.value.rule


B200 = ["preset=qwen3_30b_a3b_8xb200_ep8_mbs4_alltoall_bf16", "dispatcher.overlap_moe_expert_parallel_comm=auto"]


def test_a_knob_that_breaks_the_memory_rule_falls_back():
    """The B200 EP8 preset at MBS 4 with Megatron's native fused loss fits only without the overlap's extra micro
    batch and that loss's FP32 logits copy: auto gives both up, says so, and the run is not refused."""
    plan = _plan([*B200, "train.cross_entropy_fusion_impl=native"], probe=PROBE)
    t = plan.resolved.tuned
    assert not t.overlap_moe_expert_parallel_comm and not t.cross_entropy_loss_fusion and t.router_fusion
    assert sum("exceeds the memory rule's limit" in n for n in plan.resolved.notes) == 2
    with pytest.raises(ConfigError) as ei:  # pinned on, the memory rule refuses it as before
        _plan([*B200, "train.cross_entropy_fusion_impl=native", "train.cross_entropy_loss_fusion=true",
               "dispatcher.overlap_moe_expert_parallel_comm=true"], probe=PROBE)
    assert ei.value.field == "memory"


def test_the_lean_loss_is_never_given_up_for_memory():
    """With the lean loss (the default) the same run keeps its fused loss and the overlap: the lean loss peaks
    below the unfused one (launcher/plan/estimate_memory.py), so turning it off could not help."""
    plan = _plan(B200, probe=PROBE)
    t = plan.resolved.tuned
    assert t.cross_entropy_loss_fusion and t.cross_entropy_fusion_impl == "lean" and t.overlap_moe_expert_parallel_comm
    assert not any("exceeds the memory rule's limit" in n for n in plan.resolved.notes)


def _proxies() -> list[tuple[str, list[str]]]:
    rows = [x.split() for x in (ROOT / "perf_results" / "proxies.txt").read_text().splitlines()
            if x.strip() and not x.startswith("#")]
    return [(r[0], r[1:]) for r in rows]


@pytest.mark.parametrize("name,overrides", _proxies(), ids=[n for n, _ in _proxies()])
def test_every_family_proxy_plans_with_the_rules(name, overrides):
    """gpu_host_runs.sh proxies: one H200, seq 2048, 4 x MBS 1. Every proxy plans with Megatron's validator;
    the fusions are on, the torch experts wherever the family allows them (BF16, no expert bias), the EP overlap
    and the gradient overlap off (EP 1, data-parallel 1), and each choice says why."""
    plan = _plan([*overrides, "train=pretrain", "train.seq_length=2048", "train.global_batch_size=4",
                  "train.train_iters=6", "train.lr_warmup_iters=1", "cluster.gpus_per_node=1", "hardware=h200"],
                 probe=H200X1, validate=True)
    t = plan.resolved.tuned
    assert t.permute_fusion and t.router_fusion and t.cross_entropy_loss_fusion and t.expandable_segments
    assert not t.overlap_moe_expert_parallel_comm
    cfg = make_cfg(overrides)
    assert t.moe_grouped_gemm_impl == ("te" if cfg.model.add_bias_linear else "torch")
    assert t.cross_entropy_fusion_impl == "lean"
    assert not t.overlap_grad_reduce and "--overlap-grad-reduce" not in plan.argv  # one GPU: nothing to overlap
    assert t.host_register  # async saves by default on a GPU
    assert len([n for n in plan.resolved.notes if "=auto -> " in n]) == 9

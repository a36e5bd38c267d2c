"""Named presets (conf/preset): each composes, passes our rules and Megatron's own validator at its true
world size (256, 128, 1024 GPUs ...) on this CPU machine, reproduces the published layout it is named
for, and renders the argv in tests/golden/presets/<name>.txt. Also: Hydra's override order, the options
every preset switches with one override, and the generated README tables.

After an intended change: UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/unit/config/test_presets.py (review
the diff), and python -m launcher.tools.presets --readme README.md --perf-results.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from conftest import PROBE, make_cfg, plan_for
from launcher.errors import ConfigError
from launcher.plan.layout import parse_layout
from launcher.plan.plan import build_plan
from launcher.tools.presets import (main as presets_main, preset_config, preset_names, preset_text,
                                    published_throughput, source_of)

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "presets"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
README = Path(__file__).resolve().parents[3] / "README.md"


@dataclass(frozen=True)
class Expect:
    """What the source publishes (written here from the source, not from the preset file)."""

    model: str
    gpus: int
    hardware: str
    tp: int
    cp: int
    ep: int
    pp: int
    vpp: Optional[int]
    etp: int
    mbs: int
    gbs: int
    seq: int
    dispatcher: str
    """flex backend (deepep, hybridep) or alltoall."""
    recompute: tuple[str, ...]
    """selective modules, ("full",) or () for none."""
    precision: str = "bf16"
    routing: str = "dropless"
    a2a_overlap: bool = False
    fsdp: bool = False
    cuda_graphs: tuple[str, ...] = ()
    layout: Optional[str] = None
    """A published pipeline layout string, when the source gives one."""
    tflops: str = "-"
    """Published TFLOP/s/GPU, as the preset's source comment states it."""


Q235, NEXT, NORM_ACT = "qwen3_235b_a22b", "qwen3_next_80b_a3b", ("layernorm", "moe_act")
# Megatron-MoE-ModelZoo best_practice/qwen3/readme.md (256 H100, seq 4096, BF16, GBS 2048 unless noted)
EXPECTED: dict[str, Expect] = {
    "qwen3_235b_a22b_256xh100_tp2pp8vpp4ep32_deepep_bf16":
        Expect(Q235, 256, "h100", 2, 1, 32, 8, 4, 1, 1, 2048, 4096, "deepep", NORM_ACT, tflops="245"),
    "qwen3_235b_a22b_256xh100_tp2pp8vpp4ep32_deepep_a2a_overlap_bf16":
        Expect(Q235, 256, "h100", 2, 1, 32, 8, 4, 1, 1, 2048, 4096, "deepep", NORM_ACT, a2a_overlap=True,
               tflops="276"),
    "qwen3_235b_a22b_256xh100_tp2ep8_fsdp_deepep_bf16":
        Expect(Q235, 256, "h100", 2, 1, 8, 1, None, 1, 4, 2048, 4096, "deepep", ("full",), fsdp=True,
               tflops="276"),
    "qwen3_235b_a22b_256xh100_tp2pp32vpp3ep8_alltoall_bf16":
        Expect(Q235, 256, "h100", 2, 1, 8, 32, 3, 1, 1, 2048, 4096, "alltoall", NORM_ACT, tflops="200"),
    "qwen3_235b_a22b_256xh100_tp4pp8vpp4ep8_deepep_bf16":
        Expect(Q235, 256, "h100", 4, 1, 8, 8, 4, 1, 1, 2048, 4096, "deepep", (), tflops="167"),
    "qwen3_next_80b_a3b_128xh100_tp1pp4vpp3ep32_deepep_bf16":
        Expect(NEXT, 128, "h100", 1, 1, 32, 4, 3, 1, 1, 256, 4096, "deepep", ("layernorm", "moe_act", "shared_experts"),
               tflops="89"),
    # best_practice/qwen3/run_h100_235b.sh
    "qwen3_235b_a22b_256xh100_tp2pp8vpp4ep32_deepep_a2a_overlap_cudagraph_bf16_forced_balance":
        Expect(Q235, 256, "h100", 2, 1, 32, 8, 4, 1, 1, 2048, 4096, "deepep", NORM_ACT, routing="forced_balance",
               a2a_overlap=True, cuda_graphs=("moe_router", "moe_preprocess"), tflops="320"),
    # Megatron-MoE-ModelZoo best_practice/deepseek-v3/run_deepseek_v3_h100.sh (+ Megatron-Bridge 25.09: 338)
    "deepseek_v3_1024xh100_tp2pp8vpp4ep64_deepep_fp8_a2a_overlap":
        Expect("deepseek_v3", 1024, "h100", 2, 1, 64, 8, 4, 1, 1, 8192, 4096, "deepep", ("mla_up_proj", "mlp"),
               precision="fp8_blockwise", a2a_overlap=True, layout="Et|(tt|)*30mL", tflops="338"),
    # ModelZoo runtime.conf rows
    "deepseek_v2_256xh100_pp16vpp2ep8_alltoall_bf16":
        Expect("deepseek_v2", 256, "h100", 1, 1, 8, 16, 2, 1, 1, 1024, 4096, "alltoall", ("full",),
               layout="Et|(tt|)*14t|t|(tt|)*14tL"),
    "deepseek_v2_lite_8xh100_ep8_alltoall_bf16":
        Expect("deepseek_v2_lite", 8, "h100", 1, 1, 8, 1, None, 1, 1, 512, 4096, "alltoall", ()),
    "qwen3_30b_a3b_8xh100_ep8_alltoall_bf16":
        Expect("qwen3_30b_a3b", 8, "h100", 1, 1, 8, 1, None, 1, 1, 256, 4096, "alltoall", ()),
    "mixtral_8x7b_64xh100_pp4vpp8ep8_alltoall_bf16":
        Expect("mixtral_8x7b", 64, "h100", 1, 1, 8, 4, 8, 1, 1, 256, 4096, "alltoall", ()),
    "mixtral_8x22b_128xh100_tp2pp8vpp7ep8_alltoall_bf16":
        Expect("mixtral_8x22b", 128, "h100", 2, 1, 8, 8, 7, 1, 1, 256, 4096, "alltoall", (), tflops="~445"),
    # issue 6's benchmark shapes on the GPU host (measured in perf_results/bench and perf_results/runs)
    "qwen3_30b_a3b_4l_1xh200_bench_bf16":
        Expect("qwen3_30b_a3b", 1, "h200", 1, 1, 1, 1, None, 1, 16, 16, 4096, "allgather", ()),
    "qwen3_30b_a3b_8l_2xh200_ep2_bench_bf16":
        Expect("qwen3_30b_a3b", 2, "h200", 1, 1, 2, 1, None, 1, 4, 32, 4096, "alltoall", (),
               routing="forced_balance", a2a_overlap=True),
    # best_practice/qwen3/run_30b.sh, 1x8 B200
    "qwen3_30b_a3b_8xb200_ep8_mbs4_alltoall_bf16":
        Expect("qwen3_30b_a3b", 8, "b200", 1, 1, 8, 1, None, 1, 4, 256, 4096, "alltoall", NORM_ACT,
               routing="forced_balance"),
    # Megatron-Bridge performance summary 26.06
    "kimi_k2_256xgb300_pp4vpp4ep64_hybridep_mxfp8":
        Expect("kimi_k2", 256, "gb300", 1, 1, 64, 4, 4, 1, 2, 4096, 4096, "hybridep", ("moe_act",), precision="mxfp8",
               routing="forced_balance", cuda_graphs=("attn", "moe_router", "moe_preprocess"), tflops="1099"),
    # this project's starting layouts
    "qwen2_57b_a14b_32xh100_tp2pp2ep8_alltoall_bf16":
        Expect("qwen2_57b_a14b", 32, "h100", 2, 1, 8, 2, None, 1, 1, 256, 4096, "alltoall", ()),
    "tiny_deepseek_1xh100_bf16":
        Expect("tiny_deepseek", 1, "h100", 1, 1, 1, 1, None, 1, 2, 8, 256, "alltoall", ()),
}
# Long context (ModelZoo readme "Long Context": 32 nodes, PP8 VPP4 EP8, GBS 256, DeepEP, BF16, selective
# recompute layernorm + moe; TFLOP/s/GPU forced balance / dropless)
for _seq, _cp, _forced, _dropless in ((16384, 1, "295", "237"), (32768, 2, "335", "277"), (65536, 4, "368", "320"),
                                      (131072, 8, "389", "357")):
    for _routing, _tf in (("forced_balance", _forced), ("dropless", _dropless)):
        EXPECTED[f"qwen3_235b_a22b_256xh100_seq{_seq // 1024}k_tp4cp{_cp}pp8vpp4ep8_deepep_bf16_{_routing}"] = Expect(
            Q235, 256, "h100", 4, _cp, 8, 8, 4, 1, 1, 256, _seq, "deepep", ("layernorm", "moe"), routing=_routing,
            tflops=_tf)

PRESETS = preset_names()


def test_every_preset_states_what_it_reproduces():
    assert sorted(EXPECTED) == PRESETS


@pytest.fixture(scope="module")
def plans():
    """Every preset planned once, with Megatron's validator at its world size."""
    return {name: build_plan(preset_config(name), PROBE) for name in PRESETS}


def _value(argv: list[str], flag: str) -> Optional[str]:
    return argv[argv.index(flag) + 1] if flag in argv else None


@pytest.mark.parametrize("name", PRESETS)
def test_preset_reproduces_its_layout(name, plans):
    e, plan, cfg = EXPECTED[name], plans[name], preset_config(name)
    argv, p, t = plan.argv, cfg.parallel, cfg.train
    assert cfg.model.name == e.model and cfg.hardware.name == e.hardware
    assert plan.resolved.world_size == e.gpus
    assert (p.tp, p.cp, p.ep, p.pp, p.etp) == (e.tp, e.cp, e.ep, e.pp, e.etp)
    assert (t.micro_batch_size, t.global_batch_size, t.seq_length) == (e.mbs, e.gbs, e.seq)
    # ... and Megatron derived the same
    assert plan.megatron["virtual_pipeline_model_parallel_size"] == e.vpp
    assert plan.megatron["data_parallel_size"] == e.gpus // (e.tp * e.pp * e.cp)
    assert plan.megatron["num_microbatches"] == e.gbs // (e.mbs * e.gpus // (e.tp * e.pp * e.cp))
    if e.layout:
        assert plan.resolved.pipeline_layout == e.layout
    if plan.resolved.pipeline_layout:
        flat = "".join(parse_layout(plan.resolved.pipeline_layout))
        assert flat.count("t") == cfg.model.num_layers and flat.count("m") == (cfg.model.mtp_num_layers or 0)
    assert (cfg.dispatcher.flex_backend or cfg.dispatcher.type) == e.dispatcher
    if e.recompute == ("full",):
        assert _value(argv, "--recompute-granularity") == "full"
    elif e.recompute:
        assert _value(argv, "--recompute-granularity") == "selective"
        i = argv.index("--recompute-modules")
        assert tuple(argv[i + 1:i + 1 + len(e.recompute)]) == e.recompute
    else:
        assert "--recompute-granularity" not in argv
    assert cfg.precision.name == e.precision and t.routing == e.routing
    assert ("--moe-router-force-load-balancing" in argv) == (e.routing == "forced_balance")
    assert ("--overlap-moe-expert-parallel-comm" in argv) == e.a2a_overlap
    assert ("--use-megatron-fsdp" in argv) == e.fsdp
    assert tuple(t.cuda_graph_modules) == e.cuda_graphs
    assert published_throughput(name) == e.tflops


@pytest.mark.parametrize("name", PRESETS)
def test_preset_argv_matches_golden(name, plans):
    argv = plans[name].argv
    path = GOLDEN / f"{name}.txt"
    if UPDATE:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(argv) + "\n")
    assert path.exists(), f"{path} missing: run UPDATE_GOLDEN=1 pytest tests/unit/config/test_presets.py"
    assert path.read_text().splitlines() == argv


def test_no_stale_preset_goldens():
    assert sorted(p.stem for p in GOLDEN.glob("*.txt")) == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_file_names_itself_and_its_source(name):
    text = preset_text(name)
    assert text.startswith("# @package _global_\n")
    # runs are named after the preset: launcher/config/compose.py sets launch.name from the chosen preset, so no
    # file repeats its own name (a name written in a file would also leak into the presets that include it)
    assert "\nlaunch:" not in text and preset_config(name).launch.name == name
    assert source_of(name), "every preset says where its layout comes from (# source: ...)"


# ------------------------------------------------------------ Hydra's override order

BASE = "qwen3_235b_a22b_256xh100_tp2pp8vpp4ep32_deepep_bf16"


def test_preset_group_choices_beat_the_primary_defaults():
    default, preset = make_cfg([]), make_cfg([f"preset={BASE}"])
    assert default.model.name == "tiny_moe" and preset.model.name == "qwen3_235b_a22b"
    assert (default.dispatcher.type, preset.dispatcher.type, preset.dispatcher.flex_backend) == \
        ("alltoall", "flex", "deepep")
    assert preset.recompute.modules == ["layernorm", "moe_act"] and preset.train.seq_length == 4096
    assert (preset.cluster.nodes, preset.parallel.ep) == (32, 32)


@pytest.mark.parametrize("order", ["preset_first", "preset_last"])
def test_command_line_beats_the_preset(order):
    mine = ["model=qwen3_30b_a3b", "dispatcher=alltoall", "parallel.ep=8", "train.global_batch_size=1024"]
    cfg = make_cfg([f"preset={BASE}", *mine] if order == "preset_first" else [*mine, f"preset={BASE}"])
    assert cfg.model.name == "qwen3_30b_a3b"  # a group choice on the command line beats the preset's
    assert cfg.dispatcher.type == "alltoall" and cfg.dispatcher.flex_backend is None
    assert (cfg.parallel.ep, cfg.train.global_batch_size) == (8, 1024)  # fields too
    assert (cfg.parallel.tp, cfg.parallel.pp, cfg.cluster.nodes) == (2, 8, 32)  # the rest stays the preset's


def test_unknown_preset_names_the_closest():
    with pytest.raises(ConfigError) as ei:
        make_cfg(["preset=qwen3_235b_a22b_256xh100_tp2pp8vpp4ep32_deepep"])
    assert ei.value.field == "preset" and f"did you mean preset={BASE}" in ei.value.fix


# ------------------------------------------------------------ options every preset switches with one override

A2A_ENV = {"CUDA_DEVICE_MAX_CONNECTIONS": "32", "NVTE_FWD_LAYERNORM_SM_MARGIN": "24",
           "NVTE_BWD_LAYERNORM_SM_MARGIN": "24"}


@pytest.mark.parametrize("option,has,lacks,env", [
    ("dispatcher=alltoall", [("--moe-token-dispatcher-type", "alltoall")], ["--moe-flex-dispatcher-backend"], {}),
    ("dispatcher=hybridep", [("--moe-flex-dispatcher-backend", "hybridep")], [], {}),
    ("train.routing=forced_balance", [("--moe-router-force-load-balancing",)], [], {}),
    ("precision=fp8_blockwise", [("--fp8-format", "e4m3", "--fp8-recipe", "blockwise")], [], {}),
    ("precision=fp8_tensorwise", [("--fp8-format", "e4m3", "--fp8-recipe", "tensorwise")], [], {}),
    ("recompute=layernorm_moe", [("--recompute-modules", "layernorm", "moe")], [], {}),
    ("recompute.modules=[moe_act]", [("--recompute-modules", "moe_act", "--split")], [], {}),
    ("+preset/with=optimizer_offload", [("--optimizer-cpu-offload", "--overlap-cpu-optimizer-d2h-h2d"),
                                        ("--use-precision-aware-optimizer",)], [], {}),
    ("+preset/with=cuda_graph_moe_router", [("--cuda-graph-impl", "transformer_engine", "--cuda-graph-modules",
                                             "moe_router", "moe_preprocess")], [], {}),
    ("+preset/with=a2a_overlap", [("--overlap-moe-expert-parallel-comm", "--delay-wgrad-compute")], [], A2A_ENV),
    ("dispatcher.overlap_moe_expert_parallel_comm=true", [("--overlap-moe-expert-parallel-comm",)], [], A2A_ENV),
])
def test_one_override_switches_an_option(option, has, lacks, env):
    """On the published cross-node EP layout, validated by our rules and Megatron's at 256 GPUs."""
    plan = plan_for([f"preset={BASE}", "launch.dry_run=true", option])
    argv = plan.argv
    for run in has:
        assert any(tuple(argv[i:i + len(run)]) == run for i in range(len(argv))), run
    for flag in lacks:
        assert flag not in argv
    for k, v in env.items():
        assert plan.env[k] == v


def test_two_options_at_once_and_dropless_back():
    plan = plan_for(["preset=qwen3_235b_a22b_256xh100_tp2pp8vpp4ep32_deepep_a2a_overlap_cudagraph_bf16_forced_balance",
                     "launch.dry_run=true", "train.routing=dropless", "+preset/with=[optimizer_offload]"])
    assert "--moe-router-force-load-balancing" not in plan.argv and "--optimizer-cpu-offload" in plan.argv


def test_mxfp8_is_blackwell_only():
    with pytest.raises(ConfigError) as ei:
        plan_for([f"preset={BASE}", "launch.dry_run=true", "precision=mxfp8"], validate_megatron=False)
    assert ei.value.field == "precision.fp8_recipe" and "Blackwell" in ei.value.rule
    plan = plan_for([f"preset={BASE}", "launch.dry_run=true", "precision=mxfp8", "hardware=b200"])
    assert ("--fp8-recipe", "mxfp8") == tuple(plan.argv[plan.argv.index("--fp8-recipe"):][:2])


# ------------------------------------------------------------ the generated README tables


def test_readme_tables_are_generated_from_the_configs(capsys):
    assert presets_main(["--check", str(README)]) == 0, capsys.readouterr().err

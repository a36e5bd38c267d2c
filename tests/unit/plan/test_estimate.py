"""The memory and FLOPs estimator (launcher/plan/estimate_*.py) against what GPU runs measured and what
Megatron computes, plus its schedule arithmetic, the pre-launch check and the command."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from launcher.config.compose import compose
from launcher.plan.resolve import Resolved
from launcher.errors import ConfigError
from launcher.plan.params import count
from launcher.plan.estimate_flops import estimate_flops, flops_per_sequence_tokens
from launcher.plan.estimate_memory import MiB, _inflight_chunks, estimate_memory
from launcher.plan.estimate_static import layer_positions, padded_vocab, rank_params, stage_layouts
from launcher.plan.estimate_table import check_fits, cheapest_fixes, render_table
from launcher.tools import estimate as estimate_cli
from launcher.plan.tuned import SAFE, tuned_config
from launcher.tools import estimate_calibration as calib

ROOT = Path(__file__).resolve().parents[3]
RUNS = calib.gpu_runs()
KNOWN_MISSES = {name: limit for name, (_, limit) in calib.KNOWN_MISSES.items()}


def _cfg(*overrides: str):
    """The composed config with its tuned knobs as the safe choices of _res's default Resolved.tuned (the
    arithmetic here is checked on the plain flags; launcher/plan/tuned.py has its own tests)."""
    return tuned_config(compose(list(overrides))[1], SAFE)


def _res(cfg, world: int, layout=None, device: str = "cuda", gaf: bool = False) -> Resolved:
    return Resolved(device=device, nproc_per_node=min(world, 8), world_size=world,
                    transformer_impl="transformer_engine", sequence_parallel=cfg.parallel.tp > 1,
                    pipeline_layout=layout, gradient_accumulation_fusion=gaf)


def test_enough_gpu_runs_with_a_memory_report():
    assert len(RUNS) >= 8, [r.name for r in RUNS]


@pytest.mark.parametrize("run_dir", [r for r in RUNS if r.name not in KNOWN_MISSES], ids=lambda p: p.name)
def test_peak_within_10_percent_of_measured(run_dir):
    r = calib.row(run_dir)
    assert abs(r.ratio - 1) <= 0.10, (r.run, r.estimated_mib, r.measured_mib)


@pytest.mark.parametrize("name", sorted(KNOWN_MISSES))
def test_known_misses_stay_bounded(name):
    r = calib.row(calib.RUNS / name)
    assert r.ratio < 0.9 and (r.measured_mib - r.estimated_mib) * MiB < KNOWN_MISSES[name]


def test_report_is_current():
    """perf_results/estimate_vs_measured.md is what the generator writes today."""
    text = calib.render([calib.row(d) for d in RUNS])
    assert calib.REPORT.read_text() == text, "regenerate: python -m launcher.tools.estimate_calibration --write"


@pytest.mark.parametrize("run_dir", RUNS, ids=lambda p: p.name)
def test_flops_per_step_match_megatrons_log(run_dir):
    r = calib.row(run_dir)
    assert r.logged_flops_per_step is not None
    assert abs(r.logged_flops_per_step - r.flops_per_step) <= r.logged_tolerance


@pytest.mark.parametrize("run_dir", RUNS, ids=lambda p: p.name)
def test_flops_equal_megatrons_function_on_the_runs_argv(run_dir):
    """The config rebuilt from the run directory gives Megatron's count for the argv that ran."""
    from launcher.plan.megatron.validator import megatron_validate

    cfg, res, plan = calib.load_run(run_dir)
    facts = megatron_validate(plan["argv"], res.world_size, {"CUDA_DEVICE_MAX_CONNECTIONS": "1"})
    if facts["flops_per_sequence"] is None:
        pytest.skip("the vocabulary came from the run's tokenizer (no --vocab-size): Megatron counts on the node")
    assert flops_per_sequence_tokens(cfg, 1) == pytest.approx(facts["flops_per_sequence"], rel=1e-12)


FLOPS_CONFIGS = {
    "deepseek_v3 (MLA, MTP, shared experts, dense first layers)": ["model=deepseek_v3", "train=pretrain"],
    "qwen3_next_80b_a3b (gated delta net, gated attention, shared expert)": ["model=qwen3_next_80b_a3b"],
    "deepseek_v2_lite (MLA without q compression)": ["model=deepseek_v2_lite", "model.num_layers=6"],
    "qwen2_57b_a14b (shared expert, QKV bias)": ["model=qwen2_57b_a14b", "model.num_layers=4"],
    "mixtral_8x7b (TP 2: vocabulary padded per TP rank)": ["model=mixtral_8x7b", "parallel.tp=2",
                                                          "cluster.gpus_per_node=2"],
    "kimi_k2 cut to 4 layers": ["model=kimi_k2", "model.num_layers=4", "train.seq_length=8192"],
}


@pytest.mark.parametrize("name", sorted(FLOPS_CONFIGS))
def test_flops_equal_megatrons_function(name):
    """Our arithmetic equals megatron.training.training.num_floating_point_operations on the argv."""
    from launcher.plan.megatron.table import resolved_flags, table_flags
    from launcher.plan.megatron.validator import megatron_validate

    cfg = _cfg(*FLOPS_CONFIGS[name])
    res = _res(cfg, world=cfg.parallel.tp)
    argv = table_flags(cfg) + resolved_flags(cfg, res)
    megatron = megatron_validate(argv, res.world_size, {"CUDA_DEVICE_MAX_CONNECTIONS": "1"})["flops_per_sequence"]
    assert flops_per_sequence_tokens(cfg, 1) == pytest.approx(megatron, rel=1e-12)
    f = estimate_flops(cfg)
    assert f.per_step == pytest.approx(megatron * cfg.train.global_batch_size, rel=1e-12)


def test_estimator_imports_neither_torch_nor_megatron():
    code = ("import sys, launcher.plan.estimate_memory, launcher.plan.estimate_flops, launcher.plan.estimate_table;"
            "print([m for m in ('torch', 'megatron', 'transformer_engine') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_inflight_micro_batches_follow_megatrons_schedules():
    """1F1B: rank r holds PP - r micro batches; interleaved: (PP - r - 1) x 2 + (VPP - 1) x PP + 1 chunks,
    one more with the EP A2A overlap; never more than the step has."""
    cfg = _cfg("model=qwen3_30b_a3b", "parallel.pp=4", "cluster.gpus_per_node=4")
    assert [len(_inflight_chunks(cfg, r, 16)) for r in range(4)] == [4, 3, 2, 1]
    cfg.parallel.vpp = 2
    assert [len(_inflight_chunks(cfg, r, 16)) for r in range(4)] == [11, 9, 7, 5]
    assert _inflight_chunks(cfg, 3, 16) == [0, 0, 0, 0, 1]  # first PP micro batches on virtual stage 0
    assert len(_inflight_chunks(cfg, 0, 2)) == 4
    cfg.dispatcher.overlap_moe_expert_parallel_comm = True
    assert len(_inflight_chunks(cfg, 0, 16)) == 12


@pytest.mark.parametrize("overrides,pp,vpp,layout", [
    (["model=deepseek_v3", "train=pretrain"], 8, 4, "Et|(tt|)*30mL"),
    (["model=qwen3_235b_a22b"], 8, 4, "Ett|(ttt|)*30ttL"),
    (["model=qwen3_30b_a3b"], 4, 1, None),
])
def test_stages_hold_every_parameter_once(overrides, pp, vpp, layout):
    """The stages' parameters add up to the model (padded vocabulary; a last stage with MTP layers
    builds its own embedding)."""
    cfg = _cfg(*overrides)
    cfg.parallel.pp, cfg.parallel.vpp = pp, (vpp if vpp > 1 else None)
    res = _res(cfg, world=pp, layout=layout)
    layouts = stage_layouts(cfg, res)
    positions = layer_positions(layouts, pp)
    parts = [rank_params(cfg, chunks, positions[r]) for r, chunks in enumerate(layouts)]
    total = sum(p.sharded + p.replicated + p.experts + p.embedding_like for p in parts)
    c = count(cfg)
    h, pad = cfg.model.hidden_size, padded_vocab(cfg) - cfg.model.vocab_size
    expected = c.total_with_mtp + pad * h * (2 if c.output else 1)
    if c.mtp and pp > 1:
        expected += padded_vocab(cfg) * h
    assert total == expected
    assert sorted(i for pos in positions for i in pos.values()) == list(range(cfg.model.num_layers))


def test_recompute_and_offload_lower_the_peak_in_order():
    base = ["model=qwen3_30b_a3b", "train=pretrain", "train.micro_batch_size=2", "parallel.ep=8",
            "cluster.gpus_per_node=8"]
    peaks = {}
    for name, extra in {"none": [], "norm_act": ["recompute=norm_act"], "full": ["recompute=full"],
                        "offload": ["+preset/with=optimizer_offload"]}.items():
        cfg = _cfg(*base, *extra)
        peaks[name] = estimate_memory(cfg, _res(cfg, world=8), capacity=80 * 2 ** 30).peak
    assert peaks["full"] < peaks["norm_act"] < peaks["none"]
    assert peaks["offload"] < peaks["none"]


def test_virtual_stages_add_up_to_the_held_activations():
    cfg = _cfg("preset=qwen3_235b_a22b_256xh100_tp2pp8vpp4ep32_deepep_bf16")
    est = estimate_memory(cfg, _res(cfg, world=256, layout="Ett|(ttt|)*30ttL"))
    for s in est.stages:
        held = sum(s.chunk_activations[v] for v in _inflight_chunks(cfg, s.rank, 2048 // 16))
        assert abs(held - s.activations) <= len(s.chunk_activations) * s.inflight  # int rounding only
        assert len(s.chunk_activations) == 4


def test_full_recompute_units_trade_saved_inputs_for_a_larger_backward():
    one = _cfg("model=qwen3_30b_a3b", "train=pretrain", "recompute=full", "parallel.ep=8",
               "cluster.gpus_per_node=8")
    two = _cfg("model=qwen3_30b_a3b", "train=pretrain", "recompute=full", "recompute.num_layers=2",
               "parallel.ep=8", "cluster.gpus_per_node=8")
    a, b = (estimate_memory(c, _res(c, world=8)).stages[0] for c in (one, two))
    inputs = 48 * 2 * 2048 * 4096  # 48 layers keep their BF16 input (hidden 2048, 4096 tokens)
    assert a.activations - b.activations == inputs // 2 and b.transient > a.transient


def test_check_fits_refuses_with_breakdown_and_fixes():
    cfg = _cfg("model=qwen3_30b_a3b", "train=pretrain", "train.micro_batch_size=4", "cluster.gpus_per_node=8",
               "hardware=h100")
    res = _res(cfg, world=8)
    with pytest.raises(ConfigError) as e:
        check_fits(cfg, res)
    msg = str(e.value)
    assert e.value.field == "memory" and "weights" in msg and "activations" in msg
    assert "parallel.ep=2" in msg and "launch.skip_memory_check=true" in msg
    check_fits(cfg, res, skip=True)  # the user's override


def test_the_first_proposed_fix_fits():
    cfg = _cfg("model=qwen3_30b_a3b", "train=pretrain", "parallel.ep=8", "cluster.gpus_per_node=8", "hardware=h100")
    res = _res(cfg, world=8)
    with pytest.raises(ConfigError, match="one of: "):
        check_fits(cfg, res)
    text, peak = cheapest_fixes(cfg, res, 80 * 2 ** 30)[0]
    assert text == "+preset/with=optimizer_offload" and peak <= 0.9 * 80 * 2 ** 30
    check_fits(_cfg("model=qwen3_30b_a3b", "train=pretrain", "parallel.ep=8", "cluster.gpus_per_node=8",
                    "hardware=h100", text), res)


def test_degrees_that_do_not_tile_the_gpus_are_one_line_errors():
    cfg = _cfg("model=qwen3_30b_a3b", "parallel.ep=8", "parallel.pp=2", "cluster.gpus_per_node=8")
    with pytest.raises(ConfigError, match="ep x etp x pp=16"):
        estimate_memory(cfg, _res(cfg, world=8))


def test_table_marks_the_peak_stage():
    cfg = _cfg("preset=qwen3_235b_a22b_256xh100_tp2pp8vpp4ep32_deepep_bf16")
    res = _res(cfg, world=256, layout="Ett|(ttt|)*30ttL")
    est = estimate_memory(cfg, res)
    table = render_table(est, estimate_flops(cfg))
    assert len(est.stages) == 8 and table.count("<- peak") == 1
    assert est.peak <= est.capacity  # the published layout fits on H100 80 GB


def test_command_prints_table_and_exit_status(capsys):
    ok = ["model=qwen3_30b_a3b", "model.num_layers=8", "parallel=ep2", "train=pretrain",
          "train.micro_batch_size=4", "train.global_batch_size=32", "cluster.gpus_per_node=2", "hardware=h200"]
    assert estimate_cli.main(ok) == 0
    assert "<- peak" in capsys.readouterr().out
    assert estimate_cli.main(ok + ["hardware=h100", "model.num_layers=48"]) == 1
    assert "moe-estimate: error: memory=" in capsys.readouterr().err


def test_cpu_runs_compare_against_the_hosts_memory_per_process(tmp_path):
    from launcher.plan.estimate_memory import device_capacity, host_memory_bytes

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384 kB\nMemFree:        1024 kB\n")
    assert host_memory_bytes(str(meminfo)) == 16384 * 1024
    cfg = _cfg()
    res = _res(cfg, world=2, device="cpu")
    assert device_capacity(cfg, res) == host_memory_bytes() // 2
    assert device_capacity(cfg, _res(cfg, world=2)) == cfg.hardware.memory_gib * 2 ** 30

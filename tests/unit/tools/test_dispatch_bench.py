"""moe-dispatch-bench's login side (launcher/tools/dispatch_bench.py) and dispatcher.tuned
(launcher/plan/dispatch_tuned.py). The benchmark itself runs end to end on CPU in
tests/e2e/test_dispatch_bench_cpu.py; on GPUs in tests/gpu."""
from __future__ import annotations

import json

import pytest

from conftest import PROBE, make_cfg
from launcher.errors import ConfigError
from launcher.plan.plan import build_plan
from launcher.plan.dispatch_tuned import apply_tuned
from launcher.tools.dispatch_bench import GRID, shapes, spec_for, summarize

QWEN = ["model=qwen3_30b_a3b", "train=pretrain", "train.micro_batch_size=4"]


def test_shapes_are_the_models():
    s = shapes(make_cfg(QWEN))
    assert s == {"hidden": 2048, "experts": 128, "topk": 8, "tokens": 4096 * 4, "dtype": "bf16"}
    # sequence parallel: each TP rank routes its slice of the sequence; CP splits it too
    assert shapes(make_cfg([*QWEN, "parallel.tp=2", "parallel.cp=2"]))["tokens"] == 4096 * 4 // 4


def test_every_backend_gets_its_grid_with_the_default_first():
    spec = spec_for(make_cfg(QWEN), ["alltoall", "deepep", "hybridep"], "cuda", 2, 10)
    assert [c["backend"] for c in spec["cases"]].count("deepep") == len(GRID["deepep"]) > 4
    assert [c for c in spec["cases"] if c["backend"] == "hybridep"][0]["knobs"] == {}
    assert any("nvl_chunk" in c["knobs"] for c in spec["cases"])


@pytest.mark.parametrize("backends, device, nproc, field", [
    (["deepep"], "cpu", 2, "--backends"), (["hybridep"], "cpu", 2, "--backends"), (["nccl"], "cuda", 2, "--backends"),
    (["alltoall"], "cpu", 3, "--nproc"),
])
def test_refusals_are_one_line(backends, device, nproc, field):
    with pytest.raises(ConfigError) as e:
        spec_for(make_cfg(QWEN), backends, device, nproc, 10)
    assert e.value.field == field and "\n" not in str(e.value)


def _record(results):
    return {"name": "t", "model": "qwen3_30b_a3b", "shapes": {"hidden": 2048, "experts": 128, "topk": 8,
                                                             "tokens": 16384, "dtype": "bf16"},
            "iters": 10, "host": "h", "world_size": 2, "device": "cuda", "results": results}


def _r(backend, knobs, d, c, correct=True):
    return {"backend": backend, "knobs": knobs, "dispatch_ms": d, "combine_ms": c, "dispatch_gbps": 1.0,
            "combine_gbps": 1.0, "correct": correct}


RESULTS = [_r("alltoall", {}, 2.0, 2.0), _r("hybridep", {}, 1.0, 1.0),
           _r("hybridep", {"moe_flex_dispatcher_num_sms": 24, "moe_hybridep_num_blocks_permute": 32,
                           "moe_hybridep_num_blocks_unpermute": 32, "moe_permute_fusion_into_hybridep": True},
              0.5, 0.5),
           _r("hybridep", {"moe_flex_dispatcher_num_sms": 8}, 0.2, 0.2, correct=False),
           _r("hybridep", {"moe_flex_dispatcher_num_sms": 16}, 2.0, 2.0),
           _r("deepep", {}, 1.5, 1.5), _r("deepep", {"moe_flex_dispatcher_num_sms": 32, "nvl_chunk": 16}, 1.0, 1.0)]


def test_summary_best_default_worst_and_speedups():
    text = summarize("t", _record(RESULTS))
    rows = [line for line in text.splitlines() if line.startswith("| hybridep")]
    assert [r.split(" | ")[1] for r in rows] == ["default", "best", "worst"]
    assert rows[1].endswith("| 2.00x |") and rows[2].endswith("| 0.50x |")
    assert "WRONG RESULT" in text and "Fastest: hybridep" in text


def test_tuned_applies_the_best_correct_case_as_megatron_flags(tmp_path):
    path = tmp_path / "qwen.json"
    path.write_text(json.dumps(_record(RESULTS)))
    base = [*QWEN, "model.num_layers=2", "parallel=ep2", "cluster.gpus_per_node=2", "hardware=h200",
            "model.transformer_impl=transformer_engine", "launch.megatron_validate=false",
            "launch.skip_memory_check=true", f"dispatcher.tuned={path}"]
    argv = build_plan(make_cfg([*base, "dispatcher=hybridep"]), PROBE).argv
    assert argv[argv.index("--moe-flex-dispatcher-num-sms") + 1] == "24"  # not the faster wrong case (8)
    assert argv[argv.index("--moe-hybridep-num-blocks-permute") + 1] == "32"
    assert "--moe-permute-fusion-into-hybridep" in argv
    # deepep: the SM count applies, the NVLink chunk size has no Megatron flag
    cfg = apply_tuned(make_cfg([*base, "dispatcher=deepep"]))
    assert cfg.dispatcher.flex_num_sms == 32 and "nvl_chunk" not in cfg.megatron.extra


@pytest.mark.parametrize("extra, field, rule", [
    (["dispatcher=allgather"], "dispatcher.tuned", "no correct result for dispatcher allgather"),
    (["dispatcher=hybridep", "dispatcher.flex_num_sms=20"], "dispatcher.flex_num_sms", "sets it too"),
    (["dispatcher=hybridep", "model.num_experts=64"], "dispatcher.tuned", "was tuned for"),
])
def test_tuned_refusals(tmp_path, extra, field, rule):
    path = tmp_path / "qwen.json"
    path.write_text(json.dumps(_record(RESULTS)))
    with pytest.raises(ConfigError) as e:
        apply_tuned(make_cfg([*QWEN, f"dispatcher.tuned={path}", *extra]))
    assert e.value.field == field and rule in e.value.rule
    with pytest.raises(ConfigError, match="no dispatcher benchmark results"):
        apply_tuned(make_cfg([*QWEN, "dispatcher=hybridep", "dispatcher.tuned=never_run"]))

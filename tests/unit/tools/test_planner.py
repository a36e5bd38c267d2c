"""moe-plan (issue 18 item 3): for the published settings the planner's top choices are at least as good, by its own
model, as the published layouts, which are predicted to fit and lie inside its search space; a search takes under
30 s of CPU; the throughput model's terms move the way their arithmetic says."""
from __future__ import annotations

import dataclasses
import json
import time

import pytest

from launcher.errors import ConfigError
from launcher.tools import plan_space as space
from launcher.tools import planner
from launcher.tools.plan_model import Calibration, predict
from launcher.tools.plan_search import evaluate, search

# (base overrides, GPUs): the published layouts users know (conf/preset sources name the tables)
PUBLISHED = {
    "qwen3_235b_256xh100": (["preset=qwen3_235b_a22b_256xh100_tp2pp8vpp4ep32_deepep_bf16"], 256),
    "deepseek_v3_1024xh100": (["preset=deepseek_v3_1024xh100_tp2pp8vpp4ep64_deepep_fp8_a2a_overlap"], 1024),
    "qwen3_30b_8xh100": (["preset=qwen3_30b_a3b_8xh100_ep8_alltoall_bf16"], 8),
    "qwen3_30b_16xh100": (["preset=qwen3_30b_a3b_8xh100_ep8_alltoall_bf16"], 16),
    "kimi_k2_256xgb300": (["preset=kimi_k2_256xgb300_pp4vpp4ep64_hybridep_mxfp8"], 256),
}
CPU_SECONDS = 30.0


def base(overrides: list[str], gpus: int, seq=None, gbs=None):
    cfg, _ = planner.compose_base(planner.base_overrides(overrides, seq, gbs), gpus, seq)
    return cfg


@pytest.mark.parametrize("name", sorted(PUBLISHED))
@pytest.mark.slow  # searches 256-1024-GPU spaces (about 25 s on 2 cores); CI runs it
def test_top_choices_match_or_beat_the_published_layout(name):
    overrides, gpus = PUBLISHED[name]
    cfg = base(overrides, gpus)
    _, published, peak, limit = evaluate(cfg)
    assert peak <= limit, f"{name}: the published layout is predicted not to fit ({peak / 2**30:.1f} GiB)"
    p = cfg.parallel
    assert space.Grid(p.tp, p.cp, p.pp, p.vpp or 1, p.ep, p.etp) in set(space.grids(cfg, gpus))
    start = time.process_time()
    results, stats = search(cfg, gpus, top=5)
    cpu = time.process_time() - start
    assert cpu < CPU_SECONDS, f"{name}: {cpu:.1f} s of CPU"
    assert results and results[0].prediction.tflops_per_gpu >= published.tflops_per_gpu
    for r in results:  # every choice passed the memory estimate and is ranked best first
        assert r.peak_bytes <= r.capacity * 0.9
    speeds = [r.prediction.tflops_per_gpu for r in results]
    assert speeds == sorted(speeds, reverse=True)
    assert stats.visited < stats.bounds  # the bound pruned


def test_published_predictions_are_in_the_published_range():
    """The model's absolute level, against the published figures (conf/preset sources): within 25%."""
    published = {"qwen3_235b_256xh100": 245.0, "deepseek_v3_1024xh100": 338.0, "kimi_k2_256xgb300": 1099.0}
    for name, measured in published.items():
        overrides, gpus = PUBLISHED[name]
        _, pred, _, _ = evaluate(base(overrides, gpus))
        assert abs(pred.tflops_per_gpu / measured - 1) < 0.25, (name, pred.tflops_per_gpu)


def _with(cfg, **parallel):
    return dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, **parallel))


def _predict(cfg, cal=None):
    from launcher.tools.plan_search import check_rules
    return predict(cfg, check_rules(cfg), cal)


def test_interleaving_divides_the_bubble():
    cfg = base(["preset=qwen3_235b_a22b_256xh100_tp2pp8vpp4ep32_deepep_bf16"], 256)
    one = _predict(_with(cfg, vpp=None))
    four = _predict(cfg)
    busy = lambda p: sum(p.parts[k] for k in ("compute", "recompute", "tp", "ep"))  # noqa: E731
    # bubble = busy x (pp - 1) / (vpp x micro batches): the same busy time, a quarter of the bubble
    assert one.parts["bubble"] / busy(one) == pytest.approx(4 * four.parts["bubble"] / busy(four))


def test_expert_parallel_across_nodes_costs_more_than_inside_one():
    cfg = base(["preset=qwen3_30b_a3b_8xh100_ep8_alltoall_bf16"], 16)
    inside, across = _predict(cfg), _predict(_with(cfg, ep=16))
    # EP 8: all peers on NVLink; EP 16: half the copies go over a NIC 9x slower than NVLink
    assert across.parts["ep"] > 2 * inside.parts["ep"]


def test_full_recompute_adds_about_a_third():
    cfg = base(["preset=qwen3_30b_a3b_8xh100_ep8_alltoall_bf16"], 8)
    full = space.recompute_options(["full"])["full"]
    pred = _predict(dataclasses.replace(cfg, recompute=full))
    assert 0.25 < pred.parts["recompute"] / pred.parts["compute"] < 1 / 3


def test_dispatch_calibration_file(tmp_path):
    doc = {"model": "qwen3_30b_a3b", "results": [
        {"dispatcher": "alltoall", "num_sms": None, "dispatch": {"algbw_gbps": 150.0}},
        {"dispatcher": "alltoall", "algbw_gbps": 310.0, "time_ms": 1.0},
        {"backend": "deepep", "bandwidth_gbps": 200.0}]}
    path = tmp_path / "dispatch.json"
    path.write_text(json.dumps(doc))
    cal = planner.read_calibration(path)
    assert cal.bandwidth_gbps == {"alltoall": 310.0, "deepep": 200.0}
    cfg = base(["preset=qwen3_30b_a3b_8xh100_ep8_alltoall_bf16"], 8)
    slow = _predict(cfg, Calibration({"alltoall": 50.0}))
    fast = _predict(cfg, cal)
    assert slow.parts["ep"] > fast.parts["ep"]
    (tmp_path / "empty.json").write_text("{\"results\": []}")
    with pytest.raises(ConfigError, match="names no dispatcher"):
        planner.read_calibration(tmp_path / "empty.json")


def test_cli_prints_ready_to_run_overrides(capsys):
    rc = planner.main(["preset=qwen3_30b_a3b_8l_2xh200_ep2_bench_bf16", "--gpus", "2", "--seq", "4096", "--gbs",
                       "32", "--dispatchers", "alltoall,allgather", "--top", "3", "--megatron-check", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith("moe-launch ")]
    assert len(lines) == 3 and all("cluster.gpus_per_node=2" in line for line in lines)
    assert "[megatron: ok]" in out
    # the printed overrides compose: they are what moe-launch takes
    first = lines[0].split()[1:]
    assert base(first, 2).parallel.ep == int(next(a for a in first if a.startswith("parallel.ep=")).split("=")[1])


@pytest.mark.parametrize("args, text", [(["model=qwen3_30b_a3b"], "--gpus"),
                                         (["model=qwen3_30b_a3b", "--gpus", "12"], "multiple of the 8"),
                                         (["model=qwen3_30b_a3b", "--gpus", "8", "--bogus"], "not an option"),
                                         (["model=qwen3_30b_a3b", "--gpus", "8", "--calibrate", "2"], "--out"),
                                         (["model=qwen3_30b_a3b", "--gpus", "8", "--calibrate", "2", "--out",
                                           "/proc/moe-test/x"], "--out='/proc/moe-test/x': cannot be created"),
                                         (["model=qwen3_30b_a3b", "--gpus", "8", "--json", "/proc/moe-test/x"],
                                          "--json='/proc/moe-test/x': cannot be written")])
def test_bad_input_is_one_line(args, text, capsys):
    assert planner.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and text in err


def test_nothing_fits_says_so(capsys):
    assert planner.main(["model=qwen3_235b_a22b", "hardware=h100", "--gpus", "8", "--megatron-check", "0"]) == 1
    assert "no layout passes the rules and fits" in capsys.readouterr().err


def test_calibration_reranks_by_measured_throughput(tmp_path):
    cfg = base(["preset=qwen3_30b_a3b_8l_2xh200_ep2_bench_bf16"], 2)
    results, _ = search(cfg, 2, top=3, dispatchers=["alltoall"])
    measured_by_rank = {"01": 200.0, "02": 300.0, "03": None}  # the second is faster, the third fails
    calls = []

    def launch(cmd, log):
        calls.append(cmd)
        run_dir = next(a.split("=", 1)[1] for a in cmd if a.startswith("launch.run_dir="))
        from pathlib import Path
        d = Path(run_dir)
        d.mkdir(parents=True)
        value = measured_by_rank[d.name]
        d.joinpath("record.json").write_text(json.dumps({
            "status": "ok" if value else "failed", "failure": None if value else {"class": "oom", "kind": "cuda"},
            "steady_state": {"tflops_per_gpu": {"median": value}} if value else {}}))
        return 0

    ranked = planner.calibrate(results, ["preset=qwen3_30b_a3b_8l_2xh200_ep2_bench_bf16"], [], 3, tmp_path, 10,
                               launch=launch)
    assert [m.get("value") for _, m in ranked] == [300.0, 200.0, None]
    assert ranked[0][0] is results[1]
    assert all("train.train_iters=10" in c for c in calls)


def test_printed_overrides_are_what_moe_launch_accepts():
    """Each top candidate, as printed, composes over the user's base and passes the launcher's rules: the
    bench preset turns the EP overlap on, so a candidate without it must say so (EP 1 would be refused)."""
    from launcher.config.compose import compose
    from launcher.plan.plan import resolve_and_validate
    from conftest import PROBE

    over = planner.base_overrides(["preset=qwen3_30b_a3b_8l_2xh200_ep2_bench_bf16"], 4096, 32)
    cfg, clus = planner.compose_base(over, 2, 4096)
    results, _ = search(cfg, 2, top=3, dispatchers=("alltoall", "allgather"))
    assert results
    for r in results:
        _, got = compose([*over, *r.candidate.overrides(), *clus, "launch.dry_run=true",
                          "launch.megatron_validate=false"])
        resolve_and_validate(got, PROBE)  # what moe-launch runs: the rules, the tuned memory fallback

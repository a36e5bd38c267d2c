"""Run records built from real run directories (perf_results/runs/ and the CPU failures in tests/data)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from launcher.records import record
from launcher.records.record import build_record, hardware_catalog, match_hardware, read_versions, write_record

ROOT = Path(__file__).resolve().parents[3]
RUNS = ROOT / "perf_results" / "runs"
DATA = Path(__file__).resolve().parents[2] / "data"
EVIDENCE = ("plan.json", "train.log", "versions.txt", "launch.txt")


def _copy_run(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    dst.mkdir()
    for f in EVIDENCE:
        if (RUNS / name / f).exists():
            shutil.copy(RUNS / name / f, dst / f)
    return dst


def _failed_run(name: str, log: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(DATA / "runs" / name, dst)
    shutil.copy(DATA / "logs" / log, dst / "train.log")
    return dst


@pytest.fixture(scope="module")
def dropless(tmp_path_factory):
    return build_record(_copy_run("qwen3_30b_a3b_8l_ep2_dropless", tmp_path_factory.mktemp("r")))


def test_record_of_the_2gpu_dropless_run(dropless):
    r = dropless
    assert r["schema"] == record.SCHEMA and r["status"] == "ok" and r["failure"] is None
    assert r["model"] == {"name": "qwen3_30b_a3b", "num_layers": 8, "full_num_layers": 48, "full_num_experts": 128,
                          "num_experts": 128, "topk": 8, "hidden_size": 2048}
    assert (r["dispatcher"], r["routing"], r["precision"]["name"], r["recompute"]) == \
        ("alltoall", "dropless", "bf16", "none")
    assert r["parallel"]["ep"] == 2 and r["parallel"]["dp"] == 2 and r["parallel"]["edp"] == 1
    assert r["batch"] == {"seq_length": 4096, "micro_batch_size": 4, "global_batch_size": 32, "grad_accum": 4,
                          "train_iters": 20}
    # old-format versions.txt, GPU name mapped to conf/hardware/h200.yaml by its gpu field
    assert r["versions"]["megatron_core"] == "0.19.2" and r["versions"]["nccl"] == "2.28.9"
    assert r["versions"]["transformer_engine"] == "2.20.2" and r["versions"]["source"] == "versions.txt"
    assert r["system"]["hardware"] == "h200" and r["system"]["gpu_name"] == "NVIDIA H200"
    assert r["system"]["peak_tflops"]["bf16"] == 989.0
    assert r["command"].startswith("moe-launch model=qwen3_30b_a3b")   # from launch.txt


def test_series_and_steady_state(dropless):
    s, ss = dropless["series"], dropless["steady_state"]
    assert len(s) == 20 and {"loss", "load_balancing_loss", "grad_norm", "tflops_per_gpu", "step_ms"} <= set(s[0])
    it5 = s[4]
    assert it5["tokens_per_s_per_gpu"] == pytest.approx(32 * 4096 / (it5["step_ms"] / 1000) / 2, rel=1e-3)
    assert it5["mfu"] == pytest.approx(it5["tflops_per_gpu"] / 989.0, rel=1e-3)
    w = ss["window"]
    assert (w["first"], w["last"], w["iterations"], w["warmup_iterations"]) == (4, 20, 17, 3)
    steady = [x["step_ms"] for x in s[3:]]
    assert ss["step_time_ms"]["median"] == pytest.approx(sorted(steady)[8], rel=1e-4)
    assert ss["step_time_ms"]["min"] <= ss["step_time_ms"]["p10"] <= ss["step_time_ms"]["median"] \
        <= ss["step_time_ms"]["p90"] <= ss["step_time_ms"]["max"]
    assert ss["mfu"]["median"] == pytest.approx(ss["tflops_per_gpu"]["median"] / 989.0, rel=1e-3)
    assert ss["peak_memory_mb"]["max_allocated_mb"] == dropless["memory"]["max_allocated_mb"] > 0
    assert "h200 dense BF16 peak" in dropless["mfu_basis"]


def test_window_is_declared(tmp_path):
    r = build_record(_copy_run("qwen3_30b_a3b_8l_ep2_forced_balance", tmp_path), warmup=5, last=15)
    w = r["steady_state"]["window"]
    assert (w["first"], w["last"], w["iterations"]) == (6, 15, 10)
    r = build_record(tmp_path / "qwen3_30b_a3b_8l_ep2_forced_balance", warmup=25)
    assert "no logged iteration" in r["steady_state"]["reason"]


def test_versions_json_wins_over_versions_txt(tmp_path):
    d = _copy_run("tiny_moe_1gpu", tmp_path)
    (d / "versions.json").write_text(json.dumps({
        "torch": "2.11.0+cu130", "cuda": "13.0", "nccl": "2.28.9", "megatron_core": "0.19.2",
        "transformer_engine": "2.20.2", "deep_ep": None, "gpu_name": "NVIDIA H100 80GB HBM3", "gpus_visible": 8,
        "nodes": 1, "hostname": "node-a", "env": {"NCCL_DEBUG": "WARN"}}))
    r = build_record(d)
    assert r["versions"]["source"] == "versions.json" and r["system"]["hardware"] == "h100"
    assert r["system"]["hostname"] == "node-a" and r["env"]["runtime"] == {"NCCL_DEBUG": "WARN"}


def test_fp8_runs_use_the_fp8_peak(tmp_path):
    d = _copy_run("qwen3_30b_a3b_8l_ep2_forced_balance", tmp_path)
    plan = json.loads((d / "plan.json").read_text())
    plan["argv"] += ["--fp8-format", "e4m3", "--fp8-recipe", "blockwise"]
    (d / "plan.json").write_text(json.dumps(plan))
    r = build_record(d)
    assert r["precision"]["name"] == "fp8-blockwise" and "FP8 peak" in r["mfu_basis"]
    assert r["steady_state"]["mfu"]["median"] == pytest.approx(r["steady_state"]["tflops_per_gpu"]["median"] / 1979.0,
                                                               rel=1e-3)


@pytest.mark.parametrize("name,log,cls", [("cpu_timeout", "timeout_cpu_gloo_stopped_rank_ep2.log", "timeout"),
                                          ("cpu_nan", "nan_cpu_lr1e4_tiny.log", "nan"),
                                          # torchrun's root cause names the rank a SIGKILL ended
                                          ("cpu_killed", "unknown_cpu_sigkill_rank1_ep2.log", "rank_died")])
def test_failed_cpu_runs(tmp_path, name, log, cls):
    r = write_record(_failed_run(name, log, tmp_path))
    assert r["status"] == "failed" and r["returncode"] == 1 and r["failure"]["class"] == cls
    if cls == "rank_died":
        assert r["failure"]["rank"] == 1 and "rank 1 killed by SIGKILL" in r["failure"]["summary"]
    assert r["system"]["device"] == "cpu" and r["mfu_basis"] == "none: CPU run"
    assert r["config"]["model"]["name"] == "tiny_moe"        # config.yaml is read
    md = (tmp_path / name / "record.md").read_text()
    assert f"FAILED [{cls}" in md and "| failure |" in md


def test_match_hardware_by_gpu_field():
    cat = hardware_catalog()
    assert match_hardware("NVIDIA H200", cat) == "h200"
    assert match_hardware("NVIDIA H100 80GB HBM3", cat) == "h100"
    assert match_hardware("NVIDIA B200", cat) == "b200"
    assert match_hardware("NVIDIA A100-SXM4-80GB", cat) is None and match_hardware(None, cat) is None


def test_read_versions_txt_old_format():
    v = read_versions(RUNS / "tiny_moe_1gpu")
    assert (v["torch"], v["cuda"], v["nccl"], v["megatron_core"], v["transformer_engine"]) == \
        ("2.11.0+cu130", "13.0", "2.28.9", "0.19.2", "2.20.2")
    assert v["gpus_visible"] == 2 and v["gpu_name"] == "NVIDIA H200"


def test_cli_rebuilds_and_refuses_non_run_dirs(tmp_path, capsys):
    d = _copy_run("tiny_moe_1gpu", tmp_path)
    assert record.main([str(d)]) == 0
    assert json.loads((d / "record.json").read_text())["status"] == "ok"
    assert "ok:" in capsys.readouterr().out
    assert record.main([str(tmp_path / "nothing")]) == 2


def test_committed_records_match_their_run_dirs():
    """perf_results/runs/*/record.json are generated: rebuilding gives the same record."""
    for d in sorted(RUNS.iterdir()):
        if (d / "record.json").exists():
            built = json.loads(json.dumps(build_record(d), default=str))
            assert json.loads((d / "record.json").read_text()) == built, d.name


def test_runinfo_writes_versions_json_from_distributions(tmp_path, monkeypatch):
    from importlib import metadata

    from recipes import runinfo

    monkeypatch.setenv("MOE_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("NCCL_DEBUG", "WARN")
    path = runinfo.write()
    v = json.loads(path.read_text())
    # the distribution's version, not megatron.core.__version__ (which appends the enclosing repo's commit)
    assert v["megatron_core"] == metadata.version("megatron-core") and "+" not in v["megatron_core"]
    assert v["torch"] and v["world_size"] >= 1 and v["nodes"] >= 1 and v["env"]["NCCL_DEBUG"] == "WARN"
    # kernel libraries by distribution metadata (not imported): None where not installed
    for key, dist in (("triton", "triton"), ("fla_core", "fla-core"), ("tilelang", "tilelang")):
        try:
            assert v[key] == metadata.version(dist)
        except metadata.PackageNotFoundError:
            assert v[key] is None
    r = read_versions(tmp_path)
    assert r["source"] == "versions.json" and r["megatron_core"] == v["megatron_core"]


def test_record_names_the_kernel_libraries_a_run_had():
    """The Qwen3-Next proxy ran because tilelang was there; its record says so, older records stay as they were."""
    md = (RUNS / "proxy_qwen3_next_80b_a3b" / "record.md").read_text()
    assert "DeepEP -, Triton 3.6.0, fla 0.6.0, tilelang 0.1.15 (versions.json)" in md
    old = (RUNS / "proxy_qwen3_next_80b_a3b_without_tilelang" / "record.json").read_text()
    assert json.loads(old)["versions"]["tilelang"] is None

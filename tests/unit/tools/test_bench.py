"""moe-bench, its peer mapping, the FLOP formula shared by both sides, and the torch grouped-GEMM experts."""
from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch

from conftest import make_cfg, plan_for
from launcher.tools import bench
from launcher.errors import ConfigError
from launcher.tools.peer_spec import peer_spec

REPO = Path(__file__).resolve().parents[3]
RUNS = REPO / "perf_results" / "runs"
BENCH = REPO / "perf_results" / "bench"


# ------------------------------------------------------------------------------------------- peer mapping

def test_qwen3_maps_to_the_published_transformers_architecture():
    spec = peer_spec(make_cfg(["model=qwen3_30b_a3b", "train=pretrain"]), 4, 10)
    hf = spec["hf_config"]
    assert spec["family"] == "qwen3_moe"
    # Qwen/Qwen3-30B-A3B config.json: head_dim 128 although hidden/heads = 64, 4 KV heads, theta 1e6
    assert (hf["head_dim"], hf["num_key_value_heads"], hf["num_attention_heads"]) == (128, 4, 32)
    assert hf["rope_parameters"]["rope_theta"] == 1e6
    assert (hf["num_experts"], hf["num_experts_per_tok"], hf["moe_intermediate_size"]) == (128, 8, 768)
    assert hf["norm_topk_prob"] is True and hf["tie_word_embeddings"] is False
    assert hf["router_aux_loss_coef"] == 1e-3 and hf["num_hidden_layers"] == 48
    assert (spec["seq_length"], spec["global_batch_size"], spec["micro_batch_size"]) == (4096, 32, 4)


def test_mixtral_maps_experts_width():
    hf = peer_spec(make_cfg(["model=mixtral_8x7b"]), 2, 5)["hf_config"]
    assert hf["num_local_experts"] == 8 and hf["intermediate_size"] == 14336


@pytest.mark.parametrize("overrides, field", [
    (["model=deepseek_v3"], "model.moe_router_score_function"),  # sigmoid router
    (["model=deepseek_v2_lite"], "model.moe_shared_expert_intermediate_size"),
    (["model=tiny_moe", "model.add_bias_linear=true"], "model.add_bias_linear"),
])
def test_peer_refuses_what_transformers_cannot_express(overrides, field):
    with pytest.raises(ConfigError) as e:
        peer_spec(make_cfg(overrides), 1, 2)
    assert e.value.field == field


def test_peer_micro_batch_must_divide_the_global_batch():
    with pytest.raises(ConfigError, match="divisor"):
        peer_spec(make_cfg(["train.global_batch_size=8"]), 3, 2)
    with pytest.raises(ConfigError, match="experts implementation"):
        peer_spec(make_cfg([]), 2, 2, experts_implementation="magic")


# ------------------------------------------------------------------------------------------- one FLOP formula

def test_plan_records_megatrons_flops_per_sequence():
    plan = plan_for(["model=qwen3_30b_a3b", "model.num_layers=4", "train=pretrain", "cluster.gpus_per_node=1",
                     "model.transformer_impl=local", "train.global_batch_size=16"])
    # 4 Qwen3-30B-A3B layers at seq 4096: 3.63 GFLOP per token, half of it the 151,936-wide logits
    assert plan.megatron["flops_per_sequence"] / 4096 == pytest.approx(3.6286e9, rel=1e-4)


@pytest.mark.parametrize("run", ["qwen3_30b_a3b_4l_1gpu_torch_experts_mbs4",
                                 "qwen3_30b_a3b_8l_ep2_torch_experts_forced_balance"])
def test_flops_per_sequence_is_what_megatron_logged(run):
    """The number the peer's TFLOP/s use reproduces Megatron's own logged TFLOP/s on a real GPU run."""
    rec = json.loads((RUNS / run / "record.json").read_text())
    plan = json.loads((RUNS / run / "plan.json").read_text())
    flops = plan["megatron"]["flops_per_sequence"]
    for it in rec["series"][3:]:
        expect = flops * it["global_batch_size"] / (it["step_ms"] / 1000) / rec["system"]["world_size"] / 1e12
        assert it["tflops_per_gpu"] == pytest.approx(expect, rel=0.01)


# ------------------------------------------------------------------------------------------- summaries

def test_bench_summary_rebuilds_the_committed_result():
    """bench.json in perf_results is what summarize() computes from the run directory's files."""
    out = BENCH / "qwen3_30b_a3b_4l_1gpu_h200_torch_experts"
    kept = json.loads((out / "bench.json").read_text())
    again = bench.summarize(out, kept["warmup_iterations"], tuple(kept["profiled_iterations"]))
    assert again["ratio_tokens_per_s_per_gpu"] == kept["ratio_tokens_per_s_per_gpu"]
    assert again["ratio_tokens_per_s_per_gpu"] >= 1.3  # issue 6's one-GPU target, measured on one H200
    peer = again["peers"][0]
    rows = [json.loads(x) for x in (out / "peer_mbs8" / "peer_series.jsonl").read_text().splitlines()]
    steady = sorted(r["step_ms"] for r in rows if 3 < r["iteration"] < 9)
    assert peer["step_time_ms"] == pytest.approx(steady[len(steady) // 2], rel=0.1)


def test_steady_state_leaves_out_warmup_and_profiled_steps():
    from launcher.records.steady import steady_state

    rows = [{"iteration": i, "step_ms": 100.0 * i} for i in range(1, 11)]
    w = steady_state(rows, 3, None, {}, (9, 9))
    # iterations 4, 5, 6, 7, 8, 10: median step = (600 + 700) / 2
    assert (w["window"]["first"], w["window"]["last"], w["window"]["iterations"]) == (4, 10, 6)
    assert w["window"]["profiled"] == [9] and w["step_time_ms"]["median"] == 650.0
    with pytest.raises(ConfigError):
        bench.parse_window("9-9")


@pytest.mark.slow  # a subprocess run (seconds): CI runs it, the fast set leaves it out
def test_dry_run_writes_both_commands(tmp_path):
    # the login-side Megatron validation is the dry run's own (tests/unit/plan): here, what moe-bench writes
    assert bench.main(["--dry-run", "--peer-mbs", "2,4", "--out", str(tmp_path), "train.train_iters=3",
                       "launch.megatron_validate=false"]) == 0
    assert (tmp_path / "ours" / "command.sh").exists() and (tmp_path / "ours" / "argv.txt").exists()
    for m in (2, 4):
        spec = json.loads((tmp_path / f"peer_mbs{m}" / "spec.json").read_text())
        assert spec["micro_batch_size"] == m and spec["train_iters"] == 3
        assert "recipes.peer_hf" in (tmp_path / f"peer_mbs{m}" / "command.sh").read_text()
    assert not (tmp_path / "peer_mbs2" / "peer.json").exists()  # nothing ran


@pytest.mark.slow  # both sides train on CPU (about a minute)
def test_bench_runs_both_sides_on_cpu(tmp_path):
    """The whole command on CPU with the tiny model: both sides train, one formula, a ratio."""
    transformers = pytest.importorskip("transformers")
    assert transformers.__version__ == "5.17.0"
    # short sequences, no data workers: the property is that both sides train and are measured with one formula,
    # which does not depend on the length (the login-side validation stays: it computes the FLOPs per sequence)
    rc = bench.main(["--peer-mbs", "4", "--out", str(tmp_path), "--warmup", "1", "train.train_iters=4",
                     "train.seq_length=128", "data.num_workers=0"])
    assert rc == 0
    b = json.loads((tmp_path / "bench.json").read_text())
    assert b["ours"]["status"] == "ok" and b["peers"][0]["status"] == "ok"
    assert b["ratio_tokens_per_s_per_gpu"] > 0
    peer = b["peers"][0]
    seqs_per_s = 8 / (peer["step_time_ms"] / 1000)
    assert peer["tflops_per_gpu"] == pytest.approx(b["flops_per_sequence"] * seqs_per_s / 1e12, rel=0.3)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "peer_mbs4" / "peer_series.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(x == x for x in losses)


# ------------------------------------------------------------------------------------------- torch experts

def _cfg(ep=2, etp=1):
    return types.SimpleNamespace(expert_tensor_parallel_size=etp, use_cpu_initialization=True,
                                 params_dtype=torch.bfloat16, perform_initialization=True,
                                 expert_model_parallel_size=ep, tensor_model_parallel_size=1)


def _linear(ep=2, etp=1):
    from recipes.experts import TorchGroupedLinear

    torch.manual_seed(0)
    return TorchGroupedLinear(4, 32, 48, config=_cfg(ep, etp), init_method=lambda w: torch.nn.init.normal_(w, std=.02),
                              bias=False, skip_bias_add=False, is_expert=True)


@pytest.mark.parametrize("counts", [[3, 0, 5, 8], [0, 0, 0, 4], [0, 0, 0, 0]])
def test_torch_grouped_linear_matches_one_gemm_per_expert(counts):
    lin = _linear()
    x = torch.randn(sum(counts), 32, dtype=torch.bfloat16, requires_grad=True)
    y, bias = lin(x, counts)
    assert bias is None and y.shape == (sum(counts), 48)
    y.float().square().sum().backward()
    got_w, got_x = lin.weight.grad.clone(), x.grad.clone()
    lin.weight.grad, x.grad = None, None
    ref = torch.cat([xs @ lin.weight[i].t() for i, xs in enumerate(torch.split(x, counts))])
    ref.float().square().sum().backward()
    assert torch.equal(y, ref)
    assert torch.allclose(got_w.float(), lin.weight.grad.float(), atol=1e-2)
    assert torch.allclose(got_x.float(), x.grad.float(), atol=1e-2)


def test_torch_grouped_linear_marks_expert_weights_for_megatron():
    assert _linear(ep=2).weight.allreduce is False  # reduced over the expert-data-parallel group
    assert _linear(ep=1).weight.allreduce is True
    with pytest.raises(ValueError, match="etp=1"):
        _linear(etp=2)


def test_apply_swaps_te_grouped_linears(monkeypatch):
    provider = pytest.importorskip("megatron.core.extensions.transformer_engine_spec_provider")
    from recipes import experts

    from megatron.core.extensions.transformer_engine import HAVE_TE
    from megatron.core.models.backends import LocalSpecProvider

    monkeypatch.setattr(provider, "TEColumnParallelGroupedLinear", "te-col")
    monkeypatch.setattr(provider, "TERowParallelGroupedLinear", "te-row")
    monkeypatch.setattr(LocalSpecProvider, "grouped_mlp_modules", LocalSpecProvider.grouped_mlp_modules)
    assert experts.apply("te") == "te" and provider.TEColumnParallelGroupedLinear == "te-col"
    assert experts.apply("torch") == "torch"
    assert provider.TEColumnParallelGroupedLinear is experts.TorchColumnGroupedLinear
    assert provider.TERowParallelGroupedLinear is experts.TorchRowGroupedLinear
    if not HAVE_TE:  # CPU: the local spec's experts are TEGroupedMLP around the torch linears
        spec = LocalSpecProvider().grouped_mlp_modules(True)
        assert spec.func.__name__ == "TEGroupedMLP"
        assert spec.keywords["submodules"].linear_fc2 is experts.TorchRowGroupedLinear
    monkeypatch.setenv(experts.ENV, "cutlass")
    with pytest.raises(ValueError, match="MOE_GROUPED_GEMM_IMPL"):
        experts.apply()


@pytest.mark.parametrize("extra, field", [
    (["precision=fp8_blockwise", "hardware=h100"], "precision.fp8_recipe"),
    (["parallel=ep2", "parallel.etp=2", "cluster.gpus_per_node=4", "parallel.tp=2"], "parallel.etp"),
    (["model.transformer_impl=local"], "model.transformer_impl"),
])
def test_torch_experts_refuse_what_they_do_not_implement(extra, field):
    with pytest.raises(ConfigError) as e:
        plan_for(["model=qwen3_30b_a3b", "model.num_layers=2", "model.moe_grouped_gemm_impl=torch",
                  "cluster.gpus_per_node=2", "cluster.device=cuda", *extra], validate_megatron=False)
    assert e.value.field == field


def test_torch_experts_checkpoint_and_run_on_cpu():
    # their checkpoints have TE's layout (recipes/expert_checkpoint.py); on CPU the local spec hosts them
    plan = plan_for(["model=qwen3_30b_a3b", "model.num_layers=2", "model.moe_grouped_gemm_impl=torch",
                     "cluster.gpus_per_node=1", "cluster.device=cuda", "model.transformer_impl=transformer_engine",
                     "train.save=/tmp/ckpt", "train.save_interval=5", "train.load=/tmp/ckpt"], validate_megatron=False)
    assert "--save" in plan.argv and "--load" in plan.argv
    plan = plan_for(["model.moe_grouped_gemm_impl=torch", "cluster.device=cpu"], validate_megatron=False)
    assert plan.env["MOE_GROUPED_GEMM_IMPL"] == "torch" and plan.resolved.transformer_impl == "local"


def test_torch_experts_reach_the_ranks_as_environment():
    plan = plan_for(["model=qwen3_30b_a3b", "model.num_layers=2", "model.moe_grouped_gemm_impl=torch",
                     "cluster.gpus_per_node=1", "cluster.device=cuda", "model.transformer_impl=transformer_engine",
                     "train.kernel_profile=2:3"], validate_megatron=False)
    assert plan.env["MOE_GROUPED_GEMM_IMPL"] == "torch" and plan.env["MOE_PROFILE_STEPS"] == "2:3"
    with pytest.raises(ConfigError, match="inside the run"):
        plan_for(["train.kernel_profile=5:50"], validate_megatron=False)


# ------------------------------------------------------------------------------------------- fla on Hopper

@pytest.mark.parametrize("capability, triton, tilelang, refused", [
    ((9, 0), "3.6.0", False, True),   # the GPU host: fla 0.6.0 stopped the Qwen3-Next proxy in its first backward
    ((9, 0), "3.7.1", False, False),
    ((9, 0), "3.6.0", True, False),   # tilelang is fla's other kernel backend
    ((10, 0), "3.6.0", False, False),  # the wrong-results bug is Hopper's
    ((9, 0), "3.3.1+git", False, False),
])
def test_gated_delta_net_refuses_the_triton_fla_refuses(capability, triton, tilelang, refused):
    from recipes.backends import BackendError, check_fla_triton

    if refused:
        with pytest.raises(BackendError, match="Triton >= 3.7.1 or tilelang"):
            check_fla_triton(capability, triton, tilelang)
    else:
        check_fla_triton(capability, triton, tilelang)


# ------------------------------------------------------------------------------------------- failures (issue 17)

def test_peer_micro_batches_that_are_not_numbers_are_one_line(tmp_path, capsys):
    assert bench.main(["--peer-mbs", "2,four", "--out", str(tmp_path), "train.train_iters=3"]) == 2
    assert capsys.readouterr().err == ("moe-bench: error: --peer-mbs='2,four': is not a comma-separated list of micro "
                                       "batch sizes. Fix: e.g. --peer-mbs 1,2,4\n")


def test_an_out_directory_that_cannot_be_made_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert bench.main(["--peer-mbs", "2", "--out", str(tmp_path / "file" / "b"), "train.train_iters=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moe-bench: error: --out=") and err.count("\n") == 1 and "Traceback" not in err


def test_our_side_refused_by_a_rule_is_one_line_and_non_zero(tmp_path, capsys):
    """A rule refuses our side before it plans (no ours/plan.json): the refusal, one line, non-zero, no peer run."""
    rc = bench.main(["--peer-mbs", "2", "--out", str(tmp_path), "train.train_iters=3", "dispatcher=deepep"])
    err = capsys.readouterr().err
    assert rc != 0 and not (tmp_path / "ours" / "plan.json").exists()
    lines = [x for x in err.splitlines() if x.startswith("moe-bench: ours failed:")]
    assert len(lines) == 1 and "moe-launch: error: dispatcher.type='flex'" in lines[0], err
    assert "Traceback" not in err and not (tmp_path / "peer_mbs2").exists()
    # rebuilding the summary of that directory says the same, in one line
    assert bench.main(["--summarize", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "our side has no plan.json: moe-launch: error:" in err and "Traceback" not in err


def _copy_bench(tmp_path: Path) -> Path:
    import shutil

    out = tmp_path / "bench"
    shutil.copytree(BENCH / "peer_qwen3_30b_a3b_8l_1gpu_h200", out)
    return out


def test_a_failed_peer_is_its_one_line_reason_and_non_zero(tmp_path, capsys):
    """perf_results' 8-layer peer sweep: MBS 8 ran out of memory (peer.json's error)."""
    out = _copy_bench(tmp_path)
    assert bench._write_summary(out, 3, None) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("moe-bench: peer MBS 8 failed: OutOfMemoryError: CUDA out of memory")


def test_a_peer_that_died_without_its_record_is_read_from_its_log(tmp_path, capsys):
    out = _copy_bench(tmp_path)
    (out / "peer_mbs8" / "peer.json").unlink()
    (out / "peer_mbs8" / "train.log").write_text(
        "step 1\nTraceback (most recent call last):\n  File \"recipes/peer_hf.py\", line 3, in <module>\n"
        "    import transformers\n[rank0]: ModuleNotFoundError: No module named 'transformers'\n")
    assert bench._write_summary(out, 3, None) == 1
    err = capsys.readouterr().err
    assert err == "moe-bench: peer MBS 8 not run: ModuleNotFoundError: No module named 'transformers'\n"


def test_one_line_reason_prefers_the_launchers_refusal(tmp_path):
    log = tmp_path / "ours.out"
    log.write_text("moe-launch: error: memory='9 GiB': predicted peak exceeds 8 GiB. Fix: recompute=full\n")
    assert bench.one_line_reason(log).startswith("moe-launch: error: memory=")
    assert bench.one_line_reason(tmp_path / "missing.log") == "no output (missing.log is empty or missing)"

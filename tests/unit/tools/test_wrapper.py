"""sbatch_benchmarking.sh (Megatron-MoE-ModelZoo's interface): the translation of the published command
and of every PR and DISPATCHER value into moe-launch overrides, what moe-launch then builds from them,
refused values, and the script itself end to end (DRY_RUN=1 prints exactly the sbatch script)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import PROBE, make_cfg
from launcher.errors import ConfigError
from launcher.tools.modelzoo import DEFAULTS, MODELS, hydra_quote, translate
from launcher.run.registry import launch_plan

REPO = Path(__file__).resolve().parents[3]
SEED_ENV = {"NNODES": "32", "MODEL": "Qwen3-235B-A22B", "PP": "8", "VPP": "4", "TP": "4", "EP": "8", "CP": "2",
            "GBS": "256", "SEQ_LEN": "32768", "PR": "bf16", "A2A_OVERLAP": "0", "OPTIMIZER_OFFLOAD": "0",
            "OUTPUT_PATH": "/runs"}
SEED_ARGS = ["--recompute-granularity", "selective", "--recompute-modules", "layernorm", "moe"]


def _translate(env, args=(), **kw):
    return translate({"OUTPUT_PATH": "/runs", **env}, list(args), now="T", **kw)


def test_the_published_long_context_command():
    assert _translate(SEED_ENV, SEED_ARGS) == [
        "model=qwen3_235b_a22b", "cluster=slurm", "train=pretrain", "launch.run_dir=/runs/qwen3_235b_a22b-T",
        "cluster.nodes=32", "parallel.tp=4", "parallel.pp=8", "parallel.ep=8", "parallel.cp=2",
        "train.micro_batch_size=1", "train.global_batch_size=256", "train.seq_length=32768", "parallel.vpp=4",
        "parallel.pipeline_layout=auto", "cluster.time='00:20:00'", "precision=bf16", "dispatcher=deepep",
        "recompute.granularity=selective", "recompute.modules=[layernorm,moe]"]


def test_the_published_command_builds_the_published_layout():
    cfg = make_cfg(_translate(SEED_ENV, SEED_ARGS))
    plan = launch_plan(cfg, PROBE)  # our rules and Megatron's validator at 256 GPUs
    assert plan.resolved.world_size == 256 and plan.megatron["data_parallel_size"] == 4
    argv = plan.argv
    for flag, value in (("--tensor-model-parallel-size", "4"), ("--pipeline-model-parallel-size", "8"),
                        ("--expert-model-parallel-size", "8"), ("--context-parallel-size", "2"),
                        ("--seq-length", "32768"), ("--global-batch-size", "256"),
                        ("--recompute-granularity", "selective"), ("--moe-token-dispatcher-type", "flex"),
                        ("--moe-flex-dispatcher-backend", "deepep")):
        assert argv[argv.index(flag) + 1] == value, flag
    assert argv[argv.index("--recompute-modules") + 1:argv.index("--recompute-modules") + 3] == ["layernorm", "moe"]
    assert "--overlap-moe-expert-parallel-comm" not in argv and "--optimizer-cpu-offload" not in argv
    assert plan.env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"  # TP/CP > 1 on Hopper, no A2A overlap


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_modelzoo_model_with_its_default_layout(name):
    """MODEL alone: ModelZoo's benchmark layout for it, accepted by our rules and Megatron's validator."""
    cfg = make_cfg(_translate({"MODEL": name}))
    # without ModelZoo's recompute settings DeepSeek-V2/V3's layouts are predicted not to fit: the layout is tested
    cfg.launch.skip_memory_check = True
    plan = launch_plan(cfg, PROBE)
    nodes = DEFAULTS[MODELS[name]]["NNODES"]
    assert cfg.model.name == MODELS[name] and plan.resolved.world_size == nodes * 8


@pytest.mark.parametrize("pr, precision, recipe, hardware", [("bf16", "bf16", None, "h100"),
                                                             ("fp8", "fp8_blockwise", "blockwise", "h100"),
                                                             ("mxfp8", "mxfp8", "mxfp8", "b200")])
def test_every_precision(pr, precision, recipe, hardware):
    ov = _translate({"MODEL": "Qwen3-30B-A3B", "PR": pr, "HARDWARE": hardware})
    assert f"precision={precision}" in ov and f"hardware={hardware}" in ov
    cfg = make_cfg(ov)
    plan = launch_plan(cfg, PROBE)  # Megatron's validator included
    assert cfg.precision.fp8_recipe == recipe
    if recipe:
        assert plan.argv[plan.argv.index("--fp8-recipe") + 1] == recipe


def test_mxfp8_on_hopper_is_refused_with_the_fix():
    cfg = make_cfg([*_translate({"MODEL": "Qwen3-30B-A3B", "PR": "mxfp8"}), "launch.megatron_validate=false"])
    with pytest.raises(ConfigError, match=r"needs Blackwell.*hardware=h100 is 9\.0") as e:
        launch_plan(cfg, PROBE)
    assert "hardware=b200" in e.value.fix


@pytest.mark.parametrize("dispatcher, megatron", [("alltoall", ["alltoall"]), ("allgather", ["allgather"]),
                                                  ("deepep", ["flex", "deepep"]), ("hybridep", ["flex", "hybridep"]),
                                                  ("ncclep", ["flex", "ncclep"])])
def test_every_dispatcher(dispatcher, megatron):
    ov = _translate({"MODEL": "Qwen3-30B-A3B", "DISPATCHER": dispatcher})
    assert f"dispatcher={dispatcher}" in ov
    if dispatcher == "ncclep":  # NCCL EP sizes its receive budget from it: refused on the login node without it
        with pytest.raises(ConfigError, match="moe_expert_rank_capacity_factor"):
            launch_plan(make_cfg(ov), PROBE)
        ov = [*ov, "+megatron.extra.moe_expert_rank_capacity_factor=2.0"]
    plan = launch_plan(make_cfg(ov), PROBE)  # Megatron's validator included
    argv = plan.argv
    assert argv[argv.index("--moe-token-dispatcher-type") + 1] == megatron[0]
    if len(megatron) > 1:
        assert argv[argv.index("--moe-flex-dispatcher-backend") + 1] == megatron[1]


def test_switches_overlap_offload_profile():
    ov = _translate({"MODEL": "Qwen3-30B-A3B", "A2A_OVERLAP": "1", "OPTIMIZER_OFFLOAD": "1", "PROFILE": "1"})
    plan = launch_plan(make_cfg([*ov, "launch.megatron_validate=false"]), PROBE)
    for flag in ("--overlap-moe-expert-parallel-comm", "--delay-wgrad-compute", "--optimizer-cpu-offload",
                 "--overlap-cpu-optimizer-d2h-h2d", "--use-precision-aware-optimizer", "--profile"):
        assert flag in plan.argv, flag
    assert plan.argv[plan.argv.index("--profile-ranks") + 1] == "0"
    assert plan.env["CUDA_DEVICE_MAX_CONNECTIONS"] == "32" and plan.env["NVTE_FWD_LAYERNORM_SM_MARGIN"] == "24"
    nsys = plan.launcher[:plan.launcher.index("-o") + 2]
    assert nsys[:2] == ["nsys", "profile"] and "--capture-range=cudaProfilerApi" in nsys
    assert nsys[-1] == "/runs/qwen3_30b_a3b-T/nsys/qwen3_30b_a3b-rank%q{SLURM_PROCID}"


OVERLAP = ["cluster=slurm", "model=qwen3_30b_a3b", "parallel=ep8", "train.global_batch_size=64",
           "dispatcher.overlap_moe_expert_parallel_comm=true", "launch.megatron_validate=false"]


@pytest.mark.parametrize("extra, field, message", [
    (["parallel.ep=1"], "dispatcher.overlap_moe_expert_parallel_comm", r"needs parallel.ep > 1"),
    (["dispatcher=allgather"], "dispatcher.overlap_moe_expert_parallel_comm", r"alltoall or flex"),
    (["parallel.pp=2", "parallel.ep=4"], "dispatcher.overlap_moe_expert_parallel_comm", r"virtual pipeline"),
    (["recompute=full"], "dispatcher.overlap_moe_expert_parallel_comm", r"cannot recompute"),
    (["recompute=layernorm_moe"], "dispatcher.overlap_moe_expert_parallel_comm", r"cannot recompute"),
    (["precision=fp32"], "dispatcher.overlap_moe_expert_parallel_comm", r"bf16 or fp16"),
    (["cluster.device=cpu", "cluster.nproc_cpu=8"], "dispatcher.overlap_moe_expert_parallel_comm", r"CUDA streams"),
    (["dispatcher.overlap_moe_expert_parallel_comm=false", "dispatcher.delay_wgrad_compute=true"],
     "dispatcher.delay_wgrad_compute", r"needs dispatcher.overlap_moe_expert_parallel_comm=true"),
    (["dispatcher.overlap_moe_expert_parallel_comm=false", "train.optimizer_cpu_offload=true"],
     "train.optimizer_cpu_offload", r"use_precision_aware_optimizer"),
    (["dispatcher.overlap_moe_expert_parallel_comm=false", "train.overlap_cpu_optimizer_d2h_h2d=true"],
     "train.overlap_cpu_optimizer_d2h_h2d", r"optimizer_cpu_offload=true"),
])
def test_overlap_and_offload_rules(extra, field, message):
    with pytest.raises(ConfigError, match=message) as e:
        launch_plan(make_cfg([*OVERLAP, *extra]), PROBE)
    assert e.value.field == field


def test_cluster_variables():
    env = {"MODEL": "Mixtral-8x7B", "ACCOUNT": "moe", "PARTITION": "batch", "RUN_TIME": "01:30:00",
           "CONTAINER_IMAGE": "nvcr.io#nvidia/pytorch:25.10-py3", "CONTAINER_MOUNTS": "/lustre:/lustre,/data:/data:ro",
           "RUN_NAME": "mixtral-a2a", "DRY_RUN": "1", "GB200_CLUSTER": "1", "SEGMENT": "4"}
    cfg = make_cfg(_translate(env))
    c = cfg.cluster
    assert (c.account, c.partition, c.time, c.container_image) == ("moe", "batch", "01:30:00",
                                                                    "nvcr.io#nvidia/pytorch:25.10-py3")
    assert c.container_mounts == ["/lustre:/lustre", "/data:/data:ro"] and c.segment == "4"
    assert cfg.launch.dry_run and cfg.launch.name == "mixtral-a2a" and cfg.hardware.name == "gb200"
    assert cfg.launch.run_dir == "/runs/mixtral-a2a-T"


def test_trailing_flags_owned_by_a_field_become_that_field():
    ov = _translate({"MODEL": "Qwen3-30B-A3B"}, ["--moe-router-force-load-balancing", "--seq-length=8192",
                                                  "--moe-permute-fusion", "--recompute-granularity", "full",
                                                  "--recompute-method", "uniform", "--recompute-num-layers", "1",
                                                  "--moe-router-padding-for-quantization", "--bf16"])
    cfg = make_cfg(ov)
    assert cfg.train.routing == "forced_balance" and cfg.train.seq_length == 8192  # replaces the model default
    assert cfg.dispatcher.permute_fusion and (cfg.recompute.granularity, cfg.recompute.method) == ("full", "uniform")
    assert cfg.megatron.raw == ["--moe-router-padding-for-quantization"]  # not owned: Megatron's parser checks it


@pytest.mark.parametrize("env, args, field, message", [
    ({"MODEL": "Qwen3-235B"}, [], "MODEL", r"did you mean Qwen3-235B-A22B\?"),
    ({"MODEL": "GPT-OSS-120B"}, [], "MODEL", r"Qwen3-30B-A3B, Qwen3-235B-A22B, Mixtral-8x7B, .*DeepSeek-V3"),
    ({"MODEL": "Mixtral-8x7B", "PR": "fp16"}, [], "PR", r"must be one of bf16, fp8, mxfp8"),
    ({"MODEL": "Mixtral-8x7B", "DISPATCHER": "deep_ep"}, [], "DISPATCHER", r"did you mean deepep\?"),
    ({"MODEL": "Mixtral-8x7B", "A2A_OVERLAP": "yes"}, [], "A2A_OVERLAP", r"must be 0 or 1"),
    ({"MODEL": "Mixtral-8x7B", "TP": "0"}, [], "TP", r"positive integer"),
    ({"MODEL": "Mixtral-8x7B", "NNODES": "four"}, [], "NNODES", r"positive integer"),
    ({"MODEL": "Mixtral-8x7B", "PROFILE": "2"}, [], "PROFILE", r"must be one of 0, 1, nsys, torch"),
    ({"MODEL": "Mixtral-8x7B", "HARDWARE": "h300"}, [], "HARDWARE", r"did you mean h200\?"),
    ({"MODEL": "Mixtral-8x7B", "TP": "2"}, ["--tensor-model-parallel-size", "4"],
     "trailing --tensor-model-parallel-size",
     r"already set"),
    ({"MODEL": "Mixtral-8x7B"}, ["--num-layers-per-virtual-pipeline-stage", "2"],
     "trailing --num-layers-per-virtual-pipeline-stage", r"no single field"),
    ({"MODEL": "Mixtral-8x7B"}, ["selective"], "sbatch_benchmarking.sh args", r"must start with a --flag"),
    ({"MODEL": "Mixtral-8x7B"}, ["--swiglu", "yes"], "trailing --swiglu", r"is a switch"),
])
def test_values_we_cannot_translate_are_errors(env, args, field, message):
    with pytest.raises(ConfigError, match=message) as e:
        _translate(env, args)
    assert e.value.field == field


def test_unknown_trailing_flag_is_refused_by_megatrons_parser():
    cfg = make_cfg(_translate({"MODEL": "Qwen3-30B-A3B"}, ["--moe-router-padding-for-quantisation"]))
    with pytest.raises(ConfigError, match=r"did you mean --moe-router-padding-for-quantization\?"):
        launch_plan(cfg, PROBE)


@pytest.mark.parametrize("value", ["it's", "a\\", "${oops}", "a\\${b}", "x,y", "[1]", "null", "007", "1e5", "a b"])
def test_hydra_quoting_keeps_any_string(value):
    cfg = make_cfg(["cluster=slurm", f"launch.name={hydra_quote(value)}", f"cluster.account={hydra_quote(value)}"])
    assert cfg.launch.name == value and cfg.cluster.account == value


def _script(env: dict, *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("TP", "PP", "EP", "CP", "VPP", "MODEL", "PR")}
    return subprocess.run(["bash", str(REPO / "sbatch_benchmarking.sh"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**clean, "CUDA_VISIBLE_DEVICES": "", **env})


@pytest.mark.slow  # a subprocess run (seconds): CI runs it, the fast set leaves it out
def test_script_dry_run_prints_exactly_the_sbatch_file(tmp_path):
    proc = _script({**SEED_ENV, "OUTPUT_PATH": str(tmp_path), "DRY_RUN": "1"}, *SEED_ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = tmp_path.iterdir()
    sbatch = (run_dir / "sbatch.sh").read_text()
    assert sbatch in proc.stdout and "#SBATCH --nodes=32\n#SBATCH --ntasks-per-node=8\n" in sbatch
    assert "sbatch_benchmarking: moe-launch model=qwen3_235b_a22b cluster=slurm" in proc.stderr
    assert not (run_dir / "job.json").exists()  # nothing submitted


def test_script_reports_a_bad_value_in_one_line():
    proc = _script({"MODEL": "Qwen3-235B-A22B", "PR": "fp4", "DRY_RUN": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("sbatch_benchmarking: error: PR='fp4': must be one of bf16, fp8, "
                                                    "mxfp8. Fix: did you mean fp8?")

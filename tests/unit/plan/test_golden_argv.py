"""Golden Megatron argv for a matrix of layouts, each also accepted by Megatron's own validator.

tests/golden/<case>.txt holds plan.argv one token per line. After an intended change to the mapping,
regenerate with:  UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/unit/plan/test_golden_argv.py
and review the diff.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from conftest import HAVE_TE, plan_for
from launcher.plan.megatron.validator import megatron_validate

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
MULTI = ["launch.dry_run=true"]  # the local executor renders multi-node layouts only as a dry run


@dataclass(frozen=True)
class Case:
    name: str
    overrides: tuple[str, ...]
    world: int
    dp: int
    """Data-parallel size computed by hand: world / (tp * pp * cp)."""
    vpp: Optional[int] = None
    microbatches: int = 0
    """global_batch_size / (micro_batch_size * dp)."""
    has: tuple[tuple[str, ...], ...] = ()
    """Token runs that must appear contiguously in the argv."""
    lacks: tuple[str, ...] = ()
    env: dict = field(default_factory=dict)


CASES = [
    Case("tiny_moe_cpu", (), world=1, dp=1, microbatches=8 // (2 * 1),
         has=(("--transformer-impl", "local"), ("--use-cpu-initialization", "--distributed-backend", "gloo"),
              ("--no-rope-fusion", "--no-persist-layer-norm", "--no-masked-softmax-fusion"),
              ("--num-experts", "8"), ("--mock-data",), ("--vocab-size", "512"), ("--bf16",)),
         lacks=("--moe-grouped-gemm", "--sequence-parallel", "--no-create-attention-mask-in-dataloader"),
         env={"OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}),
    Case("tiny_moe_1gpu", ("cluster.gpus_per_node=1",), world=1, dp=1, microbatches=4,
         has=(("--transformer-impl", "transformer_engine", "--moe-grouped-gemm"),
              ("--no-create-attention-mask-in-dataloader",), ("--no-gradient-accumulation-fusion",)),
         lacks=("--distributed-backend", "--use-cpu-initialization", "--no-rope-fusion")),
    # the whole model on one node is predicted not to fit (expert DP 1): the argv is what this case checks
    Case("qwen3_30b_a3b_ep8_8gpu", ("model=qwen3_30b_a3b", "train=pretrain", "parallel=ep8",
                                    "cluster.gpus_per_node=8", "launch.skip_memory_check=true"),
         world=8, dp=8, microbatches=32 // (1 * 8),
         has=(("--num-experts", "128"), ("--moe-router-topk", "8"), ("--expert-model-parallel-size", "8"),
              ("--seq-length", "4096"), ("--group-query-attention", "--num-query-groups", "4"),
              ("--qk-layernorm",)),
         lacks=("--sequence-parallel", "--pipeline-model-parallel-layout"),
         env={"PYTHONUNBUFFERED": "1"}),
    Case("qwen3_30b_a3b_ep2_8layers_2gpu", ("model=qwen3_30b_a3b", "parallel=ep2", "model.num_layers=8",
                                            "cluster.gpus_per_node=2"), world=2, dp=2, microbatches=8 // (2 * 2),
         has=(("--num-layers", "8"), ("--expert-model-parallel-size", "2"), ("--seq-length", "256"))),
    Case("qwen3_235b_a22b_tp2_pp8_vpp4_ep32_deepep_256gpu",
         ("model=qwen3_235b_a22b", "parallel=tp2_pp8_vpp4_ep32", "dispatcher=deepep", "recompute=norm_act",
          "train=pretrain", "train.global_batch_size=2048", "cluster.nodes=32", "cluster.gpus_per_node=8", *MULTI),
         world=256, dp=256 // (2 * 8), vpp=4, microbatches=2048 // 16,
         has=(("--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "8",
               "--expert-model-parallel-size", "32", "--expert-tensor-parallel-size", "1"),
              ("--moe-token-dispatcher-type", "flex", "--moe-flex-dispatcher-backend", "deepep",
               "--moe-permute-fusion"),
              ("--recompute-modules", "layernorm", "moe_act"), ("--recompute-granularity", "selective"),
              ("--sequence-parallel", "--pipeline-model-parallel-layout", "Ett|(ttt|)*30ttL"),
              ("--global-batch-size", "2048")),
         lacks=("--num-virtual-stages-per-pipeline-rank",),
         env={"CUDA_DEVICE_MAX_CONNECTIONS": "1", "PYTHONUNBUFFERED": "1"}),
    Case("qwen3_235b_a22b_tp4_pp8_vpp4_ep8_256gpu",
         ("model=qwen3_235b_a22b", "parallel=tp4_pp8_vpp4_ep8", "train=pretrain", "cluster.nodes=32",
          "cluster.gpus_per_node=8", *MULTI),
         world=256, dp=256 // (4 * 8), vpp=4, microbatches=32 // 8,
         has=(("--tensor-model-parallel-size", "4"), ("--expert-model-parallel-size", "8"),
              ("--moe-token-dispatcher-type", "alltoall"),
              ("--pipeline-model-parallel-layout", "Ett|(ttt|)*30ttL")),
         lacks=("--recompute-granularity",)),
    Case("qwen3_30b_a3b_tp2_pp4_vpp2_ep8_64gpu",
         ("model=qwen3_30b_a3b", "parallel=tp2_pp4_ep8", "parallel.vpp=2", "train=pretrain", "cluster.nodes=8",
          "cluster.gpus_per_node=8", *MULTI),
         world=64, dp=64 // (2 * 4), vpp=2, microbatches=32 // 8,
         has=(("--num-virtual-stages-per-pipeline-rank", "2"),),  # 48 layers split evenly over 8 stages
         lacks=("--pipeline-model-parallel-layout",)),
    Case("mixtral_8x7b_tp2_pp4_ep8_64gpu",
         ("model=mixtral_8x7b", "parallel=tp2_pp4_ep8", "train=pretrain", "cluster.nodes=8",
          "cluster.gpus_per_node=8", *MULTI),
         world=64, dp=64 // (2 * 4), microbatches=32 // 8,
         has=(("--num-experts", "8"), ("--moe-router-topk", "2"), ("--num-query-groups", "8"),
              ("--rotary-base", "1000000"), ("--max-position-embeddings", "32768"), ("--vocab-size", "32000"),
              ("--pipeline-model-parallel-size", "4"), ("--sequence-parallel",)),
         lacks=("--qk-layernorm", "--pipeline-model-parallel-layout", "--num-virtual-stages-per-pipeline-rank")),
    Case("tiny_moe_recompute_full_cpu", ("recompute=full",), world=1, dp=1, microbatches=4,
         has=(("--recompute-method", "uniform", "--recompute-num-layers", "1"),
              ("--recompute-granularity", "full")),
         lacks=("--recompute-modules",)),
    Case("tiny_moe_allgather_ep2_cpu2", ("dispatcher=allgather", "parallel=ep2", "cluster.nproc_cpu=2"),
         world=2, dp=2, microbatches=8 // (2 * 2),
         has=(("--moe-token-dispatcher-type", "allgather"), ("--expert-model-parallel-size", "2")),
         env={"OMP_NUM_THREADS": "1"}),
    Case("tiny_moe_pp2_ep2_cpu4", ("parallel=pp2_ep2", "cluster.nproc_cpu=4"), world=4, dp=4 // 2,
         microbatches=8 // (2 * 2),
         has=(("--pipeline-model-parallel-size", "2", "--expert-model-parallel-size", "2"),),
         lacks=("--pipeline-model-parallel-layout",)),
]
IDS = [c.name for c in CASES]


@pytest.fixture(scope="module")
def plans():
    """One plan per case, built without Megatron's validator (run separately below)."""
    return {c.name: plan_for(list(c.overrides), validate_megatron=False) for c in CASES}


def _contains(argv: list[str], run: tuple[str, ...]) -> bool:
    n = len(run)
    return any(tuple(argv[i:i + n]) == run for i in range(len(argv) - n + 1))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_argv_matches_golden(case, plans):
    argv = plans[case.name].argv
    path = GOLDEN / f"{case.name}.txt"
    text = "\n".join(argv) + "\n"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run UPDATE_GOLDEN=1 pytest tests/unit/plan/test_golden_argv.py"
    assert path.read_text().splitlines() == argv


def test_no_stale_golden_files():
    assert sorted(p.stem for p in GOLDEN.glob("*.txt")) == sorted(IDS)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_argv_semantics(case, plans):
    """What the golden files must say, independent of the snapshot."""
    plan = plans[case.name]
    assert plan.resolved.world_size == case.world
    for run in case.has:
        assert _contains(plan.argv, run), run
    for flag in case.lacks:
        assert flag not in plan.argv, flag
    for k, v in case.env.items():
        assert plan.env.get(k) == v, k
    flags = [t for t in plan.argv if t.startswith("--")]
    assert len(flags) == len(set(flags)), "a flag is emitted twice"
    degree = {f: int(plan.argv[plan.argv.index(f) + 1]) for f in (
        "--tensor-model-parallel-size", "--pipeline-model-parallel-size", "--context-parallel-size")}
    assert case.world // (degree["--tensor-model-parallel-size"] * degree["--pipeline-model-parallel-size"]
                          * degree["--context-parallel-size"]) == case.dp


def _check_facts(facts: dict, case: Case) -> None:
    assert facts["data_parallel_size"] == case.dp
    assert facts["virtual_pipeline_model_parallel_size"] == case.vpp
    assert facts["num_microbatches"] == case.microbatches


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_build_plan_runs_megatron_validation(case):
    """build_plan with launch.megatron_validate=true: Megatron's parser, validate_args, TransformerConfig
    and initialize_model_parallel at the case's world size accept the exact argv."""
    plan = plan_for(list(case.overrides), validate_megatron=True)
    _check_facts(plan.megatron, case)


def _without_te_kernels(argv: list[str]) -> list[str]:
    """The argv with the switches whose availability Megatron checks on *this* machine's TE turned off."""
    if HAVE_TE or "transformer_engine" not in argv:
        return list(argv)
    return [t for t in argv if t not in ("--moe-permute-fusion", "--moe-router-fusion")] + ["--no-rope-fusion"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_megatron_accepts_layout(case, plans):
    """Megatron's checks on the case's layout at its world size (grid, batch, VPP/layout, MoE rules),
    runnable on a machine without Transformer Engine."""
    plan = plans[case.name]
    facts = megatron_validate(_without_te_kernels(plan.argv), plan.resolved.world_size, plan.env)
    _check_facts(facts, case)

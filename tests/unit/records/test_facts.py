"""plan.json's facts (written at launch) say what the argv readers of older records derive from the argv:
a record reads the same values either way."""
from __future__ import annotations

import dataclasses
import json

import pytest

from launcher.plan.plan import plan_record
from launcher.records.legacy_argv import legacy_facts
from launcher.records.record import build_record

CASES = [
    ["launch.megatron_validate=false"],
    ["model=qwen3_235b_a22b", "parallel=tp2_pp8_vpp4_ep32", "dispatcher=deepep", "recompute=norm_act",
     "train=pretrain", "cluster.nodes=32", "cluster.gpus_per_node=8", "launch.dry_run=true"],
    ["preset=deepseek_v3_1024xh100_tp2pp8vpp4ep64_deepep_fp8_a2a_overlap", "launch.dry_run=true"],
    ["preset=qwen3_235b_a22b_256xh100_seq32k_tp4cp2pp8vpp4ep8_deepep_bf16_forced_balance", "launch.dry_run=true"],
    ["model=qwen3_30b_a3b", "parallel=tp2_pp4_ep8", "recompute=full", "precision=fp8_tensorwise", "train=pretrain",
     "cluster.gpus_per_node=8", "cluster.nodes=8", "launch.dry_run=true", "parallel.vpp=2",
     "launch.skip_memory_check=true"],
    ["model=qwen3_30b_a3b", "parallel=ep2", "recompute=selective", "dispatcher=allgather", "cluster.gpus_per_node=2",
     "train.routing=forced_balance", "launch.skip_memory_check=true"],
]


@pytest.mark.parametrize("overrides", CASES, ids=lambda o: o[0])
def test_launch_facts_equal_what_the_argv_says(overrides):
    from conftest import make_cfg, PROBE
    from launcher.run.registry import launch_plan

    plan = launch_plan(make_cfg(overrides), PROBE)
    legacy = legacy_facts(plan.argv, json.loads(json.dumps(plan_record(plan))))
    ours = dict(plan.facts)
    for key in ("hardware",):  # not in the argv at all
        ours.pop(key), legacy.pop(key)
    # the tuned knobs (launcher/plan/tuned.py) are partly environment (expert GEMMs, allocator): plan.json only
    assert ours.pop("tuned") == dataclasses.asdict(plan.resolved.tuned) and "tuned" not in legacy
    ours["model"] = {k: v for k, v in ours["model"].items() if k != "name"}  # the config names the model
    legacy["model"] = {k: v for k, v in legacy["model"].items() if k != "name"}
    assert ours == legacy


def test_a_record_reads_facts_from_plan_json(tmp_path):
    """A run directory whose plan.json says what ran: the record takes those facts, not the argv."""
    from conftest import make_cfg, PROBE
    from launcher.run.registry import launch_plan

    plan = launch_plan(make_cfg(["launch.megatron_validate=false"]), PROBE)
    rec = plan_record(plan)
    rec["facts"]["recompute"] = "facts, not argv"
    (tmp_path / "plan.json").write_text(json.dumps(rec))
    assert build_record(tmp_path)["recompute"] == "facts, not argv"
    del rec["facts"]
    (tmp_path / "plan.json").write_text(json.dumps(rec))
    assert build_record(tmp_path)["recompute"] == "none"  # an older run: read back from the argv

"""Dry runs start fast (issue 15): Megatron's verdict on an argv is remembered (validate_cache.py), keyed by
argv, world size, environment, target GPU, versions and the validating code; a second dry run of the same
plan does not import Megatron, a different plan or a refusal is validated again."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.errors import ConfigError
from launcher.plan.megatron import validate_cache
from launcher.plan.megatron.validator import megatron_validate

ROOT = Path(__file__).resolve().parents[3]

DRY = """
import sys, json
from launcher.cli import main
rc = main(["launch.dry_run=true", "launch.run_dir=" + sys.argv[1]])
print(json.dumps({"rc": rc, "megatron_imported": "megatron.training" in sys.modules}))
"""


def _dry(tmp_path: Path, name: str, cache: Path) -> dict:
    env = {**os.environ, "MOE_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", DRY, str(tmp_path / name)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_dry_run_reuses_the_verdict_without_importing_megatron(tmp_path):
    cache = tmp_path / "cache"
    first = _dry(tmp_path, "a", cache)
    assert first == {"rc": 0, "megatron_imported": True} and len(list((cache / "validate").glob("*.json"))) == 1
    second = _dry(tmp_path, "b", cache)
    assert second == {"rc": 0, "megatron_imported": False}
    plan_a, plan_b = (json.loads((tmp_path / d / "plan.json").read_text()) for d in ("a", "b"))
    # the same layout; only the run directory (--save/--load under it) differs, and that is not in the key
    generic = [[a.replace(str(tmp_path / d), "<run_dir>") for a in plan["argv"]] for d, plan in (("a", plan_a),
                                                                                               ("b", plan_b))]
    assert plan_a["megatron"] == plan_b["megatron"] and generic[0] == generic[1]


def test_key_changes_with_each_input():
    argv, env = ["--num-layers", "2"], {"A": "1"}
    base = validate_cache.cache_key(argv, 8, env, (9, 0))
    assert base == validate_cache.cache_key(list(argv), 8, dict(env), (9, 0))
    assert len({base, validate_cache.cache_key(argv + ["--fp16"], 8, env, (9, 0)),
                validate_cache.cache_key(argv, 16, env, (9, 0)), validate_cache.cache_key(argv, 8, {"A": "2"}, (9, 0)),
                validate_cache.cache_key(argv, 8, env, (10, 0))}) == 5


def test_refusals_are_not_remembered_and_the_switch_turns_it_off(tmp_path, monkeypatch):
    from conftest import plan_for

    monkeypatch.setenv("MOE_CACHE_DIR", str(tmp_path))
    plan = plan_for(["model=tiny_moe"], validate_megatron=False)
    bad = [*plan.argv, "--micro-batch-size", "3"]  # 8 is not a multiple of 3 x DP 1: Megatron refuses
    for _ in range(2):
        with pytest.raises(ConfigError):
            megatron_validate(bad, 1, plan.env, (9, 0))
    assert not list(tmp_path.rglob("*.json"))
    monkeypatch.setenv("MOE_VALIDATE_CACHE", "0")
    megatron_validate(plan.argv, plan.resolved.world_size, plan.env, (9, 0))
    assert not list(tmp_path.rglob("*.json"))
    monkeypatch.delenv("MOE_VALIDATE_CACHE")
    got = megatron_validate(plan.argv, plan.resolved.world_size, plan.env, (9, 0))
    assert len(list(tmp_path.rglob("*.json"))) == 1
    assert megatron_validate(plan.argv, plan.resolved.world_size, plan.env, (9, 0)) == got

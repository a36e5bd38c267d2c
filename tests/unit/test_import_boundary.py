"""The login-node side of the launcher imports neither torch nor megatron."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HEAVY = ("torch", "megatron", "transformer_engine")


def _heavy_modules_after(code: str) -> list[str]:
    probe = code + textwrap.dedent(f"""
        import json, sys
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})))
    """)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_probe_detects_heavy_imports():
    """The check itself works: it sees torch and megatron once they are imported."""
    mods = _heavy_modules_after("import torch, megatron\n")
    assert "torch" in mods and "megatron" in mods


def test_launcher_modules_import_without_torch_or_megatron():
    mods = _heavy_modules_after(
        "import launcher.cli, launcher.config.compose, launcher.plan.plan, launcher.plan.rules, "
        "launcher.plan.resolve, launcher.plan.megatron.table, launcher.plan.megatron.parser, "
        "launcher.plan.megatron.validator, launcher.run.rundir, launcher.run.registry, launcher.plan.layout, "
        "launcher.plan.probe, launcher.config.schema, launcher.errors, launcher.run.local\n")
    assert mods == []


def test_plan_without_megatron_validation_stays_light():
    """compose + resolve + validate + table mapping run without torch (megatron_validate=false, no extras)."""
    mods = _heavy_modules_after(textwrap.dedent("""
        from launcher.config.compose import compose
        from launcher.run.command import render_script
        from launcher.run.registry import launch_plan
        from launcher.plan.probe import MachineProbe
        from pathlib import Path
        _, cfg = compose(["model=qwen3_235b_a22b", "parallel=tp2_pp8_vpp4_ep32", "train=pretrain",
                          "cluster.nodes=32", "cluster.gpus_per_node=8", "launch.dry_run=true",
                          "launch.megatron_validate=false"])
        plan = launch_plan(cfg, MachineProbe())
        assert "--pipeline-model-parallel-layout" in plan.argv
        render_script(plan, Path("."))
    """))
    assert mods == []

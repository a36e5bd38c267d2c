"""Credentials in cluster.env never reach a file of the run directory nor the screen (launcher/plan/secrets.py);
a local run picks a free rendezvous port (launcher/run/base.py)."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_cfg
from launcher.plan.secrets import PLACEHOLDER, is_secret, redact_overrides

SECRET = "s3cr3t-value-never-written"


@pytest.mark.parametrize("name,secret", [("WANDB_API_KEY", True), ("HF_TOKEN", True), ("AWS_SECRET", True),
                                         ("DB_PASSWORD_FILE", True), ("my_token", True), ("NCCL_DEBUG", False),
                                         ("KEYBOARD", False), ("TOKENIZERS_PARALLELISM", False)])
def test_credential_names(name, secret):
    assert is_secret(name) is secret


def test_configured_names_count_too():
    assert is_secret("MY_ORG_CRED", ["MY_ORG_*"]) and not is_secret("MY_ORG_CRED")


def test_overrides_are_redacted():
    out = redact_overrides(["cluster.env.HF_TOKEN=abc", "cluster.env.FOO=1", "model=tiny_moe"], ["HF_TOKEN"])
    assert out == [f"cluster.env.HF_TOKEN={PLACEHOLDER}", "cluster.env.FOO=1", "model=tiny_moe"]


def test_a_dry_run_writes_and_prints_no_credential(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "launcher", "launch.dry_run=true", f"launch.run_dir={run_dir}",
                           f"cluster.env.HF_TOKEN={SECRET}", "cluster.env.NCCL_DEBUG=INFO",
                           "launch.megatron_validate=false"],
                          cwd=Path(__file__).resolve().parents[3], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    for f in run_dir.rglob("*"):
        if f.is_file():
            assert SECRET not in f.read_text(errors="replace"), f
    script = (run_dir / "command.sh").read_text()
    assert 'if [ -n "${HF_TOKEN+x}" ]; then export HF_TOKEN; fi' in script  # passed by name only
    assert 'export NCCL_DEBUG="${NCCL_DEBUG:-INFO}"' in script            # ordinary values as before
    assert f"HF_TOKEN: {PLACEHOLDER}" in (run_dir / "config.yaml").read_text()


def test_the_plan_carries_the_value_for_the_launch_only():
    from conftest import PROBE
    from launcher.plan.plan import build_plan, plan_record

    cfg = make_cfg([f"cluster.env.HF_TOKEN={SECRET}"])
    cfg.launch.megatron_validate = False
    plan = build_plan(cfg, PROBE)
    assert plan.secret_env == {"HF_TOKEN": SECRET} and plan.env["HF_TOKEN"] == PLACEHOLDER
    assert SECRET not in str(plan_record(plan)) and SECRET not in repr(plan)


def test_local_runs_take_a_free_port_and_keep_a_configured_one():
    from launcher.run.base import free_port, torchrun
    from launcher.plan.resolve import resolve
    from conftest import PROBE

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free indeed
    cfg = make_cfg([])
    argv = torchrun(cfg, resolve(cfg, PROBE))
    assert argv[argv.index("--master-port") + 1] != "29500"
    cfg = make_cfg(["cluster.master_port=29611"])
    argv = torchrun(cfg, resolve(cfg, PROBE))
    assert argv[argv.index("--master-port") + 1] == "29611"

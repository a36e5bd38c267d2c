"""`python -m launcher` end to end as a subprocess: dry run, user error, --help."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]


def _run(args: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    # no GPU visible: the machine probe reports 0 GPUs wherever the suite runs
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "launcher", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "tiny"
    proc = _run(["model=tiny_moe", "launch.dry_run=true", f"launch.run_dir={run_dir}"])
    return proc, run_dir


def test_dry_run_exits_zero(dry_run):
    proc, run_dir = dry_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "moe-launch: tiny_moe on 1 x cpu" in proc.stdout
    assert f"moe-launch: run directory {run_dir}" in proc.stdout
    assert "moe-launch: dry run: nothing started" in proc.stdout
    plan = proc.stdout.split(f"moe-launch: run directory {run_dir}")[0].splitlines()
    assert len(plan) <= 7 and [x.split(":")[0].strip() for x in plan[1:]] == \
        ["layout", "training", "memory", "saves", "resolved"][:len(plan) - 1]   # the plan in a few lines
    # a real run saves by default (launcher/plan/checkpoint.py): the dry run says where and how often
    assert f"checkpoints: {run_dir / 'checkpoints'} every" in proc.stdout and "MiB of" in proc.stdout


def test_dry_run_names_the_checkpoints(tmp_path):
    proc = _run(["model=tiny_moe", "launch.dry_run=true", f"launch.run_dir={tmp_path / 'r'}",
                 f"train.save={tmp_path / 'ck'}", "train.save_interval=10", "launch.megatron_validate=false"])
    assert proc.returncode == 0, proc.stderr
    assert f"checkpoints: {tmp_path / 'ck'} every 10 iterations" in proc.stdout


def test_dry_run_writes_the_run_directory(dry_run):
    _, run_dir = dry_run
    # .lock: the directory's lock (launcher/run/rundir_lock.py), taken by a dry run too
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "argv.txt", "command.sh", "config.yaml",
                                                         "estimate.json", "plan.json"]
    assert not (run_dir / "train.log").exists() and not (run_dir / "exit.json").exists()


def test_config_yaml_is_the_composed_config(dry_run):
    _, run_dir = dry_run
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["model"]["name"] == "tiny_moe"
    assert cfg["launch"]["dry_run"] is True and cfg["launch"]["run_dir"] == str(run_dir)


def test_argv_txt_matches_plan_json(dry_run):
    _, run_dir = dry_run
    plan = json.loads((run_dir / "plan.json").read_text())
    lines = (run_dir / "argv.txt").read_text().splitlines()
    assert lines == plan["argv"]
    assert "--num-experts" in lines and "--mock-data" in lines
    assert plan["command"][-len(lines):] == lines
    assert plan["command"][-len(lines) - 2:-len(lines)] == ["-m", "recipes.pretrain"]
    assert plan["command"][1:3] == ["-m", "torch.distributed.run"]
    assert plan["resolved"]["device"] == "cpu" and plan["resolved"]["world_size"] == 1
    assert plan["megatron"]["data_parallel_size"] == 1  # Megatron's validator ran
    assert plan["env"]["PYTHONUNBUFFERED"] == "1"


def test_command_sh_runs_exactly_the_plan(dry_run):
    _, run_dir = dry_run
    plan = json.loads((run_dir / "plan.json").read_text())
    script = (run_dir / "command.sh").read_text()
    assert os.access(run_dir / "command.sh", os.X_OK)
    for tok in plan["argv"]:
        assert shlex.quote(tok) in script, tok
    # the exec line, continuation lines joined, splits back into plan["command"] token for token
    exec_part = script[script.index("\nexec ") + len("\nexec "):].replace("\\\n", " ")
    assert shlex.split(exec_part) == plan["command"]
    for k, v in plan["env"].items():
        assert f'export {k}="${{{k}:-{v}}}"' in script
    assert subprocess.run(["bash", "-n", str(run_dir / "command.sh")]).returncode == 0


def test_bad_config_is_one_line_exit_2(tmp_path):
    proc = _run(["parallel.ep=3", "launch.dry_run=true", f"launch.run_dir={tmp_path / 'bad'}"])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("moe-launch: error: parallel=")
    assert "world size 1 is not divisible by ep*etp*pp=3" in lines[0] and "Fix:" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "bad").exists()


def test_compose_error_is_one_line_exit_2(tmp_path):
    proc = _run(["model=qwen3_30b", f"launch.run_dir={tmp_path / 'bad'}"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "moe-launch: error: model='qwen3_30b': no such option in conf/model/. Fix: did you mean "
        "model=qwen3_30b_a3b? options: deepseek_v2, deepseek_v2_lite, deepseek_v3, kimi_k2, mixtral_8x22b, "
        "mixtral_8x7b, qwen2_57b_a14b, qwen3_235b_a22b, qwen3_30b_a3b, qwen3_next_80b_a3b, tiny_deepseek, tiny_moe"]


def test_help_lists_the_groups():
    proc = _run(["--help"])
    assert proc.returncode == 0 and proc.stderr == ""
    assert "usage: moe-launch" in proc.stdout
    for group, option in [("model", "qwen3_235b_a22b"), ("parallel", "tp2_pp8_vpp4_ep32"),
                          ("dispatcher", "deepep"), ("recompute", "norm_act"), ("precision", "fp8_blockwise"),
                          ("data", "indexed"), ("train", "pretrain"), ("cluster", "local")]:
        line = next((ln for ln in proc.stdout.splitlines() if ln.strip().startswith(group + " ")), None)
        assert line is not None, group
        assert option in line, (group, line)


def test_megatron_rejection_is_exit_2_without_traceback(tmp_path):
    """An argv only Megatron's validator rejects (raw flags bypass our rules) still ends as a user error."""
    proc = _run(["megatron.raw=[--distribute-saved-activations]", "launch.dry_run=true",
                 f"launch.run_dir={tmp_path / 'bad'}"])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # importing torch/megatron adds no notices on the login node
    last = lines[0]
    # Megatron's statement (assert args.tensor_model_parallel_size > 1) names the field behind that flag
    assert last.startswith("moe-launch: error: parallel.tp='1': Megatron-Core rejected it at world size 1: ")
    assert "can distribute recomputed activations only across tensor model parallel groups" in last
    assert not (tmp_path / "bad").exists()


def _exec_tokens(script: str) -> list[str]:
    return shlex.split(script[script.index("\nexec ") + len("\nexec "):].replace("\\\n", " "))


def _write_indexed(prefix) -> None:
    """A one-document Megatron pair (3 uint16 tokens) written by megatron-core's own builder."""
    import numpy
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=numpy.uint16)
    builder.add_document(torch.tensor([1, 2, 3]), [3])
    builder.finalize(f"{prefix}.idx")


def test_render_script_quotes_shell_metacharacters(tmp_path):
    from conftest import make_cfg, PROBE
    from launcher.run.command import render_script
    from launcher.run.registry import launch_plan

    cfg = make_cfg(["model=qwen3_235b_a22b", "parallel=tp2_pp8_vpp4_ep32", "train=pretrain", "cluster.nodes=32",
                    "cluster.gpus_per_node=8", "launch.dry_run=true", "launch.megatron_validate=false",
                    "data=indexed", "data.tokenizer_model=Qwen/Qwen3-235B-A22B"])
    # prefixes with a space and a quote that exist (a local run's data is checked before launch)
    for name in ("my corpus/a_text_document", "it's/b"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        _write_indexed(tmp_path / name)
    cfg.data.paths = ["0.7", str(tmp_path / "my corpus/a_text_document"), "0.3", str(tmp_path / "it's/b")]
    plan = launch_plan(cfg, PROBE)
    assert "Ett|(ttt|)*30ttL" in plan.argv
    workdir = tmp_path / "work dir"
    script = render_script(plan, workdir)
    assert _exec_tokens(script) == plan.command
    assert f"cd {shlex.quote(str(workdir))}\n" in script


def test_render_script_env_defaults_and_caller_wins(tmp_path):
    from conftest import make_cfg, PROBE
    from launcher.run.command import render_script
    from launcher.run.registry import launch_plan

    cfg = make_cfg(["launch.megatron_validate=false"])
    weird = 'a "b" $HOME `id` \\n'
    cfg.cluster.env = {"WEIRD": weird, "NCCL_DEBUG": "INFO"}
    plan = launch_plan(cfg, PROBE)
    script = render_script(plan, tmp_path)
    head = script[:script.index("\nexec ")]
    probe = head + '\nprintf "%s|%s|%s" "$WEIRD" "$NCCL_DEBUG" "$OMP_NUM_THREADS"\n'
    env = {k: v for k, v in os.environ.items() if k not in ("WEIRD", "NCCL_DEBUG", "OMP_NUM_THREADS")}
    out = subprocess.run(["bash", "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    assert out == f"{weird}|INFO|2"
    out = subprocess.run(["bash", "-c", probe], env={**env, "NCCL_DEBUG": "WARN"}, capture_output=True,
                         text=True, check=True).stdout
    assert out == f"{weird}|WARN|2"

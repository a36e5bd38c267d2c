"""Malicious or malformed config values in the Slurm and container scripts: a value that becomes an
#SBATCH line (which cannot be quoted) is refused with a one-line ConfigError; every other value is
shell-quoted, so bash passes it on literally and runs nothing from it (a canary file stays absent)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROBE, make_cfg
from launcher.errors import ConfigError
from launcher.run.container import render_container
from launcher.run.command import render_script
from launcher.run.registry import launch_plan
from launcher.run.slurm import render_sbatch

REPO = Path(__file__).resolve().parents[3]
HOSTILE = ["a b", "it's", 'say "hi"', "$(touch CANARY)", "`touch CANARY`", "x; touch CANARY", "a\nb", "a\0b",
           "${HOME}", "a#b", "a\\b", "tab\there", "'; touch CANARY; '"]
QUICK = ["cluster=slurm", "launch.megatron_validate=false", "train.global_batch_size=64"]


def _plan(overrides, **cluster):
    """Config from overrides, then cluster fields set directly (values Hydra's grammar cannot carry)."""
    cfg = make_cfg(overrides)
    for key, value in cluster.items():
        setattr(cfg.cluster, key, value)
    return cfg, launch_plan(cfg, PROBE)


@pytest.mark.parametrize("field", ["account", "partition", "time", "job_name", "output"])
@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_directive_values_that_need_quoting_are_refused(field, value):
    with pytest.raises(ConfigError) as e:
        _plan(QUICK, **{field: value})
    assert e.value.field == f"cluster.{field}"
    assert "cannot be quoted" in e.value.rule or "Slurm time" in e.value.rule or "newline" in e.value.rule
    assert "\n" not in str(e.value)  # one line, whatever the value held


def test_plain_directive_values_pass_and_render():
    cfg, plan = _plan([*QUICK, "cluster.account=proj-123", "cluster.partition=gpu_h100",
                       "cluster.time=2-00:00:00", "cluster.job_name=qwen3.235b+bf16",
                       "cluster.sbatch_extra=['qos=high','--gres=gpu:8']"])
    text = render_sbatch(cfg, plan, Path("/runs/x"), Path("/w"))
    for line in ("#SBATCH --account=proj-123", "#SBATCH --partition=gpu_h100", "#SBATCH --time=2-00:00:00",
                 "#SBATCH --job-name=qwen3.235b+bf16", "#SBATCH --qos=high", "#SBATCH --gres=gpu:8"):
        assert line + "\n" in text


def test_a_launch_name_that_cannot_be_a_job_name_is_named():
    with pytest.raises(ConfigError) as e:
        cfg, plan = _plan([*QUICK, "launch.name='my run'"])
        render_sbatch(cfg, plan, Path("/runs/x"), Path("/w"))
    assert e.value.field == "launch.name" and e.value.value == "moe-my run"


def test_run_dir_that_cannot_be_a_directive_is_refused_and_percent_is_escaped():
    cfg, plan = _plan(QUICK)
    with pytest.raises(ConfigError) as e:
        render_sbatch(cfg, plan, Path("/runs/my run"), Path("/w"))
    assert e.value.field == "launch.run_dir"
    text = render_sbatch(cfg, plan, Path("/runs/50%"), Path("/w"))
    assert "#SBATCH --output=/runs/50%%/train.log\n" in text  # sbatch reads %% as a literal %


@pytest.mark.parametrize("extra, fix", [("nodes=4", "cluster.nodes"), ("--job-name=x", "cluster.job_name"),
                                        ("ntasks-per-node=2", "cluster.gpus_per_node"), ("N=2", "cluster.nodes"),
                                        # the fields issue 13 added: sbatch would keep the last one silently
                                        ("--requeue", "cluster.requeue"), ("no-requeue", "cluster.requeue"),
                                        ("--signal=B:USR1@60", "cluster.signal")])
def test_sbatch_extra_cannot_set_a_directive_twice(extra, fix):
    with pytest.raises(ConfigError) as e:
        _plan(QUICK, sbatch_extra=[extra])
    assert fix in e.value.fix


@pytest.mark.parametrize("extra, fix", [(["--ntasks=3"], "cluster.gpus_per_node"),
                                        (["-n", "3"], "cluster.gpus_per_node"),
                                        (["--nodes=2"], "cluster.nodes"), (["-K0"], "drop it"),
                                        (["--container-image=x"], "cluster.container_image")])
def test_srun_extra_cannot_change_what_sbatch_sh_starts(extra, fix):
    """Another task count would start ranks the plan does not have; srun keeps the last option silently."""
    with pytest.raises(ConfigError) as e:
        _plan(QUICK, srun_extra=extra)
    assert e.value.field == "cluster.srun_extra" and fix in e.value.fix
    _plan(QUICK, srun_extra=["--cpu-bind=none", "--mpi=pmix"])


@pytest.mark.parametrize("bad", ["01:00:00:00", "-5", "tomorrow", "1:2:3:4"])
def test_time_must_be_a_slurm_time(bad):
    with pytest.raises(ConfigError, match="Slurm time"):
        _plan(QUICK, time=bad)


@pytest.mark.parametrize("key", ["A=1; touch CANARY; B", "1ABC", "A B", "A-B", ""])
def test_env_names_must_be_identifiers(key):
    with pytest.raises(ConfigError, match="not an environment variable name"):
        _plan(QUICK, env={key: "x"})


@pytest.mark.parametrize("field, value", [("python", "py\nthon"), ("container_image", "img\0"),
                                          ("launch_prefix", ["nsys", "a\nb"]), ("srun_extra", ["--x\r"]),
                                          ("container_image", "")])
def test_one_line_values_refuse_newlines_and_nul(field, value):
    with pytest.raises(ConfigError):
        _plan(QUICK, **{field: value})


@pytest.mark.parametrize("mount", ["/a:/b,/c:/d", "relative:/x", "/a", "/a:/b:ro:extra"])
def test_malformed_mounts_are_refused(mount):
    with pytest.raises(ConfigError, match="container_mounts"):
        _plan(QUICK, container_mounts=[mount])


def _bin(tmp_path: Path) -> dict:
    """srun/scontrol stand-ins on PATH: srun prints its arguments as JSON."""
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    (d / "scontrol").write_text("#!/usr/bin/env bash\necho node1\n")
    (d / "srun").write_text(f"#!/usr/bin/env bash\nexec {sys.executable} -c "
                            "'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\"\n")
    for f in d.iterdir():
        f.chmod(0o755)
    return {"PATH": f"{d}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node1", "SLURM_JOB_ID": "1",
            "SLURM_JOB_NUM_NODES": "1", "SLURM_NTASKS_PER_NODE": "8"}


SHELL_HOSTILE = [v for v in HOSTILE if "\0" not in v and "\n" not in v]


def test_script_body_values_reach_srun_literally(tmp_path):
    """Image, mounts, workdir and srun arguments full of shell syntax: srun receives each one verbatim."""
    env = _bin(tmp_path)
    for i, value in enumerate(SHELL_HOSTILE):
        cfg, plan = _plan(QUICK, container_image=f"img{value}", container_workdir=f"/w/{value}".replace(",", ""),
                          srun_extra=[f"--comment={value}"], container_mounts=[f"/d/{i}{value}:/data".replace(",", "")])
        text = render_sbatch(cfg, plan, tmp_path / "run", Path("/w"))
        out = subprocess.run(["bash", "-c", text], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, (value, out.stderr)
        args = json.loads(out.stdout.splitlines()[-1])
        assert f"--container-image=img{value}" in args and f"--comment={value}" in args
        assert f"--container-workdir=/w/{value}".replace(",", "") in args
        assert not (tmp_path / "CANARY").exists(), value


def test_env_values_reach_every_rank_literally(tmp_path):
    """cluster.env values with quotes, $(...), backticks, newlines and backslashes, through command.sh."""
    values = {f"V{i}": v for i, v in enumerate(HOSTILE) if "\0" not in v}
    stub = tmp_path / "py"
    stub.write_text(f"#!/usr/bin/env bash\nexec {sys.executable} -c "
                    "'import json, os; print(json.dumps(dict(os.environ)))'\n")
    stub.chmod(0o755)
    cfg, plan = _plan(QUICK, env=values, python=str(stub))
    script = tmp_path / "command.sh"
    script.write_text(render_script(plan, tmp_path))
    slurm = {"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0", "SLURM_NTASKS_PER_NODE": "1"}
    out = subprocess.run(["bash", str(script)], cwd=tmp_path, env={"PATH": os.environ["PATH"], **slurm},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    env = json.loads(out.stdout)
    assert {k: env[k] for k in values} == values
    assert not (tmp_path / "CANARY").exists()
    assert env["TORCHELASTIC_ERROR_FILE"] == ""  # no sbatch.sh exported MOE_RANK_ERRORS: torch writes no file


def test_container_script_values_reach_docker_literally(tmp_path):
    """container.sh with hostile image/mount/workdir values: the runtime receives them verbatim."""
    d = tmp_path / "bin"
    d.mkdir()
    (d / "docker").write_text(f"#!/usr/bin/env bash\nexec {sys.executable} -c "
                              "'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\"\n")
    (d / "docker").chmod(0o755)
    for value in SHELL_HOSTILE:
        cfg, plan = _plan(["cluster=container", "launch.megatron_validate=false"], container_image=f"img{value}",
                          container_mounts=[f"/d{value}:/data".replace(",", "")], container_workdir=f"/w{value}")
        text = render_container(cfg, plan, tmp_path / "run", Path("/w"))
        out = subprocess.run(["bash", "-c", text], cwd=tmp_path, env={"PATH": f"{d}:{os.environ['PATH']}"},
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, (value, out.stderr)
        args = json.loads(out.stdout)
        assert f"img{value}" in args and f"/d{value}:/data".replace(",", "") in args and f"/w{value}" in args
        assert not (tmp_path / "CANARY").exists(), value


def test_cli_reports_a_hostile_value_in_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "launcher", "cluster=slurm", "cluster.account='a; rm -rf ~'",
                           "launch.dry_run=true", f"launch.run_dir={tmp_path / 'r'}"], cwd=REPO,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "moe-launch: error: cluster.account='a; rm -rf ~': becomes an #SBATCH directive, which cannot be quoted; "
        "it contains ' ', ';', '~'. Fix: use only letters, digits and . , : + = @ / % _ -"]
    assert not (tmp_path / "r").exists()  # refused before the run directory is written

"""The container executor's container.sh (docker/podman run around the same command.sh a local run
uses), and the image definitions' pins. No container runs here: the CI machine has no image registry,
and its sandbox refuses an OCI runtime's setrlimit (README, "Containers")."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROBE, make_cfg
from launcher.errors import ConfigError
from launcher.run.container import render_container
from launcher.run.command import render_script
from launcher.run.registry import launch_plan

REPO = Path(__file__).resolve().parents[3]
RUN, WORK = Path("/runs/c"), Path("/work/moe-recipes")


def _render(*overrides, probe=PROBE):
    cfg = make_cfg(["cluster=container", "cluster.container_image=moe-recipes:h100", *overrides])
    plan = launch_plan(cfg, probe)
    return cfg, plan, render_container(cfg, plan, RUN, WORK)


def _argv(text: str) -> list[str]:
    return shlex.split(text[text.index("\nexec ") + len("\nexec "):].replace("\\\n", " "))


def test_docker_on_gpus_runs_command_sh_with_the_same_plan():
    cfg, plan, text = _render("cluster.gpus_per_node=8", "launch.megatron_validate=false",
                              "train.global_batch_size=64")
    argv = _argv(text)
    assert argv[:3] == ["docker", "run", "--rm"]
    assert "--ipc=host" in argv and argv[argv.index("--gpus") + 1] == "all"
    assert argv[-3:] == ["moe-recipes:h100", "bash", "/runs/c/command.sh"]
    volumes = [argv[i + 1] for i, a in enumerate(argv) if a == "-v"]
    assert volumes == ["/work/moe-recipes:/work/moe-recipes", "/runs/c:/runs/c"]
    assert argv[argv.index("-w") + 1] == "/work/moe-recipes"
    # every variable command.sh sets is forwarded by name: the calling shell's value still wins inside
    forwarded = [argv[i + 1] for i, a in enumerate(argv) if a == "-e"]
    assert forwarded == [*plan.env, "MOE_RUN_DIR", "TORCHELASTIC_ERROR_FILE"]
    # inside the image: torchrun through the image's python, the same Megatron argv as every executor
    assert plan.launcher[:3] == ["python", "-m", "torch.distributed.run"] and "--nproc-per-node" in plan.launcher
    assert "-m recipes.pretrain" in render_script(plan, WORK)
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_podman_reaches_gpus_through_cdi_and_cpu_runs_get_no_gpu_flag():
    _, _, text = _render("cluster.container_runtime=podman", "cluster.gpus_per_node=2",
                         "launch.megatron_validate=false")
    argv = _argv(text)
    assert argv[0] == "podman" and argv[argv.index("--device") + 1] == "nvidia.com/gpu=all"
    _, plan, cpu = _render()  # no GPU visible here: device=cpu
    assert plan.resolved.device == "cpu" and "--gpus" not in _argv(cpu) and "--device" not in _argv(cpu)


def test_image_workdir_and_user_mounts():
    _, _, text = _render("cluster.container_workdir=/opt/moe-recipes", "cluster.container_mounts=[/data:/data:ro]")
    argv = _argv(text)
    volumes = [argv[i + 1] for i, a in enumerate(argv) if a == "-v"]
    assert volumes == ["/data:/data:ro", "/runs/c:/runs/c"]  # the image brings the code: no workdir mount
    assert argv[argv.index("-w") + 1] == "/opt/moe-recipes"


@pytest.mark.parametrize("overrides, field", [
    (["cluster.container_image=null"], "cluster.container_image"),
    (["cluster.container_runtime=singularity"], "cluster.container_runtime"),
    (["cluster.container_workdir=relative/dir"], "cluster.container_workdir"),
    (["cluster.nodes=2"], "cluster.nodes"),
    (["cluster.follow=true"], "cluster.follow"),
])
def test_container_config_errors(overrides, field):
    with pytest.raises(ConfigError) as e:
        make_cfg_plan = make_cfg(["cluster=container", "cluster.container_image=img", *overrides])
        launch_plan(make_cfg_plan, PROBE)
    assert e.value.field == field


def test_cli_dry_run_prints_container_sh(tmp_path):
    run_dir = tmp_path / "c"
    proc = subprocess.run([sys.executable, "-m", "launcher", "cluster=container", "cluster.container_image=img:1",
                           "launch.dry_run=true", f"launch.run_dir={run_dir}"], cwd=REPO,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = (run_dir / "container.sh").read_text()
    assert text in proc.stdout and f"bash {run_dir.absolute() / 'command.sh'}" in text
    assert proc.stdout.rstrip().endswith(f"run it with: bash {run_dir / 'container.sh'}")


def _env_file() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (REPO / "container/versions.env").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return {k.strip(): v.strip() for k, v in pairs}


def test_versions_live_in_one_file_and_match_the_package_pins():
    pins = _env_file()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"megatron-core=={pins["MEGATRON_CORE"]}"' in pyproject
    assert f'transformer-engine[pytorch]=={pins["TRANSFORMER_ENGINE"]}' in pyproject
    # one DeepEP: the hybrid-ep branch at the commit Megatron-LM's CI pins gives both Buffer and HybridEPBuffer;
    # a second DeepEP build (the old DeepEP-main pin) would overwrite the same package `deep_ep`
    assert pins["DEEPEP_BRANCH"] == "hybrid-ep" and pins["DEEPEP_COMMIT"] == "17cfb817bccec3a9c247013360cc550c2bac441e"
    assert pins["DEEPEP_REPO"] == "https://github.com/deepseek-ai/DeepEP.git"
    # HybridEP 3f601f7 lacks dispatch_with_permute(non_blocking=), which megatron-core 0.19.2 always passes
    assert "HYBRIDEP_COMMIT" not in pins and not any(v.startswith("3f601f7") for v in pins.values())
    assert re.fullmatch(r"\d+\.\d+\.\d+", pins["NVSHMEM"])
    # gated delta net's kernels: the image installs the pair the gpu extra pins
    assert f'"flash-linear-attention=={pins["FLA"]}"' in pyproject and f'"tilelang=={pins["TILELANG"]}"' in pyproject
    for dockerfile in ("Dockerfile", "Dockerfile.blackwell"):
        text = (REPO / "container" / dockerfile).read_text()
        args = set(re.findall(r"^ARG (\w+)", text, re.M))
        assert {"NGC_PYTORCH", "MEGATRON_CORE", "TRANSFORMER_ENGINE", "DEEPEP_REPO", "DEEPEP_BRANCH", "DEEPEP_COMMIT",
                "NVSHMEM", "NVSHMEM_PKG", "FLA", "TILELANG"} <= args
        # exactly one DeepEP build per image, at the pinned commit, with CUDA 13's CCCL include path, and the
        # image build fails unless the installed deep_ep has every argument megatron-core passes
        assert text.count("git clone") == 1 and 'git checkout "${DEEPEP_COMMIT}"' in text
        assert "include/cccl" in text and "python -m recipes.preflight --api deepep hybridep" in text
        assert '"flash-linear-attention==${FLA}" "tilelang==${TILELANG}"' in text
        # defaults in the Dockerfile equal versions.env (a build without --build-arg gets the same image)
        for name, value in re.findall(r"^ARG (\w+)=(\S+)", text, re.M):
            if name in pins:
                assert value == pins[name], (dockerfile, name)
        assert "FROM nvcr.io/nvidia/pytorch:${" in text and "pip install" in text

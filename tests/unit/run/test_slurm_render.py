"""Multi-node Slurm rendering on paper: sbatch.sh and each rank's environment for 2, 32 and 128 nodes,
golden scripts, and the dry run printing exactly the file a real run submits.

The per-rank checks run the rendered command.sh with bash, with the variables srun gives task k
(SLURM_PROCID=k, ...) and a stand-in interpreter that prints what it received; the real srun runs it in
tests/e2e/test_slurm_cluster.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROBE, make_cfg
from launcher.tools.modelzoo import translate
from launcher.run.command import render_script
from launcher.run.registry import launch_plan
from launcher.run.slurm import render_sbatch

REPO = Path(__file__).resolve().parents[3]
GOLDEN = REPO / "tests/slurm/golden"
RUN_DIR, WORKDIR = Path("/runs/job"), Path("/work/moe-recipes")
SEED_ENV = {"NNODES": "32", "MODEL": "Qwen3-235B-A22B", "PP": "8", "VPP": "4", "TP": "4", "EP": "8", "CP": "2",
            "GBS": "256", "SEQ_LEN": "32768", "PR": "bf16", "A2A_OVERLAP": "0", "OPTIMIZER_OFFLOAD": "0",
            "OUTPUT_PATH": "/runs"}
SEED_ARGS = ["--recompute-granularity", "selective", "--recompute-modules", "layernorm", "moe"]

CASES = {
    # 2 nodes x 8 H100: Qwen3-30B-A3B, experts over 8 GPUs, in a container through pyxis
    "h100_2n_qwen3_30b_ep8": ["model=qwen3_30b_a3b", "parallel=ep8", "train=pretrain", "train.global_batch_size=256",
                              "cluster=slurm", "cluster.nodes=2", "cluster.account=moe", "cluster.partition=batch",
                              "cluster.time=01:00:00", "cluster.container_image=/images/moe-recipes+h100.sqsh",
                              "cluster.container_mounts=[/lustre/data:/data:ro]",
                              # 75 of 80 GiB predicted: over the 90% the memory rule allows; rendering is tested here
                              "launch.skip_memory_check=true"],
    # 32 nodes: the ModelZoo command of the published long-context table, through the wrapper
    "h100_32n_modelzoo_seed": [*translate(SEED_ENV, SEED_ARGS, now="T")],
    # 128 GB200 trays (4 GPUs each, NVL72): segments keep each EP x TP group in one NVLink domain
    "gb200_128n_segment": ["model=qwen3_235b_a22b", "parallel=tp2_pp8_vpp4_ep32", "parallel.tp=1", "parallel.pp=4",
                           "parallel.vpp=12", "hardware=gb200", "train=pretrain", "train.global_batch_size=2048",
                           "dispatcher=hybridep", "cluster=slurm", "cluster.nodes=128", "cluster.time=4:00:00"],
}
NODES = {"h100_2n_qwen3_30b_ep8": (2, 8), "h100_32n_modelzoo_seed": (32, 8), "gb200_128n_segment": (128, 4)}


def _plan(overrides):
    cfg = make_cfg([*overrides, "cluster.python=python"])
    return cfg, launch_plan(cfg, PROBE)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    cfg, plan = _plan(CASES[request.param])
    return request.param, cfg, plan


def test_golden_sbatch_and_command(case):
    """sbatch.sh and command.sh, byte for byte (UPDATE_GOLDEN=1 rewrites them after a reviewed change)."""
    name, cfg, plan = case
    rendered = {f"{name}.sbatch.sh": render_sbatch(cfg, plan, RUN_DIR, WORKDIR),
                f"{name}.command.sh": render_script(plan, WORKDIR)}
    for fname, text in rendered.items():
        path = GOLDEN / fname
        if os.environ.get("UPDATE_GOLDEN") == "1":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        assert path.read_text() == text, f"{fname} changed; review, then UPDATE_GOLDEN=1"
        assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_directives_and_world(case):
    name, cfg, plan = case
    nodes, per_node = NODES[name]
    text = render_sbatch(cfg, plan, RUN_DIR, WORKDIR)
    assert f"#SBATCH --nodes={nodes}\n" in text and f"#SBATCH --ntasks-per-node={per_node}\n" in text
    assert f"--nodes={nodes} \\\n  --ntasks-per-node={per_node}" in text  # srun: one task per GPU
    assert "#SBATCH --output=/runs/job/train.log\n#SBATCH --exclusive\n" in text
    assert plan.resolved.world_size == nodes * per_node and plan.resolved.device == "cuda"
    p = cfg.parallel
    assert plan.megatron["data_parallel_size"] == nodes * per_node // (p.tp * p.pp * p.cp)  # Megatron agreed
    directives = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    first_command = text.index("set -euo pipefail")
    assert all(text.index(d) < first_command for d in directives)  # sbatch stops reading at the first command


def test_segment_only_where_the_nvlink_domain_spans_nodes(case):
    name, cfg, plan = case
    text = render_sbatch(cfg, plan, RUN_DIR, WORKDIR)
    if name.startswith("gb200"):
        # ep*tp = 32 GPUs = 8 trays of 4, inside one 72-GPU domain; 128 nodes = 16 segments
        assert "#SBATCH --segment=8\n" in text
    else:
        assert "--segment" not in text.replace("# no --segment", "")
        assert "# no --segment: the NVLink domain (8 GPUs, h100) is one node" in text


def _stub_python(tmp_path: Path) -> Path:
    stub = tmp_path / "python"
    stub.write_text("#!/usr/bin/env bash\n"
                    f"exec {sys.executable} -c 'import json, os, sys; print(json.dumps({{\"argv\": sys.argv[1:], "
                    "\"env\": dict(os.environ)}))' \"$@\"\n")
    stub.chmod(0o755)
    return stub


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_rank_gets_its_place_from_slurm(name, tmp_path):
    """command.sh under srun: RANK/WORLD_SIZE/LOCAL_RANK from task k's Slurm variables, for the first,
    second, last-on-node-0, first-on-node-1 and last rank; a stale RANK in the caller never wins."""
    nodes, per_node = NODES[name]
    cfg = make_cfg([*CASES[name], f"cluster.python={_stub_python(tmp_path)}", "launch.megatron_validate=false"])
    plan = launch_plan(cfg, PROBE)
    script = tmp_path / "command.sh"
    script.write_text(render_script(plan, tmp_path))
    world = nodes * per_node
    for k in sorted({0, 1, per_node - 1, per_node, world - 1}):
        slurm = {"SLURM_PROCID": str(k), "SLURM_NTASKS": str(world), "SLURM_LOCALID": str(k % per_node),
                 "SLURM_NTASKS_PER_NODE": str(per_node), "SLURM_NODEID": str(k // per_node),
                 "MASTER_ADDR": "node0001", "MASTER_PORT": "29500", "RANK": "999",
                 "MOE_RANK_ERRORS": "/runs/job/rank_errors/0"}  # exported by sbatch.sh
        out = subprocess.run(["bash", str(script)], env={"PATH": os.environ["PATH"], **slurm}, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        env = got["env"]
        assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == \
            (str(k), str(world), str(k % per_node), str(per_node))
        assert env["TORCHELASTIC_ERROR_FILE"] == f"/runs/job/rank_errors/0/rank_{k}.json"  # one file per rank
        assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("node0001", "29500")  # exported by sbatch.sh
        assert got["argv"] == ["-m", "recipes.pretrain", *plan.argv]
        for key, value in plan.env.items():
            assert env[key] == value
    assert "CUDA_DEVICE_MAX_CONNECTIONS" in plan.env or cfg.parallel.tp == cfg.parallel.cp == 1


def test_sbatch_script_runs_srun_with_the_rendezvous(tmp_path):
    """sbatch.sh's own body with scontrol/srun stand-ins: MASTER_ADDR is the first host of the node list,
    srun gets exactly the rendered arguments; the ranks' error-file directory of this run of the job exists (the
    third: SLURM_RESTART_COUNT=2)."""
    cfg, plan = _plan(CASES["h100_2n_qwen3_30b_ep8"])
    run_dir = tmp_path / "job"
    text = render_sbatch(cfg, plan, run_dir, WORKDIR)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\n[ \"$*\" = 'show hostnames gpu-[017-018]' ] && "
                                      "printf 'gpu-017\\ngpu-018\\n'\n")
    (bin_dir / "srun").write_text(f"#!/usr/bin/env bash\nexec {sys.executable} -c 'import json, os, sys; "
                                  "print(json.dumps([sys.argv[1:], os.environ[\"MASTER_ADDR\"], "
                                  "os.environ[\"MASTER_PORT\"]]))' \"$@\"\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-[017-018]", "SLURM_JOB_ID": "7",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "8", "SLURM_RESTART_COUNT": "2"}
    out = subprocess.run(["bash", "-c", text], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "moe-launch: Slurm job 7, 2 node(s) x 8 tasks, rendezvous gpu-017:29500"
    args, addr, port = json.loads(lines[1])
    assert (addr, port) == ("gpu-017", "29500")
    assert args == ["--kill-on-bad-exit=1", "--nodes=2", "--ntasks-per-node=8",
                    "--container-image=/images/moe-recipes+h100.sqsh",
                    f"--container-mounts=/lustre/data:/data:ro,/work/moe-recipes:/work/moe-recipes,{run_dir}:{run_dir}",
                    "--container-workdir=/work/moe-recipes", "--no-container-mount-home", "bash",
                    f"{run_dir}/command.sh"]
    assert (run_dir / "rank_errors" / "2").is_dir()


def test_dry_run_prints_exactly_the_file_it_would_submit(tmp_path):
    run_dir = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-m", "launcher", "cluster=slurm", "cluster.nodes=2",
                           "cluster.account=moe", "parallel=ep8", "model=qwen3_30b_a3b", "train=pretrain",
                           "train.global_batch_size=256", "launch.dry_run=true", f"launch.run_dir={run_dir}",
                           "launch.skip_memory_check=true"],
                          cwd=REPO, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    sbatch = (run_dir / "sbatch.sh").read_text()
    assert sbatch in proc.stdout and proc.stdout.count("#!/usr/bin/env bash") == 1
    assert proc.stdout.rstrip().endswith(f"run it with: sbatch {run_dir / 'sbatch.sh'}")
    assert f"bash {run_dir / 'command.sh'}" in sbatch and os.access(run_dir / "sbatch.sh", os.X_OK)
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "argv.txt", "command.sh", "config.yaml",
                                                          "estimate.json", "plan.json", "sbatch.sh"]


def test_tasks_per_node_follow_hardware_unless_overridden():
    quick = ["cluster=slurm", "train.global_batch_size=64", "launch.megatron_validate=false"]
    assert _plan([*quick, "hardware=gb200"])[1].resolved.nproc_per_node == 4
    assert _plan([*quick, "hardware=h200"])[1].resolved.nproc_per_node == 8
    assert _plan([*quick, "hardware=gb200", "cluster.gpus_per_node=2"])[1].resolved.nproc_per_node == 2
    cpu = _plan(["cluster=slurm", "cluster.device=cpu", "cluster.nproc_cpu=2"])[1]
    assert (cpu.resolved.device, cpu.resolved.nproc_per_node, cpu.resolved.transformer_impl) == ("cpu", 2, "local")
    assert "--distributed-backend" in cpu.argv and cpu.launcher == ["python"]

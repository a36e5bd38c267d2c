"""A real Slurm job: a one-node cluster on this machine (munged, slurmctld, slurmd from Debian's
packages, started by tests/slurm/start_cluster.sh), the tiny MoE on CPU with 2 tasks submitted by
`moe-launch cluster=slurm`, followed to its end. Checks the job's state, that Slurm holds exactly the
script the dry run printed, and the training log.

Starting the cluster installs Debian packages and writes /etc/slurm as root, so it runs only where that is
asked for: CI=true (.ci/run), or MOE_TEST_SLURM=1 on a machine you are willing to change; elsewhere the
test skips and touches nothing. With CI=true the cluster must start: a failure fails the test with the
script's reason.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.records.logparse import parse_file

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
START, STOP = REPO / "tests/slurm/start_cluster.sh", REPO / "tests/slurm/stop_cluster.sh"
ITERS = 3
CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="module")
def cluster():
    """The one-node cluster, up; stopped afterwards only if this fixture started it."""
    if not (CI or os.environ.get("MOE_TEST_SLURM") == "1"):
        pytest.skip("the real-Slurm test installs packages and writes /etc/slurm: CI=true or MOE_TEST_SLURM=1 "
                    "runs it")
    try:
        proc = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=1500)
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = f"start_cluster.sh did not finish within {e.timeout} s", 124
    if rc != 0:
        reason = f"Slurm cluster did not start (exit {rc}): {out.strip()[-2000:]}"
        if rc == 3 and not CI:
            pytest.skip(reason)
        pytest.fail(reason)
    yield out
    if "cluster up" in out:  # "already up" means someone else's cluster: leave it alone
        subprocess.run(["bash", str(STOP)], capture_output=True, timeout=60)


def _launch(*overrides: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "launcher", *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def job(cluster, tmp_path_factory):
    """Dry run, then the real run into the same run directory (cluster.follow waits, bounded)."""
    run_dir = tmp_path_factory.mktemp("slurm") / "tiny"
    common = ["cluster=slurm", "cluster.device=cpu", "cluster.nproc_cpu=2", "cluster.exclusive=false",
              f"train.train_iters={ITERS}", "train.seq_length=128", "data.num_workers=0",
              "cluster.follow_timeout_s=600", f"launch.run_dir={run_dir}"]
    dry = _launch(*common, "launch.dry_run=true")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    dry_sbatch = (run_dir / "sbatch.sh").read_text()
    real = _launch(*common, "cluster.follow=true")
    return {"dry": dry, "dry_sbatch": dry_sbatch, "real": real, "run_dir": run_dir}


def test_job_completes(job):
    real = job["real"]
    assert real.returncode == 0, (real.stdout + real.stderr)[-4000:]
    assert "Traceback" not in real.stderr
    exit_rec = json.loads((job["run_dir"] / "exit.json").read_text())
    assert exit_rec["state"] == "COMPLETED" and exit_rec["exit_code"] == "0:0" and exit_rec["returncode"] == 0
    job_id = json.loads((job["run_dir"] / "job.json").read_text())["job_id"]
    assert re.search(rf"submitted Slurm job {job_id}\b", real.stdout)
    assert f"job {job_id} COMPLETED (exit 0:0)" in real.stdout
    # rank 0 wrote its versions into MOE_RUN_DIR (exported by sbatch.sh); the follower wrote the record
    assert (job["run_dir"] / "versions.json").exists() and (job["run_dir"] / "record.json").exists()


def test_slurm_ran_exactly_the_dry_run_script(job):
    """The dry run printed sbatch.sh; the real run submitted that file; Slurm stored it byte for byte."""
    dry_out = job["dry"].stdout
    assert job["dry_sbatch"] in dry_out
    assert (job["run_dir"] / "sbatch.sh").read_text() == job["dry_sbatch"]
    job_id = json.loads((job["run_dir"] / "job.json").read_text())["job_id"]
    stored = subprocess.run(["scontrol", "write", "batch_script", job_id, "-"], capture_output=True, text=True,
                            timeout=60)
    assert stored.returncode == 0, stored.stderr
    assert stored.stdout == job["dry_sbatch"]


def test_both_ranks_trained_and_logged(job):
    log_path = job["run_dir"] / "train.log"
    text = log_path.read_text()
    host = socket.gethostname().split(".")[0]
    # the batch step's own line: MASTER_ADDR is the allocation's first (only) host, from scontrol
    assert re.search(rf"moe-launch: Slurm job \d+, 1 node\(s\) x 2 tasks, rendezvous {re.escape(host)}:29500", text)
    assert f"recipes.pretrain: done, iteration {ITERS}/{ITERS}" in text and "world 2)" in text
    iters = parse_file(log_path).iterations
    assert len(iters) == ITERS and all(it["nan_iterations"] == 0 for it in iters)


def test_slurm_accounts_two_tasks_on_one_node(job):
    job_id = json.loads((job["run_dir"] / "job.json").read_text())["job_id"]
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=60).stdout
    fields = dict(tok.split("=", 1) for tok in out.split() if "=" in tok)
    assert fields["JobState"] == "COMPLETED" and fields["NumNodes"] == "1" and fields["NumTasks"] == "2"
    assert fields["BatchHost"] == socket.gethostname().split(".")[0]


def test_master_addr_is_the_first_host_of_a_128_node_list(cluster):
    """The rendered rendezvous line, run by bash with real scontrol on a 128-node list."""
    line = 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p); echo "$MASTER_ADDR"'
    for nodelist, first in (("gpu-[007-134]", "gpu-007"), ("a[2-3],b1", "a2"), ("dgx001", "dgx001")):
        out = subprocess.run(["bash", "-c", line], env={**os.environ, "SLURM_JOB_NODELIST": nodelist},
                             capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == first, out.stderr


def _stub_job(run_dir: Path, python: str, *extra: str) -> subprocess.CompletedProcess:
    """A followed 2-task CPU job whose every task runs `python` as its interpreter instead of the recipe."""
    return _launch("cluster=slurm", "cluster.device=cpu", "cluster.nproc_cpu=2", "cluster.exclusive=false",
                   "cluster.follow=true", "cluster.follow_timeout_s=300", f"cluster.python={python}",
                   f"launch.run_dir={run_dir}", "launch.megatron_validate=false", *extra, timeout=400)


def _script_python(path: Path, code: str) -> str:
    """An interpreter stand-in that runs `code` (ignoring the recipe's argv)."""
    path.write_text(f"#!/usr/bin/env bash\nexec {sys.executable} -c {shlex.quote(code)}\n")
    path.chmod(0o755)
    return str(path)


def test_a_failing_job_is_reported_failed(cluster, tmp_path):
    """A job whose ranks fail ends FAILED, and moe-launch exits non-zero with the state."""
    run_dir = tmp_path / "bad"
    # every task's interpreter is /bin/false: both ranks exit 1 at once, srun kills the step
    real = _stub_job(run_dir, "/bin/false")
    assert real.returncode == 1, real.stdout + real.stderr
    rec = json.loads((run_dir / "exit.json").read_text())
    assert rec["state"] == "FAILED" and rec["returncode"] == 1
    assert "COMPLETED" not in real.stdout


RAISING_RANK = """
import os
from recipes.lifecycle import recorded

def main():
    if os.environ["RANK"] == "1":
        raise ValueError("rank 1 read a truncated shard")
    return 0

raise SystemExit(recorded(main)())
"""


def test_a_rank_that_raises_is_named_in_the_record(cluster, tmp_path):
    """No torchrun under srun: rank 1's own torch elastic @record writes rank_errors/0/rank_1.json (the path
    command.sh gives it), and the record names the rank and its exception, as torchrun's error file does locally."""
    run_dir = tmp_path / "raises"
    real = _stub_job(run_dir, _script_python(tmp_path / "python", RAISING_RANK))
    assert real.returncode == 1, real.stdout + real.stderr
    assert [p.name for p in (run_dir / "rank_errors" / "0").iterdir()] == ["rank_1.json"]
    failure = json.loads((run_dir / "record.json").read_text())["failure"]
    assert failure["rank"] == 1, failure
    assert "ValueError: rank 1 read a truncated shard" in failure["summary"] + " ".join(failure["evidence"])


KILLED_RANK = """
import os, signal, time
if os.environ["RANK"] == "1":
    time.sleep(1)
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(120)
"""


def test_a_rank_killed_by_a_signal_is_named_and_counts_for_a_restart(cluster, tmp_path):
    """srun, not torchrun, starts the ranks: its first failed-task line ("task 1: Killed") makes the record
    rank_died / signal with rank 1, the class launch.max_restarts restarts after; this job saved no checkpoint to
    restart from, and moe-launch says so instead of starting over."""
    run_dir = tmp_path / "killed"
    real = _stub_job(run_dir, _script_python(tmp_path / "python", KILLED_RANK), "launch.max_restarts=1")
    assert real.returncode != 0, real.stdout + real.stderr
    failure = json.loads((run_dir / "record.json").read_text())["failure"]
    assert (failure["class"], failure["kind"], failure["rank"]) == ("rank_died", "signal", 1), failure
    assert "rank 1 killed by SIGKILL" in failure["summary"], failure
    assert "not restarting: there is no complete checkpoint" in real.stderr, real.stderr[-2000:]


def test_a_requeued_job_resumes_from_its_checkpoint_and_completes(cluster, tmp_path):
    """cluster.requeue=true: `scontrol requeue` after the checkpoint of iteration 10 stops the job and queues
    it again; the same sbatch.sh runs, Megatron loads <run_dir>/checkpoints (the argv always has --load
    there), train.log keeps both runs (--open-mode=append) and the job ends COMPLETED."""
    import time

    from launcher.run.slurm import job_state

    run_dir, iters = tmp_path / "requeue", 30
    sub = _launch("cluster=slurm", "cluster.device=cpu", "cluster.nproc_cpu=2", "cluster.exclusive=false",
                  "cluster.requeue=true", f"train.train_iters={iters}", "train.save_interval=10",
                  "train.seq_length=128", "data.num_workers=0", f"launch.run_dir={run_dir}",
                  "launch.megatron_validate=false")  # the ranks validate; the `job` fixture keeps the login check
    assert sub.returncode == 0, sub.stdout + sub.stderr
    job_id = json.loads((run_dir / "job.json").read_text())["job_id"]
    tracker = run_dir / "checkpoints" / "latest_checkpointed_iteration.txt"
    deadline = time.monotonic() + 600
    while not (tracker.exists() and tracker.read_text().strip() == "10"):
        assert time.monotonic() < deadline, (run_dir / "train.log").read_text()[-3000:]
        time.sleep(1)
    req = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    assert req.returncode == 0, req.stderr
    state = "PENDING"
    while state.split()[0] not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
        assert time.monotonic() < deadline + 600, state
        time.sleep(2)
        state, _ = job_state(job_id)
    text = (run_dir / "train.log").read_text()
    assert state == "COMPLETED", text[-3000:]
    assert "loading distributed checkpoint from" in text and f"done, iteration {iters}/{iters}" in text
    second = text.rsplit("moe-launch: Slurm job", 1)[1]  # the requeued run's part of the appended log
    first_logged = min(it["iteration"] for it in parse_file_text(second))
    assert first_logged >= 11, first_logged  # it continued from a checkpoint, not from iteration 1


def test_a_rank_killed_after_a_checkpoint_is_restarted_and_the_run_completes(cluster, tmp_path):
    """launch.max_restarts=1 under Slurm: rank 1 is SIGKILLed once iteration 10's checkpoint is complete and 2 more
    iterations are logged; the record says rank_died / signal, rank 1; moe-launch submits the next attempt, which
    resumes from iteration 10 and completes; the first attempt's log and record stay in attempts/1/."""
    import signal
    import time

    import psutil

    run_dir, iters = tmp_path / "restart", 16
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "cluster=slurm", "cluster.device=cpu",
                             "cluster.nproc_cpu=2", "cluster.exclusive=false", "cluster.follow=true",
                             "cluster.follow_timeout_s=600", "launch.max_restarts=1", f"train.train_iters={iters}",
                             "train.save_interval=10", "train.seq_length=128", "data.num_workers=0",
                             f"launch.run_dir={run_dir}", "launch.megatron_validate=false"],
                            cwd=REPO, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    tracker, log = run_dir / "checkpoints" / "latest_checkpointed_iteration.txt", run_dir / "train.log"
    deadline = time.monotonic() + 600
    while not (tracker.exists() and tracker.read_text().strip() == "10" and log.exists()
               and max((it["iteration"] for it in parse_file_text(log.read_text())), default=0) >= 12):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:] if log.exists() else ""
        time.sleep(0.5)
    # this job's rank 1 (other tests may train beside it: the environment sbatch.sh gives it tells them apart)
    ranks = [p for p in psutil.process_iter(["cmdline", "environ"])
             if "recipes.pretrain" in " ".join(p.info["cmdline"] or [])
             and (p.info["environ"] or {}).get("RANK") == "1"
             and (p.info["environ"] or {}).get("MOE_RUN_DIR") == str(run_dir)]
    assert len(ranks) == 1, ranks
    ranks[0].send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, (out + err)[-3000:]
    first = json.loads((run_dir / "attempts" / "1" / "record.json").read_text())["failure"]
    assert (first["class"], first["kind"], first["rank"]) == ("rank_died", "signal", 1), first
    assert "moe-launch: restart 1/1: rank 1 was killed by a signal" in err and "resuming from iteration 10" in err
    text = log.read_text()
    assert "loading distributed checkpoint from" in text and f"done, iteration {iters}/{iters}" in text
    assert min(it["iteration"] for it in parse_file_text(text)) >= 11  # the second attempt's own log
    assert json.loads((run_dir / "exit.json").read_text())["state"] == "COMPLETED"


def parse_file_text(text: str) -> list[dict]:
    from launcher.records.logparse import parse_iteration_line

    return [it for it in map(parse_iteration_line, text.splitlines()) if it]

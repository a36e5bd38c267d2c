"""Checkpoints and exact resume through the real megatron.training.pretrain loop on CPU (issue 13).

Every run is the tiny MoE launched by moe-launch, 20 iterations, a checkpoint every 10 into a directory
that is also train.load (so the first launch starts fresh and a relaunch of the same command resumes),
with Megatron's default distributed optimizer. A run killed at about iteration 15 leaves its newest
complete checkpoint at 10 (a copy of the reference run's iter_0000010 stands for it); SIGTERM makes
Megatron save at the iteration it stops at. The relaunch must reproduce the uninterrupted run's losses,
grad norms and learning rates exactly.

Megatron logs the first iteration of every run without resetting its loss accumulators
(training.py:2593), so with log_interval 1 the second logged losses of a run (lm loss, load balancing
loss) are the means of its first two: that one line's losses are compared as those means, everything else
bit for bit (as printed).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from launcher.records.logparse import parse_file, parse_iteration_line

pytestmark = pytest.mark.slow

ITERS, INTERVAL = 20, 10
# the ranks validate the argv with Megatron's own parser anyway: the login-side copy of that check (a Megatron
# import per launch, 12 launches here) is proven by tests/e2e/test_train_cpu.py and the unit tests
TINY = ("data.num_workers=0", "train.seq_length=128", f"train.train_iters={ITERS}",
        f"train.save_interval={INTERVAL}", "launch.megatron_validate=false")


def _port() -> int:
    with socket.socket() as s:  # a free rendezvous port: other jobs on this machine use 29500
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _argv(run_dir: Path, ckpt: Path, extra: tuple) -> list[str]:
    return [sys.executable, "-m", "launcher", *TINY, f"train.save={ckpt}", f"train.load={ckpt}",
            f"launch.run_dir={run_dir}", f"cluster.master_port={_port()}", *extra]


def _launch(run_dir: Path, ckpt: Path, *extra: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(_argv(run_dir, ckpt, extra), capture_output=True, text=True, timeout=600)
    if ok:
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def _iterations(run_dir: Path) -> dict[int, dict]:
    return {it["iteration"]: it for it in parse_file(run_dir / "train.log").iterations}


def _killed_at_15(reference_ckpt: Path, ckpt: Path) -> None:
    """What a SIGKILL at iteration ~15 leaves: the complete checkpoint of iteration 10 as the latest."""
    ckpt.mkdir(parents=True)
    shutil.copytree(reference_ckpt / "iter_0000010", ckpt / "iter_0000010")
    (ckpt / "latest_checkpointed_iteration.txt").write_text("10")


def _assert_resumed_exactly(reference: dict, resumed: dict, first: int) -> None:
    assert sorted(resumed) == list(range(first, ITERS + 1)), sorted(resumed)
    for n in range(first, ITERS + 1):
        want, got = reference[n], resumed[n]
        for key in ("consumed_samples", "lr", "grad_norm"):
            assert got[key] == want[key], (n, key, got[key], want[key])
        for key in ("loss", "load_balancing_loss"):  # Megatron's accumulated losses
            if n == first + 1:  # the mean of the run's first two iterations (module docstring)
                mean = (reference[first][key] + reference[n][key]) / 2
                assert got[key] == pytest.approx(mean, rel=2e-6), (n, key, got[key], mean)
            else:
                assert got[key] == want[key], (n, key, got[key], want[key])


def _report_checkpoint(ckpt: Path, log: Path, label: str) -> None:
    """Checkpoint size and Megatron's save-checkpoint timer, printed (pytest -s) for the record."""
    sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in ckpt.glob("iter_*")}
    saves = re.findall(r"save-checkpoint \.+: \(([0-9.]+), ([0-9.]+)\)", log.read_text())
    print(f"\n{label}: checkpoint bytes {sizes}, save-checkpoint ms (min, max over ranks) {saves}")
    assert sizes and all(size > 0 for size in sizes.values()) and saves


# ------------------------------------------------------------------------- one rank, default optimizer

@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("reference")
    _launch(root / "run", root / "ckpt")
    assert (root / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == str(ITERS)
    _report_checkpoint(root / "ckpt", root / "run" / "train.log", "1 rank, dp_reshardable")
    return root / "ckpt", _iterations(root / "run")


# A relaunch after a kill at ~15 resuming exactly from iteration 10 of this run (one rank, the default optimizer
# format) is test_sigkill_of_the_job_leaves_no_worker_and_the_relaunch_resumes, with a real kill; an explicit
# train.save = train.load directory resuming exactly is the EP 2 SIGTERM test below (and its argv,
# tests/unit/plan/test_checkpoint.py). A separate relaunch from a copied iteration 10 proved nothing more.

def test_other_implementations_bucket_optimizer_state_is_refused_before_training(reference, tmp_path):
    ckpt, _ = reference  # default format: optimizer state in the saving run's bucket order
    _killed_at_15(ckpt, tmp_path / "ckpt")
    proc = _launch(tmp_path / "run", tmp_path / "ckpt", "model.moe_grouped_gemm_impl=torch", ok=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "recipes.pretrain: error: train.load=" in out and "Fix: resume with model.moe_grouped_gemm_impl=te" in out
    assert "iteration       11/" not in out


def test_a_checkpoint_of_one_bucket_resumes_where_auto_would_cut_several(tmp_path):
    """A run saved with the gradient overlap off (one bucket: what auto gives a one-GPU run) and relaunched with
    parallel.overlap_grad_reduce=auto (on here: CPU): moe-launch follows the checkpoint (launcher/plan/
    resume_buckets.py) instead of the recipe refusing it, and iterations 11-20 equal the saving run's."""
    off = ("parallel.overlap_grad_reduce=false", "parallel.overlap_param_gather=false")
    _launch(tmp_path / "saving", tmp_path / "saving_ckpt", *off)
    _killed_at_15(tmp_path / "saving_ckpt", tmp_path / "ckpt")
    proc = _launch(tmp_path / "run", tmp_path / "ckpt")
    assert "overlap_grad_reduce=auto -> false: follows the checkpoint" in (tmp_path / "run" / "plan.json").read_text()
    assert "--overlap-grad-reduce" not in (tmp_path / "run" / "argv.txt").read_text(), proc.stdout[-2000:]
    _assert_resumed_exactly(_iterations(tmp_path / "saving"), _iterations(tmp_path / "run"), 11)
    # a new run that starts from that checkpoint by train.load, saving elsewhere, follows it the same way (the
    # recipe refused this before, naming the overrides)
    _killed_at_15(tmp_path / "saving_ckpt", tmp_path / "other")
    argv = [a for a in _argv(tmp_path / "new", tmp_path / "new_ckpt", ()) if not a.startswith("train.load=")]
    proc = subprocess.run([*argv, f"train.load={tmp_path / 'other'}"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "follows the checkpoint it loads" in (tmp_path / "new" / "plan.json").read_text()
    _assert_resumed_exactly(_iterations(tmp_path / "saving"), _iterations(tmp_path / "new"), 11)


# ------------------------------------------------ EP 2 on two processes, the torch expert implementation, SIGTERM
# torch.nn.functional.grouped_mm runs on CPU (BF16, forward and backward); recipes/experts.py puts Megatron's
# TEGroupedMLP with the torch linears into the local spec. The optimizer state is saved per parameter
# (fully_reshardable), so that Megatron's own experts can resume it too (recipes/checkpoint.py).

EP2 = ("parallel=ep2", "cluster.nproc_cpu=2",  # --exit-signal-handler is on by default (train.checkpoint)
       "megatron.extra={dist_ckpt_optim_fully_reshardable: true}")
EP2_TORCH = (*EP2, "model.moe_grouped_gemm_impl=torch")


@pytest.fixture(scope="module")
def ep2_torch_reference(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("ep2_torch_reference")
    proc = _launch(root / "run", root / "ckpt", *EP2_TORCH)
    assert "expert GEMMs through torch grouped_mm" in proc.stdout + proc.stderr
    _report_checkpoint(root / "ckpt", root / "run" / "train.log", "EP 2 over 2 ranks, torch experts, fully_reshardable")
    return root / "ckpt", _iterations(root / "run")


def _workers(root_pid: int) -> list[psutil.Process]:
    """The training ranks under torchrun (not torchrun itself)."""
    return [p for p in psutil.Process(root_pid).children(recursive=True)
            if "recipes.pretrain" in " ".join(p.cmdline()) and "torch.distributed.run" not in " ".join(p.cmdline())]


def _run_until(run_dir: Path, ckpt: Path, stop_after: int) -> tuple[int, str]:
    """Render the run (dry run), execute its command.sh, and SIGTERM every rank once iteration
    `stop_after` is logged, as Slurm does before a time limit or a preemption. Returns (rc, output)."""
    subprocess.run(_argv(run_dir, ckpt, (*EP2_TORCH, "launch.dry_run=true")), check=True, capture_output=True,
                   timeout=300)
    proc = subprocess.Popen(["bash", str(run_dir / "command.sh")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines, sent = [], False
    for line in proc.stdout:
        lines.append(line)
        it = parse_iteration_line(line)
        if it and it["iteration"] == stop_after and not sent:
            for worker in _workers(proc.pid):
                worker.send_signal(signal.SIGTERM)
            sent = True
    return proc.wait(timeout=300), "".join(lines)


def test_sigterm_saves_at_the_interrupted_iteration_and_the_relaunch_continues_exactly(ep2_torch_reference,
                                                                                        tmp_path):
    _, uninterrupted = ep2_torch_reference
    t0 = time.time()
    rc, out = _run_until(tmp_path / "stopped", tmp_path / "ckpt", stop_after=15)
    last = max(it["iteration"] for it in map(parse_iteration_line, out.splitlines()) if it)
    assert 15 <= last < ITERS, last  # the ranks finish the iteration they are in, then stop
    assert "exiting program after receiving SIGTERM" in out
    assert (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == str(last)
    assert (tmp_path / "ckpt" / f"iter_{last:07d}" / "metadata.json").is_file()
    # recipes.pretrain returns 4 for a run that stopped before train_iters; torchrun reports that as failed
    assert rc != 0 and f"recipes.pretrain: done, iteration {last}/" in out, out[-2000:]
    print(f"\nSIGTERM after iteration 15 was logged: saved iteration {last}, rc {rc}, {time.time() - t0:.0f}s")
    _launch(tmp_path / "run", tmp_path / "ckpt", *EP2_TORCH)
    _assert_resumed_exactly(uninterrupted, _iterations(tmp_path / "run"), last + 1)


def test_torch_experts_checkpoint_resumes_in_megatrons_own_experts(ep2_torch_reference, tmp_path):
    # impl=te on CPU is the local spec's SequentialMLP, whose checkpoint layout TEGroupedMLP shares. Same
    # weights and Adam state: iteration 11 (forward on the loaded weights, update from the loaded state) is
    # identical; after it the two modules' backward passes round differently in BF16 (measured: 3e-4
    # relative at most by iteration 20), while a misplaced optimizer state is off by >10% at once
    ckpt, uninterrupted = ep2_torch_reference
    _killed_at_15(ckpt, tmp_path / "ckpt")
    _launch(tmp_path / "run", tmp_path / "ckpt", *EP2, "model.moe_grouped_gemm_impl=te")
    resumed = _iterations(tmp_path / "run")
    assert sorted(resumed) == list(range(11, ITERS + 1))
    first, want = resumed[11], uninterrupted[11]
    assert (first["loss"], first["grad_norm"]) == (want["loss"], want["grad_norm"])
    for n in range(13, ITERS + 1):
        assert resumed[n]["loss"] == pytest.approx(uninterrupted[n]["loss"], rel=2e-3), n


# ------------------------------------------- moe-launch itself: default checkpoints, signals, relaunch resumes
# No train.save/train.load: the run saves into <run_dir>/checkpoints and a relaunch of the same command
# resumes from there by itself (launcher/plan/checkpoint.py), keeping the first attempt in attempts/1.

def _own_argv(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "launcher", *TINY, f"launch.run_dir={run_dir}"]


def _start_and_wait_for(run_dir: Path, iteration: int) -> subprocess.Popen:
    """moe-launch in the background until train.log (written line by line) shows `iteration`."""
    out = open(run_dir.parent / f"{run_dir.name}.launcher.out", "w")  # a file: an unread pipe would block it
    proc = subprocess.Popen(_own_argv(run_dir), stdout=out, stderr=subprocess.STDOUT, text=True)
    proc.out_path = Path(out.name)  # type: ignore[attr-defined]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        log = run_dir / "train.log"
        if log.exists() and any((it := parse_iteration_line(line)) and it["iteration"] >= iteration
                                for line in log.read_text().splitlines()):
            return proc
        assert proc.poll() is None, proc.out_path.read_text()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"iteration {iteration} never logged")


def _no_worker_left(run_dir: Path) -> None:
    left = [p for p in psutil.process_iter(["cmdline"])
            if "recipes.pretrain" in " ".join(p.info["cmdline"] or []) and str(run_dir) in " ".join(p.info["cmdline"])]
    assert not left, left


def _relaunch_resumes(run_dir: Path, uninterrupted: dict, first: int) -> None:
    proc = subprocess.run(_own_argv(run_dir), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert f"resuming from {run_dir / 'checkpoints'} iteration {first - 1}" in proc.stdout, proc.stdout[-2000:]
    assert (run_dir / "attempts" / "1" / "train.log").is_file() and (run_dir / "attempts" / "1" / "exit.json").is_file()
    assert "loading distributed checkpoint from" in (run_dir / "train.log").read_text()
    _assert_resumed_exactly(uninterrupted, _iterations(run_dir), first)


def test_sigterm_to_moe_launch_saves_records_preempted_and_the_relaunch_resumes(reference, tmp_path):
    _, uninterrupted = reference
    run_dir = tmp_path / "run"
    proc = _start_and_wait_for(run_dir, 15)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=600)
    out = proc.out_path.read_text()
    exit_info = json.loads((run_dir / "exit.json").read_text())
    assert exit_info["signal"] == "SIGTERM" and not exit_info["killed_after_grace"], out[-3000:]
    record = json.loads((run_dir / "record.json").read_text())
    assert record["failure"]["class"] == "preempted", record["failure"]
    last = int((run_dir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text())
    assert 15 <= last < ITERS and (run_dir / "checkpoints" / f"iter_{last:07d}" / "metadata.json").is_file()
    _no_worker_left(run_dir)
    _relaunch_resumes(run_dir, uninterrupted, last + 1)


def test_sigkill_of_the_job_leaves_no_worker_and_the_relaunch_resumes(reference, tmp_path):
    _, uninterrupted = reference
    run_dir = tmp_path / "run"
    proc = _start_and_wait_for(run_dir, 15)
    job = [c for c in psutil.Process(proc.pid).children() if "torch.distributed.run" in " ".join(c.cmdline())]
    assert job, "torchrun not found under moe-launch"
    os.killpg(job[0].pid, signal.SIGKILL)  # the job's process group (command.sh exec'd torchrun), as a scheduler
    proc.wait(timeout=120)
    out = proc.out_path.read_text()
    assert json.loads((run_dir / "exit.json").read_text())["returncode"] == -9, out[-3000:]
    assert json.loads((run_dir / "record.json").read_text())["failure"]["class"] == "killed"
    _no_worker_left(run_dir)  # the workers died with torchrun (recipes/lifecycle.py)
    _relaunch_resumes(run_dir, uninterrupted, 11)


# ------------------------------------------------------------------------- keep-last-N while the run goes on

def test_keep_last_prunes_during_the_run(tmp_path, monkeypatch):
    """Saves at 4, 8, ..., 20 with keep_last=1: rank 0 removes each older checkpoint once the next is complete,
    before training ends (the launcher's own pruning comes only after the run)."""
    monkeypatch.setenv("MOE_KEEP_LAST_POLL_S", "0.1")  # the ranks inherit it; 10 s by default
    run_dir, ckpt = tmp_path / "run", tmp_path / "ckpt"
    argv = [sys.executable, "-m", "launcher", "data.num_workers=0", "train.seq_length=128", "train.train_iters=20",
            "train.save_interval=4", "train.checkpoint.keep_last=1", "launch.megatron_validate=false",
            f"train.save={ckpt}", f"launch.run_dir={run_dir}", f"cluster.master_port={_port()}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    lines = (run_dir / "train.log").read_text().splitlines()
    removed = [i for i, line in enumerate(lines) if "recipes.retention: removed" in line]
    last_step = max(i for i, line in enumerate(lines) if parse_iteration_line(line))
    assert removed and removed[0] < last_step, "nothing was pruned before the last iteration"
    assert sorted(p.name for p in ckpt.glob("iter_*")) == ["iter_0000020"]

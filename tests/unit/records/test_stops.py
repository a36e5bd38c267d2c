"""interrupted, preempted and rank_died (launcher/records/stops.py): from exit.json's signal, Megatron's
exit-signal line, torchrun's root-cause block and, under Slurm, srun's first failed task."""
from __future__ import annotations

from pathlib import Path

from launcher.records.failures import classify
from launcher.records.stops import classify_stop

LOGS = Path(__file__).resolve().parents[2] / "data" / "logs"
SAVED = "[rank0]: exiting program after receiving SIGTERM.\n"


def _cls(text: str, exit_info: dict):
    return classify_stop(text, exit_info, classify(text, exit_info.get("returncode")))


def test_ctrl_c_is_interrupted():
    info = _cls("iteration 3/20\n", {"returncode": 1, "signal": "SIGINT", "killed_after_grace": False})
    assert info.cls == "interrupted" and "SIGINT" in info.summary


def test_sigterm_to_the_launcher_is_preempted_and_says_megatron_saved():
    info = _cls(SAVED, {"returncode": 1, "signal": "SIGTERM", "killed_after_grace": False})
    assert info.cls == "preempted" and "saved a checkpoint" in info.summary


def test_sigterm_to_the_workers_alone_is_preempted_too():
    assert _cls(SAVED, {"returncode": 1}).cls == "preempted"


def test_killed_after_the_grace_period_says_so():
    info = _cls("", {"returncode": -9, "signal": "SIGTERM", "killed_after_grace": True})
    assert info.cls == "preempted" and "killed after the grace period" in info.summary


def test_a_rank_killed_by_a_signal_is_rank_died_with_its_rank():
    text = (LOGS / "unknown_cpu_sigkill_rank1_ep2.log").read_text()
    info = _cls(text, {"returncode": 1})
    assert info.cls == "rank_died" and info.rank == 1 and "SIGKILL" in info.summary


def test_a_slurm_rank_killed_by_a_signal_is_rank_died_from_sruns_line():
    """A real job on the one-node Slurm cluster (tests/e2e/test_slurm_cluster.py): rank 1 SIGKILLed, srun then
    terminated rank 0 ("task 0: Terminated" comes second)."""
    info = _cls((LOGS / "unknown_slurm_cpu_sigkill_rank1.log").read_text(), {"returncode": 1})
    assert (info.cls, info.kind, info.rank) == ("rank_died", "signal", 1)
    assert info.summary == "rank 1 killed by SIGKILL on vm (srun's first failed task); the job ended"


def test_a_slurm_rank_that_exited_nonzero_is_rank_died_exit():
    info = _cls((LOGS / "unknown_slurm_cpu_rank1_raised.log").read_text(), {"returncode": 1})
    assert (info.cls, info.kind, info.rank) == ("rank_died", "exit", 1)
    assert info.summary.startswith("rank 1 exited with 1 on vm")


def test_a_known_failure_keeps_its_class_and_success_stays_success():
    oom = "[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    assert _cls(oom, {"returncode": 1}).cls == "oom"
    assert _cls(SAVED, {"returncode": 0}) is None


def test_a_job_killed_from_outside_is_killed():
    info = _cls("iteration 15/20\n", {"returncode": -9})
    assert info.cls == "killed" and "SIGKILL" in info.summary

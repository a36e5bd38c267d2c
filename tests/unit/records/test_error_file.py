"""torchrun's structured error file (launcher/records/error_file.py), written by torch itself: a rank under
recipes.lifecycle.recorded (torch elastic's @record) that raises, and real torchrun copying the first failed rank's
file to its own TORCHELASTIC_ERROR_FILE with the exit code."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from launcher.records.error_file import NAME, RANK_ERRORS, read_error_file, with_error_file, without_launcher
from launcher.records.failures import FailureInfo
from launcher.run.slurm import SLURM_RANK_ENV

REPO = Path(__file__).resolve().parents[3]
RANK_SCRIPT = textwrap.dedent("""
    import os, sys
    from recipes.lifecycle import recorded

    def main():
        if os.environ.get("RANK", "0") == os.environ.get("FAILING_RANK", "0"):
            raise ValueError("the data file ends mid-record")
        return 0

    raise SystemExit(recorded(main)())
""")


def _env(tmp_path, **extra):
    return {**os.environ, "PYTHONPATH": str(REPO), "TORCHELASTIC_ERROR_FILE": str(tmp_path / NAME), **extra}


def test_a_rank_that_raises_writes_its_exception(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], env=_env(tmp_path), capture_output=True, text=True)
    assert proc.returncode == 1
    err = read_error_file(tmp_path)
    assert err["message"] == "ValueError: the data file ends mid-record"
    assert any("raise ValueError" in line for line in err["traceback"]) and err["timestamp"]


@pytest.mark.slow
def test_torchrun_copies_the_first_failed_ranks_file_with_its_exit_code(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(script)],
                          env=_env(tmp_path, FAILING_RANK="1", OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    err = read_error_file(tmp_path)
    assert err["message"] == "ValueError: the data file ends mid-record" and err["exitcode"] == 1


def test_the_failure_gets_the_exception_and_an_unknown_one_its_summary(tmp_path):
    (tmp_path / NAME).write_text(json.dumps({"message": {"message": "KeyError: 'hidden_size'", "errorCode": 1,
                                                         "extraInfo": {"py_callstack": "Traceback\n  a\n  b\nKeyError",
                                                                       "timestamp": "1"}}}))
    unknown = with_error_file(FailureInfo(cls="unknown", summary="exit 1"), tmp_path)
    assert unknown.summary == "first failed rank raised KeyError: 'hidden_size'; exit 1"
    assert unknown.evidence[0] == "torchrun error file: KeyError: 'hidden_size' (exit 1)"
    oom = with_error_file(FailureInfo(cls="oom", summary="out of GPU memory"), tmp_path)
    assert oom.summary == "out of GPU memory" and oom.evidence[0].startswith("torchrun error file")
    died = with_error_file(FailureInfo(cls="rank_died", kind="exit", rank=3, summary="rank 3 exited with 1"), tmp_path)
    assert died.summary == ("rank 3 raised KeyError: 'hidden_size' (torchrun's first observed failure); "
                            "the job ended")
    killed = with_error_file(FailureInfo(cls="rank_died", kind="signal", rank=3, summary="killed"), tmp_path)
    assert killed.summary == "killed"
    assert with_error_file(None, tmp_path) is None  # a run that succeeded stays so


def _slurm_rank(tmp_path, script, restart: int, rank: int, failing: int):
    """One Slurm task as command.sh runs it: TORCHELASTIC_ERROR_FILE from the rendered expression, with
    MOE_RANK_ERRORS as sbatch.sh exports it for this run of the job."""
    errors = tmp_path / RANK_ERRORS / str(restart)
    errors.mkdir(parents=True, exist_ok=True)
    expr = SLURM_RANK_ENV["TORCHELASTIC_ERROR_FILE"]
    cmd = f'export TORCHELASTIC_ERROR_FILE="{expr}"; exec {sys.executable} {script}'
    env = {**os.environ, "PYTHONPATH": str(REPO), "MOE_RANK_ERRORS": str(errors), "SLURM_PROCID": str(rank),
           "RANK": str(rank), "FAILING_RANK": str(failing)}
    env.pop("TORCHELASTIC_ERROR_FILE", None)
    return subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True).returncode


def test_under_slurm_each_rank_writes_its_own_file_and_the_first_stands_for_the_job(tmp_path):
    """No torchrun under srun: ranks 2 and then 1 raise, each into rank_errors/<restart>/rank_<N>.json; the record
    takes rank 2's (first by torch's timestamp, then the file's time), from the newest run of the job only."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT.replace('"the data file ends mid-record"', 'f"rank {os.environ[\'RANK\']} broke"'))
    assert _slurm_rank(tmp_path, script, restart=0, rank=0, failing=0) == 1  # an earlier run of the job
    assert _slurm_rank(tmp_path, script, restart=1, rank=0, failing=1) == 0  # rank 0 is fine: no file
    assert _slurm_rank(tmp_path, script, restart=1, rank=2, failing=2) == 1
    assert _slurm_rank(tmp_path, script, restart=1, rank=1, failing=1) == 1
    assert sorted(p.name for p in (tmp_path / RANK_ERRORS / "1").iterdir()) == ["rank_1.json", "rank_2.json"]
    err = read_error_file(tmp_path)
    assert err["message"] == "ValueError: rank 2 broke" and err["rank"] == 2
    failure = with_error_file(FailureInfo(cls="unknown", summary="srun: task 2: Exited with exit code 1"), tmp_path)
    assert failure.summary == ("rank 2 (the first to raise) raised ValueError: rank 2 broke; "
                               "srun: task 2: Exited with exit code 1")
    assert failure.rank == 2 and failure.evidence[0] == ("rank 2's error file (first of 2 that raised): "
                                                         "ValueError: rank 2 broke")


@pytest.mark.parametrize("text", ["", "{", "[]", '{"message": "plain"}', '{"message": {"extraInfo": {}}}'])
def test_no_file_or_not_torchs_format_is_none(tmp_path, text):
    assert read_error_file(tmp_path) is None
    (tmp_path / NAME).write_text(text)
    assert read_error_file(tmp_path) is None
    assert with_error_file(FailureInfo(cls="unknown", summary="exit 1"), tmp_path).summary == "exit 1"


def test_a_run_whose_launcher_was_killed_is_failed_with_the_ranks_exception(tmp_path):
    # measured 2026-12-01: a device call's limit SIGKILLed moe-launch; its rank died of BrokenPipe at its next print
    (tmp_path / NAME).write_text(json.dumps({"message": {"message": "BrokenPipeError: [Errno 32] Broken pipe",
                                                         "errorCode": 1, "extraInfo": {"py_callstack": "x"}}}))
    gone = without_launcher(None, tmp_path, None)
    assert gone.cls == "unknown" and gone.summary == (
        "moe-launch wrote no exit.json (it was killed before the job ended); first failed rank raised "
        "BrokenPipeError: [Errno 32] Broken pipe")
    assert gone.evidence == ["torchrun error file: BrokenPipeError: [Errno 32] Broken pipe (exit 1)"]
    assert without_launcher(None, tmp_path, {"returncode": 0}) is None  # moe-launch saw the end: its word stands
    known = FailureInfo(cls="oom", summary="out of GPU memory")
    assert without_launcher(known, tmp_path, None) is known
    assert without_launcher(None, tmp_path / "elsewhere", None) is None  # no error file: still incomplete

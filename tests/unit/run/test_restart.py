"""launch.max_restarts: which failures a restart may fix (launcher/run/restart.py) and the login rule."""
import json

import pytest

from launcher.config.compose import compose
from launcher.errors import ConfigError
from launcher.plan.probe import MachineProbe
from launcher.plan.resolve import resolve
from launcher.plan.rules.train import check_restarts
from launcher.run.restart import not_restarted, restart_reason


def _record(tmp_path, failure):
    (tmp_path / "record.json").write_text(json.dumps({"status": "failed", "failure": failure}))
    return tmp_path


@pytest.mark.parametrize("failure, why", [
    ({"class": "rank_died", "kind": "signal", "rank": 3}, "rank 3 was killed by a signal"),
    ({"class": "timeout", "kind": "nccl"}, "a nccl timeout"),
    ({"class": "timeout", "kind": None}, "a collective timeout"),
    ({"class": "rank_died", "kind": "exit", "rank": 0}, None),  # it raised: the same code raises again
    ({"class": "oom", "kind": "cuda"}, None),
    ({"class": "nan"}, None),
    ({"class": "bad_config", "kind": "megatron check"}, None),
    ({"class": "interrupted", "kind": "signal"}, None),  # stops asked for from outside are never undone
    ({"class": "preempted", "kind": "signal"}, None),
    ({"class": "killed", "kind": "signal"}, None),
])
def test_what_a_restart_may_fix(tmp_path, failure, why):
    assert restart_reason(_record(tmp_path, failure)) == why


def test_no_record_is_no_restart(tmp_path):
    assert restart_reason(tmp_path) is None and not_restarted(tmp_path) == "no run record"
    assert not_restarted(_record(tmp_path, {"class": "oom", "kind": "cuda"})) == "oom (cuda)"


def _check(*overrides):
    _, cfg = compose(list(overrides))
    check_restarts(cfg, resolve(cfg, MachineProbe()))


def test_the_rule():
    _check("launch.max_restarts=2")
    with pytest.raises(ConfigError, match="launch.max_restarts=-1: must be 0"):
        _check("launch.max_restarts=-1")
    with pytest.raises(ConfigError, match="train.checkpoint.enabled=false"):
        _check("launch.max_restarts=1", "train.checkpoint.enabled=false")
    with pytest.raises(ConfigError, match="train.checkpoint.resume=false"):
        _check("launch.max_restarts=1", "train.checkpoint.resume=false")

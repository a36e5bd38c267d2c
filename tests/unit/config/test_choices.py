"""Schema choices are StrEnums and each executor has its own cluster schema (launcher/config/): a bad value
or a field of another executor fails at compose, with one line naming field, value, rule and fix."""
from __future__ import annotations

import subprocess
import sys

import pytest

from launcher.config.compose import compose
from launcher.errors import ConfigError


@pytest.mark.parametrize("overrides, field, words", [
    (["dispatcher.type=flexx"], "dispatcher.type", "did you mean 'flex'?"),
    (["dispatcher=deepep", "dispatcher.flex_backend=deepepp"], "dispatcher.flex_backend", "did you mean 'deepep'?"),
    (["recompute.modules=[moe_actt]"], "recompute.modules[0]", "did you mean 'moe_act'?"),
    (["train.routing=forced"], "train.routing", "must be one of dropless, forced_balance"),
    (["precision.fp8_recipe=blockwize"], "precision.fp8_recipe", "did you mean 'blockwise'?"),
    (["cluster=container", "cluster.container_runtime=dockr"], "cluster.container_runtime", "did you mean 'docker'?"),
    (["cluster.device=gpu"], "cluster.device", "must be one of auto, cuda, cpu"),
])
def test_a_misspelled_choice_fails_at_compose(overrides, field, words):
    with pytest.raises(ConfigError) as ei:
        compose(overrides)
    assert ei.value.field == field and words in str(ei.value)


@pytest.mark.parametrize("overrides, field, owner", [
    (["cluster.account=x"], "cluster.account", "cluster=slurm"),
    (["+cluster.account=x"], "cluster.account", "cluster=slurm"),
    (["cluster.follow=true"], "cluster.follow", "cluster=slurm"),
    (["cluster.container_runtime=podman"], "cluster.container_runtime", "cluster=container"),
    (["cluster=container", "cluster.partition=batch"], "cluster.partition", "cluster=slurm"),
    (["cluster.container_image=img"], "cluster.container_image", "cluster=slurm or cluster=container"),
])
def test_a_field_of_another_executor_fails_at_compose(overrides, field, owner):
    with pytest.raises(ConfigError) as ei:
        compose(overrides)
    assert ei.value.field == field and f"belongs to {owner}" in ei.value.fix


def test_each_executor_takes_its_own_fields():
    assert compose(["cluster=slurm", "cluster.account=a"])[1].cluster.account == "a"
    assert compose(["cluster=container", "cluster.container_runtime=podman"])[1].cluster.container_runtime == "podman"


def test_the_executor_comes_with_its_group():
    with pytest.raises(ConfigError, match="use cluster=slurm instead") as ei:
        compose(["cluster.executor=slurm"])
    assert str(ei.value).startswith("cluster.executor='slurm': ")


def test_moe_launch_says_it_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "launcher", "cluster=local", "cluster.account=x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "moe-launch: error: cluster.account='account': is not a field of the schema. "
        "Fix: cluster.account belongs to cluster=slurm: choose that executor"]

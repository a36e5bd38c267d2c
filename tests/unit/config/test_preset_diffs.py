"""Presets are diffs: each picks its layout from conf/parallel and keeps only what differs from it; a
forced-balance twin includes its dropless sibling and sets only train.routing (plus what else it changes,
stated in OWN_ADDITIONS). The composed result is what tests/unit/config/test_presets.py checks against the goldens."""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import yaml

from conftest import make_cfg
from launcher.config.compose import CONF_DIR, group_options
from launcher.tools.presets import preset_config, preset_names, preset_text
from launcher.config.schema import ParallelConfig

PRESETS = preset_names()
PARALLEL_DEFAULTS = dataclasses.asdict(ParallelConfig())
# twin -> what it adds to its sibling besides train.routing (the defaults entries it lists after the sibling)
OWN_ADDITIONS = {
    "qwen3_235b_a22b_256xh100_tp2pp8vpp4ep32_deepep_a2a_overlap_cudagraph_bf16_forced_balance":
        ["with/cuda_graph_moe_router"],
}


def _body(name: str) -> dict[str, Any]:
    return yaml.safe_load(preset_text(name))


def _entries(name: str) -> list[str]:
    """The defaults list as 'override /group: option' or '/preset/NAME' strings."""
    return [e if isinstance(e, str) else "; ".join(f"{k}: {v}" for k, v in e.items())
            for e in _body(name).get("defaults", [])]


def _sibling(name: str) -> str | None:
    found = [e.removeprefix("/preset/") for e in _entries(name) if e.startswith("/preset/")]
    assert len(found) <= 1, f"{name} includes more than one preset"
    return found[0] if found else None


def _parallel_option(name: str) -> str:
    picks = [e.removeprefix("override /parallel: ") for e in _entries(name) if e.startswith("override /parallel:")]
    sibling = _sibling(name)
    assert len(picks) + (sibling is not None) == 1, f"{name}: pick one conf/parallel option, or include a preset"
    return picks[0] if picks else _parallel_option(sibling)


def _option(option: str) -> dict[str, Any]:
    return {**PARALLEL_DEFAULTS, **yaml.safe_load((CONF_DIR / "parallel" / f"{option}.yaml").read_text())}


@pytest.mark.parametrize("name", PRESETS)
def test_preset_picks_a_parallel_option_and_keeps_only_what_differs(name):
    option = _parallel_option(name)
    assert option in group_options("parallel")
    own = _body(name).get("parallel") or {}
    repeated = {k: v for k, v in own.items() if _option(option).get(k) == v}
    assert not repeated, f"{name} repeats what parallel={option} already sets: {repeated}"
    composed = dataclasses.asdict(preset_config(name).parallel)
    assert {k: v for k, v in composed.items() if k not in own} == \
        {k: v for k, v in _option(option).items() if k not in own}


def _without(name: str, *paths: str) -> dict[str, Any]:
    d = dataclasses.asdict(preset_config(name))
    for path in paths:
        group, key = path.split(".")
        d[group].pop(key)
    return d


@pytest.mark.parametrize("name", [n for n in PRESETS if _sibling(n)])
def test_a_twin_sets_only_routing_over_its_sibling(name):
    sibling = _sibling(name)
    body = {k: v for k, v in _body(name).items() if k != "defaults"}
    assert body == {"train": {"routing": "forced_balance"}}
    assert preset_config(sibling).train.routing == "dropless" and _sibling(sibling) is None
    assert _entries(name) == [f"/preset/{sibling}", *OWN_ADDITIONS.get(name, [])]
    if name not in OWN_ADDITIONS:  # the same config but for the routing (and the name)
        assert _without(name, "train.routing", "launch.name") == _without(sibling, "train.routing", "launch.name")


def test_every_forced_balance_preset_with_a_dropless_equal_includes_it():
    """A pair that composes to the same config but for train.routing is written as a diff, never twice."""
    routing = {n: preset_config(n).train.routing for n in PRESETS}
    pairs = {f: d for f in PRESETS for d in PRESETS if (routing[f], routing[d]) == ("forced_balance", "dropless")
             and _without(f, "train.routing", "launch.name") == _without(d, "train.routing", "launch.name")}
    assert pairs and {f: _sibling(f) for f in pairs} == pairs


def test_the_command_lines_parallel_option_beats_the_presets():
    cfg = make_cfg(["preset=qwen3_235b_a22b_256xh100_tp2pp8vpp4ep32_deepep_bf16", "parallel=tp2_pp4_ep8"])
    p = cfg.parallel
    assert (p.tp, p.pp, p.vpp, p.pipeline_layout, p.ep) == (2, 4, None, None, 8) and cfg.cluster.nodes == 32

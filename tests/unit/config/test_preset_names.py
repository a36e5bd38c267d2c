"""Preset names are built from what the preset composes to, and runs are named after the preset.

The scheme, read off the 27 names (users type them, so none is renamed; the ones it cannot express
are listed in EXCEPTIONS with the reason):

  full     <model>_<gpus>x<hardware>[_seq<N>k]_<layout>[_fsdp]_<dispatcher>[_a2a_overlap][_cudagraph]
           _<precision>[_forced_balance | _dropless]
  proxy    <model>[_<N>l]_<gpus>x<hardware>[_<layout>][_bench]_<precision>

- proxy: a model cut to fewer layers than its family (a benchmark shape, `_<N>l ... _bench`) or a test
  model with no published size (launcher/plan/params.py PUBLISHED); these name only the shape.
- seq: only long context (above 4096 tokens), in units of 1024.
- layout: tp, cp, pp, vpp, ep, etp degrees above 1, glued (tp2pp8vpp4ep32); in a long-context name cp is
  always written, cp1 included, because cp is what varies along that series.
- precision: fp8_blockwise is written fp8 (ModelZoo's PR=fp8 is blockwise); others by option name.
- a2a_overlap: the preset pins the EP all-to-all overlap on (where it leaves it to the auto rule of
  launcher/plan/tuned.py, the name does not promise it).
- routing: forced_balance always says so; dropless says so only where a forced-balance twin exists
  (a preset composing to the same config but for train.routing), so both halves of the pair are named.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import pytest

from conftest import make_cfg
from launcher.plan.params import PUBLISHED
from launcher.tools.presets import family_config, preset_config, preset_names
from launcher.config.schema import ParallelConfig, RunConfig

PRESETS = preset_names()
LONG_CONTEXT = 4096  # the pretrain sequence; above it the name carries seq<N>k
PRECISION = {"fp8_blockwise": "fp8"}

# name -> (the name the scheme builds, why the published name differs); renaming is not allowed
EXCEPTIONS: dict[str, tuple[str, str]] = {
    "deepseek_v3_1024xh100_tp2pp8vpp4ep64_deepep_fp8_a2a_overlap": (
        "deepseek_v3_1024xh100_tp2pp8vpp4ep64_deepep_a2a_overlap_fp8",
        "the add-on is written after the precision (elsewhere before it)"),
    "kimi_k2_256xgb300_pp4vpp4ep64_hybridep_mxfp8": (
        "kimi_k2_256xgb300_pp4vpp4ep64_hybridep_cudagraph_mxfp8_forced_balance",
        "the name leaves out its CUDA graphs and its forced balanced routing (the published recipe runs it "
        "that way and there is no dropless twin)"),
    "qwen3_30b_a3b_8xb200_ep8_mbs4_alltoall_bf16": (
        "qwen3_30b_a3b_8xb200_ep8_alltoall_bf16_forced_balance",
        "the name carries the micro batch (no other name does) and leaves out its forced balanced routing"),
    "qwen3_next_80b_a3b_128xh100_tp1pp4vpp3ep32_deepep_bf16": (
        "qwen3_next_80b_a3b_128xh100_pp4vpp3ep32_deepep_bf16",
        "the name writes tp1, which the other TP1 names (deepseek_v2, kimi_k2, mixtral_8x7b) leave out"),
}


def _is_proxy(cfg: RunConfig) -> bool:
    return cfg.model.name not in PUBLISHED or _cut_layers(cfg) is not None


def _cut_layers(cfg: RunConfig) -> Optional[int]:
    """The layer count when the preset cuts the family's model, else None."""
    layers = cfg.model.num_layers
    return layers if layers != family_config(cfg.model.name).model.num_layers else None


def _layout(p: ParallelConfig, long_context: bool) -> str:
    degrees = (("tp", p.tp), ("cp", p.cp), ("pp", p.pp), ("vpp", p.vpp), ("ep", p.ep), ("etp", p.etp))
    return "".join(f"{k}{v}" for k, v in degrees if v is not None and (v > 1 or (k == "cp" and long_context)))


def _without_routing(cfg: RunConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["train"].pop("routing")
    d["launch"].pop("name")
    return d


def _has_forced_twin(cfg: RunConfig) -> bool:
    mine = _without_routing(cfg)
    return any(other.train.routing == "forced_balance" and _without_routing(other) == mine
               for other in map(preset_config, PRESETS))


def _routing(cfg: RunConfig) -> list[str]:
    if cfg.train.routing == "forced_balance":
        return ["forced_balance"]
    return ["dropless"] if _has_forced_twin(cfg) else []


def _gpus(cfg: RunConfig) -> str:
    return f"{cfg.cluster.nodes * cfg.cluster.gpus_per_node}x{cfg.hardware.name}"


def _proxy_name(cfg: RunConfig) -> str:
    cut = _cut_layers(cfg)
    parts = [cfg.model.name, f"{cut}l" if cut else "", _gpus(cfg), _layout(cfg.parallel, False),
             "bench" if cut else "", PRECISION.get(cfg.precision.name, cfg.precision.name)]
    return "_".join(p for p in parts if p)


def _full_name(cfg: RunConfig) -> str:
    long_context = cfg.train.seq_length > LONG_CONTEXT
    d = cfg.dispatcher
    parts = [cfg.model.name, _gpus(cfg), f"seq{cfg.train.seq_length // 1024}k" if long_context else "",
             _layout(cfg.parallel, long_context), "fsdp" if cfg.parallel.use_megatron_fsdp else "",
             d.flex_backend or d.type, "a2a_overlap" if d.overlap_moe_expert_parallel_comm is True else "",
             "cudagraph" if cfg.train.cuda_graph_impl else "",
             PRECISION.get(cfg.precision.name, cfg.precision.name), *_routing(cfg)]
    return "_".join(p for p in parts if p)


def built_name(cfg: RunConfig) -> str:
    return _proxy_name(cfg) if _is_proxy(cfg) else _full_name(cfg)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_file_name_is_the_name_built_from_its_config(name):
    built = built_name(preset_config(name))
    if name in EXCEPTIONS:
        expected, why = EXCEPTIONS[name]
        assert built == expected, f"the scheme now builds {built!r}: update EXCEPTIONS or drop {name} from it"
        assert built != name, f"{name} fits the scheme now: drop it from EXCEPTIONS ({why})"
    else:
        assert built == name


def test_exceptions_are_presets():
    assert set(EXCEPTIONS) <= set(PRESETS)


# ------------------------------------------------------------ launch.name follows the chosen preset


def test_runs_are_named_after_the_chosen_preset():
    for name in PRESETS:
        assert preset_config(name).launch.name == name  # a twin is named after itself, not its sibling


def test_without_a_preset_the_name_stays_unset():
    assert make_cfg([]).launch.name is None  # runs/<model>-<timestamp>, job moe-<model>
    assert make_cfg(["model=qwen3_30b_a3b"]).launch.name is None


@pytest.mark.parametrize("order", ["name_first", "name_last"])
def test_a_given_launch_name_beats_the_preset(order):
    ov = ["preset=tiny_deepseek_1xh100_bf16", "launch.name=mine"]
    assert make_cfg(ov if order == "name_last" else ov[::-1]).launch.name == "mine"

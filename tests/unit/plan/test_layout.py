"""Balanced pipeline layouts (derive.balanced_layout) and the layout parser (layout.parse_layout)."""
from __future__ import annotations

import pytest

from conftest import PROBE, make_cfg
from launcher.plan.resolve import balanced_layout, resolve
from launcher.errors import ConfigError
from launcher.plan.layout import parse_layout

from conftest import plan_for


def units(stage: str) -> int:
    """Load of a stage: decoder layers, MTP layers, embedding and loss count one each."""
    return stage.count("t") + stage.count("m") + stage.count("E") + stage.count("L")


# (num_layers, pp, vpp, mtp)
SHAPES = [
    (94, 8, 4, 0), (94, 8, 1, 0), (94, 4, 2, 0), (48, 4, 2, 0), (48, 8, 1, 0), (32, 4, 1, 0),
    (61, 16, 1, 0), (61, 8, 2, 1), (5, 2, 1, 0), (7, 2, 1, 1), (4, 4, 1, 0), (2, 4, 1, 0),
    (10, 4, 1, 1), (4, 1, 1, 0), (4, 1, 1, 2), (1, 1, 1, 0), (30, 3, 2, 0), (3, 1, 2, 0),
]


@pytest.mark.parametrize("layers,pp,vpp,mtp", SHAPES)
def test_balanced_layout_properties(layers, pp, vpp, mtp):
    text = balanced_layout(layers, pp, vpp, mtp)
    stages = parse_layout(text)
    assert len(stages) == pp * vpp
    flat = "".join(stages)
    assert flat.count("t") == layers
    assert flat.count("E") == 1 and stages[0].startswith("E")
    assert flat.count("L") == 1 and stages[-1].endswith("L")
    assert flat.count("m") == mtp and stages[-1] == stages[-1].rstrip("L").rstrip("m") + "m" * mtp + "L"
    assert set(flat) <= set("EtmL")
    sizes = [units(s) for s in stages]
    assert max(sizes) - min(sizes) <= 1, (text, sizes)
    assert sum(sizes) == layers + mtp + 2


def test_published_qwen3_235b_layout():
    assert balanced_layout(94, 8, 4) == "Ett|(ttt|)*30ttL"
    assert parse_layout("Ett|(ttt|)*30ttL") == ["Ett"] + ["ttt"] * 30 + ["ttL"]


@pytest.mark.parametrize("layers,pp,vpp,mtp,text", [
    (5, 2, 1, 0, "Ettt|ttL"),          # 7 units over 2 stages: the extra one goes to the first
    (4, 4, 1, 0, "E|(tt|)*2L"),         # middle stages take the remainder before the ends
    (2, 4, 1, 0, "E|(t|)*2L"),
    (4, 1, 1, 0, "EttttL"),
    (4, 1, 1, 1, "EttttmL"),
    (10, 4, 1, 1, "Ett|tttt|ttt|tmL"),   # MTP rides on the last stage and counts as a unit
])
def test_balanced_layout_text(layers, pp, vpp, mtp, text):
    assert balanced_layout(layers, pp, vpp, mtp) == text


def test_too_few_layers_for_the_stages():
    with pytest.raises(ConfigError, match=r"1 layers cannot fill 4 pipeline stages") as ei:
        balanced_layout(1, 4, 1)
    assert ei.value.field == "parallel.pipeline_layout"


@pytest.mark.parametrize("text,stages", [
    ("Ett|(ttt|)*2tL", ["Ett", "ttt", "ttt", "tL"]),
    ("Et*3|t*2L", ["Ettt", "ttL"]),
    ("Et,t|t,tL", ["Ett", "ttL"]),
    ("Et|(tt|)*0tL", ["Et", "tL"]),
    ("EttmL", ["EttmL"]),
])
def test_parse_layout(text, stages):
    assert parse_layout(text) == stages


def test_parse_layout_rejects_unknown_symbols():
    with pytest.raises(ConfigError, match=r"unknown symbols \['d', 'x'\]") as ei:
        parse_layout("Etx|tdL")
    assert ei.value.field == "parallel.pipeline_layout"


def test_resolve_uses_balanced_layout_only_when_needed():
    even = resolve(make_cfg(["model=qwen3_30b_a3b", "parallel=tp2_pp4_ep8", "parallel.vpp=2",
                             "parallel.pipeline_layout=auto", "cluster.nodes=8", "cluster.gpus_per_node=8"]), PROBE)
    assert even.pipeline_layout is None  # 48 layers split evenly over 8 stages: Megatron's own split
    uneven = resolve(make_cfg(["model=qwen3_235b_a22b", "parallel=tp2_pp8_vpp4_ep32", "cluster.nodes=32",
                               "cluster.gpus_per_node=8"]), PROBE)
    assert uneven.pipeline_layout == "Ett|(ttt|)*30ttL"
    assert any("pipeline_layout=auto -> 'Ett|(ttt|)*30ttL'" in n for n in uneven.notes)
    mtp = resolve(make_cfg(["parallel.pp=2", "parallel.pipeline_layout=auto", "model.mtp_num_layers=1",
                            "cluster.nproc_cpu=2"]), PROBE)
    assert mtp.pipeline_layout == balanced_layout(4, 2, 1, 1) == "Ettt|tmL"
    explicit = resolve(make_cfg(["parallel.pp=2", "parallel.pipeline_layout=Et|tttL", "cluster.nproc_cpu=2"]), PROBE)
    assert explicit.pipeline_layout == "Et|tttL"


def _megatron_stages(text: str) -> list[str]:
    from megatron.core.transformer.pipeline_parallel_layer_layout import PipelineParallelLayerLayout

    sym = {"embedding": "E", "decoder": "t", "mtp": "m", "loss": "L"}
    return ["".join(sym[x.name] for x in stage) for stage in PipelineParallelLayerLayout.parse_str_to_list(text)]


@pytest.mark.parametrize("layers,pp,vpp,mtp", SHAPES)
def test_megatron_reads_balanced_layouts_the_same_way(layers, pp, vpp, mtp):
    text = balanced_layout(layers, pp, vpp, mtp)
    assert _megatron_stages(text) == parse_layout(text)


@pytest.mark.parametrize("text", ["Ett | ttL", "E|((t|)*2)*2L"])
def test_layout_megatron_cannot_parse_is_stopped_by_our_rule(text):
    with pytest.raises(ConfigError) as ei:
        plan_for(["parallel.pp=2", "cluster.nproc_cpu=2", f"parallel.pipeline_layout='{text}'"])
    assert ei.value.field == "parallel.pipeline_layout"

"""Hydra composition: every option composes into the typed schema; bad overrides are one-line ConfigErrors."""
from __future__ import annotations

import dataclasses

from enum import StrEnum

import pytest
from omegaconf import OmegaConf

from conftest import make_cfg
from launcher.config.compose import CONF_DIR, compose, group_options, groups
from launcher.errors import ConfigError
from launcher.config.schema import ModelConfig, RunConfig

GROUPS = ["cluster", "data", "dispatcher", "distill", "hardware", "model", "parallel", "precision", "quant",
          "recompute", "train"]

def test_group_listing_matches_conf_tree():
    assert groups() == sorted([*GROUPS, "preset"])  # presets are global recipes: tests/unit/config/test_presets.py
    assert group_options("model") == ["deepseek_v2", "deepseek_v2_lite", "deepseek_v3", "kimi_k2", "mixtral_8x22b",
                                      "mixtral_8x7b", "qwen2_57b_a14b", "qwen3_235b_a22b", "qwen3_30b_a3b",
                                      "qwen3_next_80b_a3b", "tiny_deepseek", "tiny_moe"]


def test_defaults_compose_to_typed_run_config():
    composed, cfg = compose([])
    assert isinstance(cfg, RunConfig)
    assert cfg.model.name == "tiny_moe"
    assert (cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.ep) == (1, 1, 1)
    assert cfg.dispatcher.type == "alltoall"
    assert cfg.recompute.granularity == "none"
    assert cfg.precision.params_dtype == "bf16"
    assert cfg.data.kind == "mock"
    assert (cfg.train.seq_length, cfg.train.micro_batch_size, cfg.train.global_batch_size) == (256, 2, 8)
    assert cfg.cluster.executor == "local" and cfg.cluster.gpus_per_node is None
    # the DictConfig stays in struct mode: unknown keys fail later merges
    assert OmegaConf.is_struct(composed)


@pytest.mark.parametrize("option", group_options("model"))
def test_every_model_composes_with_defaults(option):
    cfg = make_cfg([f"model={option}"])
    assert isinstance(cfg.model, ModelConfig)
    assert cfg.model.name == option, "the model yaml's name must match its file name (it names the run)"
    for f in dataclasses.fields(ModelConfig):
        assert getattr(cfg.model, f.name) != "???", f"model.{f.name} left MISSING in conf/model/{option}.yaml"
    m = cfg.model
    assert m.num_attention_heads % (m.num_query_groups or m.num_attention_heads) == 0
    assert 1 <= m.moe_router_topk <= m.num_experts


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_group_option_composes(group, option):
    composed, cfg = compose([f"{group}={option}"])
    assert isinstance(cfg, RunConfig)
    # the option's yaml keys all landed in the typed node
    raw = OmegaConf.load(CONF_DIR / group / f"{option}.yaml")
    node = getattr(cfg, group)
    for key, value in OmegaConf.to_container(raw).items():
        if key != "defaults":  # Hydra's defaults list (the cluster options pick their executor's schema)
            assert getattr(node, key) == value, f"{group}/{option}.yaml: {key}"


@pytest.mark.parametrize("override,path,value", [
    ("model.num_layers=8", "model.num_layers", 8),
    ("model.moe_router_score_function=sigmoid", "model.moe_router_score_function", "sigmoid"),
    ("parallel.sequence_parallel=true", "parallel.sequence_parallel", True),
    ("parallel.pipeline_layout=Et|ttL", "parallel.pipeline_layout", "Et|ttL"),
    ("train.lr=1e-4", "train.lr", 1e-4),
    ("recompute.modules=[moe,layernorm]", "recompute.modules", ["moe", "layernorm"]),
    ("data.paths=[/data/a,/data/b]", "data.paths", ["/data/a", "/data/b"]),
    ("cluster.gpus_per_node=4", "cluster.gpus_per_node", 4),
    ("launch.dry_run=true", "launch.dry_run", True),
    ("megatron.raw=[--recompute-granularity,selective]", "megatron.raw", ["--recompute-granularity", "selective"]),
    ("+megatron.extra.overlap_p2p_comm=false", "megatron.extra", {"overlap_p2p_comm": False}),
    ("+cluster.env.NCCL_DEBUG=INFO", "cluster.env", {"NCCL_DEBUG": "INFO"}),
])
def test_any_field_can_be_overridden(override, path, value):
    cfg = make_cfg([override])
    node = cfg
    for part in path.split("."):
        node = getattr(node, part)
    assert node == value
    # typed: the schema's type, a choice as its StrEnum (launcher/config/choices.py)
    assert type(node) is type(value) or isinstance(node, (list, dict, StrEnum))


def test_override_after_group_choice_wins():
    cfg = make_cfg(["model=qwen3_30b_a3b", "model.num_layers=8"])
    assert (cfg.model.name, cfg.model.num_layers, cfg.model.num_experts) == ("qwen3_30b_a3b", 8, 128)


def _one_line(err: ConfigError) -> str:
    text = str(err)
    assert "\n" not in text
    assert "Fix:" in text
    return text


def test_misspelled_key_raises_config_error():
    with pytest.raises(ConfigError) as ei:
        compose(["model.num_expert=4"])
    _one_line(ei.value)
    assert "num_expert" in str(ei.value)


def test_misspelled_key_suggests_the_field():
    with pytest.raises(ConfigError) as ei:
        compose(["model.num_expert=4"])
    text = _one_line(ei.value)
    assert "did you mean" in text and "num_experts" in text
    assert ei.value.field == "model.num_expert"


def test_unknown_group_option_names_the_closest():
    with pytest.raises(ConfigError, match=r"did you mean model=qwen3_30b_a3b\?") as ei:
        compose(["model=qwen3_30b"])
    text = _one_line(ei.value)
    assert ei.value.field == "model" and ei.value.value == "qwen3_30b"
    assert "no such option in conf/model/" in text
    assert "options: " + ", ".join(group_options("model")) in text


def test_unknown_option_without_near_match_lists_options():
    with pytest.raises(ConfigError, match=r"options: allgather, alltoall, deepep, hybridep, ncclep") as ei:
        compose(["dispatcher=zzz"])
    assert "did you mean" not in str(ei.value)


@pytest.mark.parametrize("override", ["train.micro_batch_size=abc", "parallel.tp=1.5", "cluster.nodes=abc",
                                      "model.num_layers=null"])
def test_wrong_type_raises_config_error(override):
    with pytest.raises(ConfigError) as ei:
        compose([override])
    text = _one_line(ei.value)
    assert override.split("=")[0] in text


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError) as ei:
        compose(["train.micro_batch_size=abc"])
    assert ei.value.field == "train.micro_batch_size"
    assert "abc" in str(ei.value)


def test_override_syntax_error_is_one_line():
    with pytest.raises(ConfigError) as ei:
        compose(["model.num_layers"])
    _one_line(ei.value)


@pytest.mark.parametrize("override,fix", [
    ("cluster.sbatch_extra=[--gres=gpu:8]", "quote a value"),  # unquoted '=' inside a list
    ("train.lr=[1,2", "quote a value"),
    ("model.num_layers", "key=value"),
])
def test_an_override_hydra_cannot_parse_is_named_whole(override, fix):
    """Hydra's grammar error quotes a fragment ('[--gres='); the one line names the override and how to write it."""
    with pytest.raises(ConfigError) as ei:
        compose(["model=tiny_moe", override])
    assert (ei.value.field, ei.value.value) == ("override", override) and fix in ei.value.fix
    _one_line(ei.value)


def test_an_unknown_option_is_named_as_one():
    """An option a tool does not take reaches the overrides (moe-doctor --out X): Hydra's lexer named nothing."""
    with pytest.raises(ConfigError) as ei:
        compose(["model=tiny_moe", "--out", "/tmp/x"])
    assert (ei.value.field, ei.value.value) == ("option", "--out") and "neither an option" in str(ei.value)
    _one_line(ei.value)


@pytest.mark.parametrize("override,field,near", [
    ("+model.num_expert=4", "model.num_expert", "did you mean model.num_experts?"),
    ("+parallel.sequence_paralel=true", "parallel.sequence_paralel", "did you mean parallel.sequence_parallel?"),
    ("+telemetry.on=true", "telemetry", "valid keys: model, parallel"),
])
def test_appended_unknown_key_is_rejected(override, field, near):
    """Hydra's '+' append bypasses the schema check; compose must still refuse keys the schema lacks."""
    with pytest.raises(ConfigError) as ei:
        compose([override])
    assert ei.value.field == field
    assert near in _one_line(ei.value)


@pytest.mark.parametrize("override,group,key,value", [
    ("megatron.extra={moe_permute_fusion: true}", "megatron", "extra", {"moe_permute_fusion": True}),
    ("cluster.env={NCCL_DEBUG: INFO}", "cluster", "env", {"NCCL_DEBUG": "INFO"}),
])
def test_documented_dict_override_syntax(override, group, key, value):
    """The free-form dict fields compose from `key={k: v}` (what cli.py --help documents)."""
    cfg = make_cfg([override])
    assert getattr(getattr(cfg, group), key) == value


def test_the_escape_hatch_examples_of_help_plan():
    """moe-launch --help's escape-hatch examples once named flags the schema sets, which the plan refuses."""
    import re

    from conftest import PROBE
    from launcher.cli import _help
    from launcher.plan.plan import build_plan

    examples = re.findall(r"'(megatron\.(?:extra|raw)=[^']+)'", _help())
    assert len(examples) == 2
    for example in examples:
        build_plan(make_cfg([example]), PROBE)  # a refusal raises ConfigError

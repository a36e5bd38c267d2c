"""The schema -> Megatron flag table, and the megatron.extra / megatron.raw escape hatch."""
from __future__ import annotations

import dataclasses

import pytest

from conftest import PROBE, make_cfg, plan_for
from launcher.plan.resolve import resolve
from launcher.errors import ConfigError
from launcher.plan.megatron.table import DERIVED, FALSE, LAUNCHER_ONLY, LIST, SPECIAL, TABLE, TRUE, VALUE, schema_fields
from launcher.plan.megatron.parser import check_raw, extra_to_argv, parser
from launcher.plan.megatron.validator import megatron_validate
from launcher.plan.plan import megatron_argv, run_env
from launcher.config.schema import ClusterConfig, ModelConfig, RunConfig


def uncovered(fields: list[str]) -> list[str]:
    """Schema leaves with no row: not in TABLE, SPECIAL, DERIVED, nor under a LAUNCHER_ONLY key."""
    covered = {path for path, _, _ in TABLE} | set(SPECIAL) | set(DERIVED)
    return [f for f in fields
            if f not in covered and not any(f == k or f.startswith(k + ".") for k in LAUNCHER_ONLY)]


def options():
    return parser()._option_string_actions  # noqa: SLF001


# ---------------------------------------------------------------- coverage of the schema


def test_every_schema_field_has_a_row():
    fields = schema_fields()
    assert len(fields) > 100
    assert "model.num_experts" in fields and "cluster.env" in fields and "megatron.extra" in fields
    assert uncovered(fields) == []


def test_rows_name_real_schema_fields():
    fields = set(schema_fields())
    stale = [p for p in [p for p, _, _ in TABLE] + list(SPECIAL) + list(DERIVED) if p not in fields]
    assert stale == []
    groups = {f.split(".")[0] for f in fields}
    for key in LAUNCHER_ONLY:
        assert key in fields or key in groups, key


def test_coverage_check_flags_a_new_field():
    """A field added to the schema without a row must fail test_every_schema_field_has_a_row."""
    NewModel = dataclasses.make_dataclass(
        "NewModel", [("moe_new_knob", int, dataclasses.field(default=0))], bases=(ModelConfig,))
    NewCluster = dataclasses.make_dataclass(
        "NewCluster", [("partition", str, dataclasses.field(default="batch"))], bases=(ClusterConfig,))
    Telemetry = dataclasses.make_dataclass("Telemetry", [("enabled", bool, dataclasses.field(default=False))])
    NewRun = dataclasses.make_dataclass(
        "NewRun",
        [("model", NewModel, dataclasses.field(default_factory=NewModel)),
         ("cluster", NewCluster, dataclasses.field(default_factory=NewCluster)),
         ("telemetry", Telemetry, dataclasses.field(default_factory=Telemetry))],
        bases=(RunConfig,))
    fields = schema_fields(NewRun)
    assert {"model.moe_new_knob", "cluster.partition", "telemetry.enabled"} <= set(fields)
    # cluster.* is launcher-only as a whole group; the other two need rows
    assert uncovered(fields) == ["model.moe_new_knob", "telemetry.enabled"]
    # a LAUNCHER_ONLY key covers its own subtree only, not look-alike names
    assert uncovered(["model.name", "model.name_suffix", "clusterx.a"]) == ["model.name_suffix", "clusterx.a"]


# ---------------------------------------------------------------- the table against Megatron's parser


def test_every_table_flag_is_a_megatron_option():
    missing = [flag for _, flag, _ in TABLE if flag not in options()]
    assert missing == []


def test_no_two_rows_share_a_megatron_dest():
    dests = [options()[flag].dest for _, flag, _ in TABLE]
    dup = sorted({d for d in dests if dests.count(d) > 1})
    assert dup == []
    assert len({path for path, _, _ in TABLE}) == len(TABLE)


def test_row_kind_matches_the_megatron_action():
    for path, flag, kind in TABLE:
        action = options()[flag]
        if kind == TRUE:
            assert action.nargs == 0 and action.const is True, f"{path}: {flag} does not set its dest true"
        elif kind == FALSE:
            assert action.nargs == 0 and action.const is False, f"{path}: {flag} does not set its dest false"
        elif kind == LIST:
            assert action.nargs in ("+", "*"), path
        else:
            assert kind == VALUE and action.nargs != 0, path


# Rows whose schema field name is not Megatron's dest (schema.py: "field names follow Megatron's dest
# names wherever a field maps to one Megatron flag"); everything else must match, so a row pointing at
# the wrong flag (say model.moe_router_topk -> --moe-router-topk-scaling-factor) fails here.
RENAMED = {
    "model.norm_epsilon": "layernorm_epsilon",
    "precision.fp8_format": "fp8",
    "parallel.tp": "tensor_model_parallel_size",
    "parallel.pp": "pipeline_model_parallel_size",
    "parallel.ep": "expert_model_parallel_size",
    "parallel.etp": "expert_tensor_parallel_size",
    "parallel.cp": "context_parallel_size",
    "dispatcher.type": "moe_token_dispatcher_type",
    "dispatcher.flex_backend": "moe_flex_dispatcher_backend",
    "dispatcher.flex_num_sms": "moe_flex_dispatcher_num_sms",
    "train.checkpoint.init_from": "pretrained_checkpoint",
}


def test_row_flag_belongs_to_its_field():
    for path, flag, _ in TABLE:
        dest, leaf = options()[flag].dest, path.split(".")[-1]
        if path in RENAMED:
            assert dest == RENAMED[path], path
        else:
            assert dest == leaf or dest.endswith("_" + leaf), f"{path} -> {flag} (dest {dest})"


# ---------------------------------------------------------------- megatron.extra / megatron.raw


@pytest.mark.parametrize("extra,argv", [
    ({"overlap_p2p_comm": False}, ["--no-overlap-p2p-communication"]),      # false for a default-true dest
    ({"overlap_p2p_comm": True}, []),                                        # Megatron's default: nothing
    ({"moe_permute_fusion": True}, ["--moe-permute-fusion"]),                # dest name, bare flag
    ({"moe_permute_fusion": False}, []),
    ({"apply_rope_fusion": False}, ["--no-rope-fusion"]),                    # dest whose flag has another name
    ({"--attention-softmax-in-fp32": True}, ["--attention-softmax-in-fp32"]),  # flag name, bool
    ({"--lr-warmup-init": 1e-05}, ["--lr-warmup-init", "1e-05"]),           # flag name, value
    ({"moe_input_jitter_eps": 0.01}, ["--moe-input-jitter-eps", "0.01"]),   # dest name, value
    ({"cuda_graph_impl": "transformer_engine"}, ["--cuda-graph-impl", "transformer_engine"]),
    ({"profile_ranks": [0, 3]}, ["--profile-ranks", "0", "3"]),             # list -> nargs values
    ({"moe_z_loss_coeff": None}, []),                                        # null -> omitted
])
def test_extra_to_argv(extra, argv):
    assert extra_to_argv(extra) == argv


def test_extra_renders_after_the_table_and_megatron_accepts_it():
    cfg = make_cfg([])
    cfg.megatron.extra = {"overlap_p2p_comm": False, "--attention-softmax-in-fp32": True,
                          "moe_input_jitter_eps": 0.01}
    cfg.megatron.raw = ["--lr-warmup-init", "0.0"]
    res = resolve(cfg, PROBE)
    argv = megatron_argv(cfg, res)
    assert argv[-6:] == ["--no-overlap-p2p-communication", "--attention-softmax-in-fp32",
                         "--moe-input-jitter-eps", "0.01", "--lr-warmup-init", "0.0"]
    args_before_extra = argv[:-6]
    assert "--no-overlap-p2p-communication" not in args_before_extra
    facts = megatron_validate(argv, res.world_size, run_env(cfg, res))
    assert facts["data_parallel_size"] == 1


def test_extra_from_the_command_line_reaches_the_plan():
    plan = plan_for(["+megatron.extra.overlap_p2p_comm=false", "megatron.raw=[--lr-warmup-init,0.0]"])
    assert plan.argv[-3:] == ["--no-overlap-p2p-communication", "--lr-warmup-init", "0.0"]
    assert plan.megatron["data_parallel_size"] == 1  # Megatron's parser and validator took the argv


@pytest.mark.parametrize("extra,field,near", [
    # the closest Megatron name is owned by a schema field: the field is suggested (extra may not set it)
    ({"moe_router_top_k": 3}, "megatron.extra.moe_router_top_k", "did you mean model.moe_router_topk?"),
    ({"--moe-router-top-k": 3}, "megatron.extra[--moe-router-top-k]", "did you mean model.moe_router_topk?"),
    ({"--no-overlap-p2p-comm": True}, "megatron.extra[--no-overlap-p2p-comm]",
     "did you mean --no-overlap-p2p-communication?"),
])
def test_unknown_extra_key_names_the_closest(extra, field, near):
    with pytest.raises(ConfigError) as ei:
        extra_to_argv(extra)
    assert ei.value.field == field
    assert near in str(ei.value) and "is not a Megatron-Core 0.19.2" in str(ei.value)
    assert "\n" not in str(ei.value)


def test_unknown_raw_flag_names_the_closest():
    owner = r"Fix: did you mean model\.moe_router_topk\? \(the schema field that sets --moe-router-topk\)"
    with pytest.raises(ConfigError, match=owner) as ei:
        check_raw(["--moe-router-top-k", "2"])
    assert ei.value.field == "megatron.raw" and ei.value.value == "--moe-router-top-k"
    check_raw(["--moe-router-topk=2", "--recompute-granularity", "selective"])  # real flags pass


def test_unknown_raw_flag_fails_the_plan():
    with pytest.raises(ConfigError, match=r"megatron\.raw='--moe-router-top-k'.*did you mean model\.moe_router_topk\?"):
        plan_for(["megatron.raw=[--moe-router-top-k,3]"], validate_megatron=False)


def test_unknown_extra_key_fails_the_plan():
    with pytest.raises(ConfigError, match=r"megatron\.extra\.moe_router_top_k=.*did you mean model\.moe_router_topk\?"):
        plan_for(["+megatron.extra.moe_router_top_k=3"], validate_megatron=False)


@pytest.mark.parametrize("overrides,field", [
    (["+megatron.extra.num_experts=4"], "megatron.extra"),
    (["+megatron.extra.moe_router_topk=4"], "megatron.extra"),
    (["megatron.raw=[--num-experts,4]"], "megatron.raw"),
    (["megatron.raw=[--bf16]"], "megatron.raw"),                      # a SPECIAL row's flag
    (["megatron.raw=[--transformer-impl,local]"], "megatron.raw"),    # a DERIVED flag
])
def test_extra_duplicating_a_config_flag_is_rejected(overrides, field):
    with pytest.raises(ConfigError, match="is already set by a config field") as ei:
        plan_for(overrides, validate_megatron=False)
    assert ei.value.field == field


def test_extra_and_raw_setting_the_same_dest_is_rejected():
    with pytest.raises(ConfigError, match="already set") as ei:
        plan_for(["+megatron.extra.moe_input_jitter_eps=0.01", "megatron.raw=[--moe-input-jitter-eps,0.02]"],
                 validate_megatron=False)
    assert ei.value.field == "megatron.raw" and ei.value.value == "moe_input_jitter_eps"


def test_extra_flag_name_true_emits_that_flag():
    assert extra_to_argv({"--no-overlap-p2p-communication": True}) == ["--no-overlap-p2p-communication"]


def test_extra_turning_off_a_table_flag_is_rejected():
    with pytest.raises(ConfigError, match="already set by a config field"):
        plan_for(["+megatron.extra.use_distributed_optimizer=false"], validate_megatron=False)


def test_infinite_float_renders():
    plan = plan_for(["train.clip_grad=inf"], validate_megatron=False)
    i = plan.argv.index("--clip-grad")
    assert plan.argv[i + 1] == "inf"

"""dispatcher.tuned=NAME: apply the best case of a dispatcher benchmark (moe-dispatch-bench, written to
perf_results/dispatch/NAME.json) for this run's dispatcher. Only knobs megatron-core 0.19.2 takes as flags are
applied: the SM count becomes dispatcher.flex_num_sms, HybridEP's permute fusion and block counts become
megatron.extra entries; DeepEP's NVLink chunk/buffer sizes have no Megatron flag and are reported, not applied.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from launcher.config.schema import RunConfig
from launcher.errors import ConfigError

DISPATCH_RESULTS = Path(__file__).resolve().parents[2] / "perf_results" / "dispatch"
# knob -> where it goes: the schema's own field, or a Megatron dest through megatron.extra
AS_FIELD = {"moe_flex_dispatcher_num_sms": "flex_num_sms"}
AS_EXTRA = ("moe_permute_fusion_into_hybridep", "moe_hybridep_num_blocks_permute", "moe_hybridep_num_blocks_unpermute")
NOT_A_FLAG = ("nvl_chunk", "nvl_buffer")


def _backend(cfg: RunConfig) -> str:
    d = cfg.dispatcher
    return str(d.flex_backend) if d.type == "flex" else str(d.type)


def best_knobs(cfg: RunConfig, results_dir: Path = DISPATCH_RESULTS) -> dict:
    """The fastest correct case of this run's dispatcher in the named results file, checked against the model."""
    name, field = cfg.dispatcher.tuned, "dispatcher.tuned"
    path = Path(name) if name.endswith(".json") else results_dir / f"{name}.json"
    if not path.is_file():
        raise ConfigError(field, name, f"no dispatcher benchmark results at {path}",
                          "run moe-dispatch-bench --name NAME for this model first, or drop dispatcher.tuned")
    record = json.loads(path.read_text())
    m, s = cfg.model, record["shapes"]
    if (s["hidden"], s["experts"], s["topk"]) != (m.hidden_size, m.num_experts, m.moe_router_topk):
        raise ConfigError(field, name, f"was tuned for hidden {s['hidden']}, {s['experts']} experts, top-{s['topk']}; "
                          f"this model has {m.hidden_size}, {m.num_experts}, top-{m.moe_router_topk}",
                          "tune this model's shapes with moe-dispatch-bench")
    mine = [r for r in record["results"] if r["backend"] == _backend(cfg) and r["correct"]]
    if not mine:
        raise ConfigError(field, name, f"has no correct result for dispatcher {_backend(cfg)}",
                          f"benchmark it (moe-dispatch-bench --backends {_backend(cfg)}), or pick that dispatcher")
    return min(mine, key=lambda r: r["dispatch_ms"] + r["combine_ms"])["knobs"]


def apply_tuned(cfg: RunConfig, results_dir: Path = DISPATCH_RESULTS) -> RunConfig:
    """A copy of cfg with the tuned knobs set (cfg itself when dispatcher.tuned is unset)."""
    if not cfg.dispatcher.tuned:
        return cfg
    knobs = best_knobs(cfg, results_dir)
    out = copy.deepcopy(cfg)
    for knob, value in knobs.items():
        if knob in AS_FIELD:
            if getattr(cfg.dispatcher, AS_FIELD[knob]) is not None:
                raise ConfigError(f"dispatcher.{AS_FIELD[knob]}", getattr(cfg.dispatcher, AS_FIELD[knob]),
                                  f"dispatcher.tuned={cfg.dispatcher.tuned} sets it too ({value})",
                                  "drop one of the two")
            setattr(out.dispatcher, AS_FIELD[knob], value)
        elif knob in AS_EXTRA:
            if knob in cfg.megatron.extra:
                raise ConfigError(f"megatron.extra.{knob}", cfg.megatron.extra[knob],
                                  f"dispatcher.tuned={cfg.dispatcher.tuned} sets it too ({value})",
                                  "drop one of the two")
            out.megatron.extra[knob] = value
        elif knob not in NOT_A_FLAG:
            raise ConfigError("dispatcher.tuned", cfg.dispatcher.tuned, f"its best case sets {knob}, which this "
                              "launcher does not know how to pass to Megatron", "re-run moe-dispatch-bench")
    return out

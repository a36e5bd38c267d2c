"""Put a run next to a reference (another run, or a published row in perf_results/references.yaml).

usage: python -m launcher.records.compare RUN_DIR --ref RUN_DIR|REFERENCE_ID [--references FILE] [--out FILE.md]
       python -m launcher.records.compare --list [--references FILE]

Reports run/reference ratios of step time, tokens/s/GPU, TFLOP/s/GPU, MFU and memory, and says whether
the comparison is like for like. It is not when the routing mode, precision, GPU or sequence length
differ (or a reference does not say which it used); other differences (layers, GPU count, layout,
batch, dispatcher, versions) are listed beside the numbers.
Both sides are reduced to one "entry" (the results table's columns), so runs and references compare
the same way. The run's record is rebuilt from its directory first (launcher.records.record).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

from launcher.records.outputs import PERF_RESULTS_SWITCH, SWITCH_HELP, refuse_committed
from launcher.records.record import build_record, hardware_catalog
from launcher.records.steady import DEFAULT_WARMUP

DEFAULT_REFERENCES = Path(__file__).resolve().parents[2] / "perf_results" / "references.yaml"

CRITICAL = ("routing", "precision", "system", "seq_length")
"""Differences that make throughput incomparable (the issue's like-for-like conditions)."""
SHAPE = ("model", "num_layers", "gpus", "tp", "pp", "vpp", "cp", "ep", "etp", "fsdp", "mbs", "gbs",
         "dispatcher", "recompute", "transformer_impl")
"""Differences that change what was measured; listed, not fatal."""
VERSIONS = ("megatron_core", "transformer_engine", "torch", "nccl", "code")

LABELS = {"routing": "routing mode", "precision": "precision", "system": "GPU", "seq_length": "sequence length",
          "model": "model", "num_layers": "layers trained", "gpus": "GPUs", "tp": "TP", "pp": "PP", "vpp": "VPP",
          "cp": "CP", "ep": "EP", "etp": "ETP", "fsdp": "FSDP", "mbs": "MBS", "gbs": "GBS",
          "dispatcher": "dispatcher", "recompute": "recompute", "transformer_impl": "layer implementation",
          "megatron_core": "megatron-core",
          "transformer_engine": "Transformer Engine", "torch": "torch", "nccl": "NCCL", "code": "code"}


# ------------------------------------------------------------------------------------------- entries


def entry_from_record(r: dict) -> dict:
    """A run record reduced to the results table's fields."""
    lay, b, ss = r["parallel"], r["batch"], r["steady_state"]
    med = lambda key: (ss.get(key) or {}).get("median")  # noqa: E731
    step_ms = med("step_time_ms")
    mem = r["memory"].get("max_allocated_mb")
    v = r["versions"]
    return {
        "id": r["name"], "kind": "run", "source": f"run record {r['name']}", "status": r["status"],
        "failure": r.get("failure"),
        "model": r["model"]["name"], "num_layers": r["model"]["num_layers"],
        "full_num_layers": r["model"]["full_num_layers"],
        "num_experts": r["model"].get("num_experts"), "full_num_experts": r["model"].get("full_num_experts"),
        "system": r["system"]["hardware"] or ("cpu" if r["system"]["device"] == "cpu" else r["system"]["gpu_name"]),
        "gpu_recorded": bool(r["system"]["gpu_name"]) or r["system"]["device"] == "cpu",
        "gpu_name": r["system"]["gpu_name"], "gpus": lay["world_size"], "precision": r["precision"]["name"],
        "seq_length": b["seq_length"], "tp": lay["tp"], "cp": lay["cp"], "ep": lay["ep"], "pp": lay["pp"],
        "edp": lay["edp"], "etp": lay["etp"], "vpp": lay["vpp"] or 1, "dp": lay["dp"], "fsdp": lay["fsdp"],
        "mbs": b["micro_batch_size"], "gbs": b["global_batch_size"], "ga": b["grad_accum"],
        "recompute": r["recompute"], "dispatcher": r["dispatcher"], "routing": r["routing"],
        "transformer_impl": r.get("transformer_impl"),
        "step_time_s": round(step_ms / 1000, 3) if step_ms else None,
        "tflops_per_gpu": med("tflops_per_gpu"), "tokens_per_s_per_gpu": med("tokens_per_s_per_gpu"),
        "mfu": med("mfu"), "mem_gib": round(mem / 1024, 1) if mem else None,
        "megatron_core": v.get("megatron_core"),
        # versions.json lists every package it tried: None there means "not importable on the node"
        "transformer_engine": v.get("transformer_engine") or ("not installed" if v.get("source") == "versions.json"
                                                              else None),
        "torch": v.get("torch"), "nccl": v.get("nccl"), "code": (r.get("code") or {}).get("describe"),
        "approx": False, "window": ss.get("window"),
        "spread": {k: ss.get(k) for k in ("step_time_ms", "tflops_per_gpu", "tokens_per_s_per_gpu")},
    }


def load_references(path: Path = DEFAULT_REFERENCES) -> dict[str, dict]:
    """references.yaml -> {id: entry}; MFU filled in where the GPU has a conf/hardware entry."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    catalog = hardware_catalog()
    out = {}
    for raw in data.get("references", []):
        e = {"kind": "reference", "approx": False, **raw}
        model_cfg = _model_layers(e.get("model"))
        e.setdefault("full_num_layers", model_cfg)
        if e.get("num_layers") is None:  # a published full-model row: the model's own layer count
            e["num_layers"] = model_cfg
        hw = catalog.get(str(e.get("system")))
        peak_key = "peak_tflops_fp8" if str(e.get("precision", "")).startswith("fp8") else "peak_tflops_bf16"
        if e.get("mfu") is None and hw and e.get("tflops_per_gpu"):
            e["mfu"] = round(e["tflops_per_gpu"] / hw[peak_key], 4)
            e["mfu_basis"] = f"computed here: TFLOP/s/GPU / {hw[peak_key]} (conf/hardware/{e['system']}.yaml)"
        out[e["id"]] = e
    return out


def _model_layers(model: Optional[str]) -> Optional[int]:
    from launcher.records.record import CONF_DIR

    path = CONF_DIR / "model" / f"{model}.yaml"
    if model and path.exists():
        return yaml.safe_load(path.read_text()).get("num_layers")
    return None


def resolve_ref(ref: str, references: dict[str, dict], warmup: int = DEFAULT_WARMUP) -> dict:
    """A run directory (has plan.json) or a reference id."""
    path = Path(ref)
    if (path / "plan.json").exists():
        return entry_from_record(build_record(path, warmup))
    if ref in references:
        return references[ref]
    close = [k for k in references if ref in k]
    raise SystemExit(f"compare: error: {ref!r} is neither a run directory nor a reference id"
                     + (f"; did you mean {', '.join(close[:3])}?" if close else
                        "; list the ids with --list"))


# ----------------------------------------------------------------------------------------- comparison


def _norm(key: str, value: Any) -> Any:
    if value is None:
        return None
    if key == "system":
        return str(value).lower()
    if key == "recompute" and value in ("", "none"):
        return "none"
    if key == "fsdp":
        return bool(value)
    return value


def like_for_like(run: dict, ref: dict) -> dict:
    """{"like_for_like": bool, "critical": [(key, run, ref, state)], "shape": [...], "versions": [...]}
    state: same | differs | unknown (the reference does not say)."""
    def rows(keys):
        out = []
        for k in keys:
            a, b = _norm(k, run.get(k)), _norm(k, ref.get(k))
            state = "unknown" if a is None or b is None else ("same" if a == b else "differs")
            out.append((k, run.get(k), ref.get(k), state))
        return out
    crit = rows(CRITICAL)
    shape = rows(SHAPE)
    vers = rows(VERSIONS) if ref.get("kind") == "run" else []
    return {"like_for_like": all(s == "same" for *_, s in crit), "critical": crit, "shape": shape, "versions": vers}


def ratios(run: dict, ref: dict) -> list[tuple[str, Any, Any, Optional[float], str]]:
    """(metric, run value, reference value, run/reference, which way is better)."""
    out = []
    for key, label, better in (("tokens_per_s_per_gpu", "tokens/s/GPU", "higher"),
                               ("tflops_per_gpu", "TFLOP/s/GPU", "higher"),
                               ("mfu", "MFU", "higher"),
                               ("step_time_s", "step time (s)", "lower"),
                               ("mem_gib", "peak memory (GiB)", "lower")):
        a, b = run.get(key), ref.get(key)
        out.append((label, a, b, round(a / b, 3) if a is not None and b else None, better))
    return out


def matching_references(run: dict, references: dict[str, dict]) -> list[dict]:
    """References that are like for like with a run and of the same shape (model, layers, GPUs, and the model's
    own expert count: a run that cut the experts is a different model)."""
    out = []
    for ref in references.values():
        c = like_for_like(run, ref)
        same_shape = all(_norm(k, run.get(k)) == _norm(k, ref.get(k)) for k in ("model", "num_layers", "gpus"))
        full_experts = run.get("full_num_experts")
        same_shape = same_shape and (not full_experts or run.get("num_experts") == full_experts)
        if c["like_for_like"] and same_shape:
            out.append(ref)
    return out


def _v(x: Any, key: str = "") -> str:
    """A value for the report; `key` set: a reference's field (None reads "not stated")."""
    if x is None:
        return "not stated" if key else "-"
    if isinstance(x, bool):
        return "on" if x else "off"
    if isinstance(x, int):
        return f"{x:,}" if x >= 10000 else str(x)
    if isinstance(x, float):
        return f"{x:,.3f}" if x < 10 else f"{x:,.1f}"
    return str(x)


def _side(x: Any, entry: dict, key: str) -> str:
    """A condition's value; missing reads "not recorded" for a run, "not stated" for a published row."""
    if x is None:
        return "not recorded" if entry.get("kind") == "run" else "not stated"
    return _v(x, key)


def _metric(x: Any, label: str) -> str:
    if x is None:
        return "-"
    if label == "MFU":
        return f"{100 * x:.1f}%"
    if label == "tokens/s/GPU":
        return f"{x:,.0f}"
    return _v(x)


def render(run: dict, ref: dict) -> str:
    c = like_for_like(run, ref)
    lines = [f"# {run['id']} vs {ref['id']}", "",
             "Generated by `python -m launcher.records.compare`; do not edit.", "",
             f"- run: {run['source']}" + (f" (status {run.get('status')})" if run.get("status") else ""),
             f"- reference: {ref['source']}" + (" (approximate figures)" if ref.get("approx") else "")
             + (f"; {ref['notes']}" if ref.get("notes") else ""), ""]
    bad = [(k, a, b, s) for k, a, b, s in c["critical"] if s != "same"]
    if c["like_for_like"]:
        lines.append("**Like for like**: same routing mode, precision, GPU and sequence length.")
    else:
        why = "; ".join(f"{LABELS[k]} {'differs' if s == 'differs' else 'unknown'} "
                        f"({_side(a, run, k)} vs {_side(b, ref, k)})" for k, a, b, s in bad)
        lines.append(f"**NOT like for like**: {why}. The ratios below do not measure the same thing.")
    shape_diff = [(k, a, b, s) for k, a, b, s in c["shape"] if s == "differs"]
    if shape_diff:
        lines += ["", "Other differences: " + "; ".join(f"{LABELS[k]} {_v(a)} vs {_v(b)}" for k, a, b, _ in shape_diff)
                  + "."]
    lines += ["", "| metric | run | reference | run / reference | better |", "|---|---|---|---|---|"]
    for label, a, b, ratio, better in ratios(run, ref):
        lines.append(f"| {label} | {_metric(a, label)} | {_metric(b, label) if b is not None else 'not stated'} | "
                     f"{f'{ratio:.3f}' if ratio is not None else '-'} | {better} |")
    if any(k in ("model", "num_layers") for k, *_ in shape_diff):
        lines += ["", "The models differ in size: tokens/s/GPU does not compare across them. TFLOP/s/GPU and MFU "
                      "count each model's own FLOPs and compare better, though a model cut to fewer layers "
                      "spends a larger share of its FLOPs in the embedding and output layers."]
    if ref.get("mfu_basis"):
        lines += ["", f"Reference MFU: {ref['mfu_basis']}."]
    if run.get("window"):
        w = run["window"]
        lines += ["", f"Run figures: medians over iterations {w.get('first')}-{w.get('last')} "
                      f"(first {w.get('warmup_iterations')} skipped as warm-up)."]
    lines += ["", "| condition | run | reference | |", "|---|---|---|---|"]
    for k, a, b, s in c["critical"] + c["shape"] + c["versions"]:
        mark = {"same": "same", "differs": "**differs**", "unknown": "unknown"}[s]
        if k in CRITICAL and s != "same":
            mark += " (not like for like)"
        lines.append(f"| {LABELS[k]} | {_side(a, run, k)} | {_side(b, ref, k)} | {mark} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launcher.records.compare", description=__doc__.split("\n")[0])
    ap.add_argument("run", nargs="?", type=Path, help="run directory")
    ap.add_argument("--ref", help="a run directory or a reference id from --references")
    ap.add_argument("--references", type=Path, default=DEFAULT_REFERENCES)
    ap.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    ap.add_argument("--out", type=Path, help="also write the report here (markdown)")
    ap.add_argument("--list", action="store_true", help="list the reference ids and exit")
    ap.add_argument(PERF_RESULTS_SWITCH, action="store_true", help=SWITCH_HELP)
    a = ap.parse_args(argv)
    refusal = refuse_committed("compare", [a.out], a.perf_results)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    refs = load_references(a.references)
    if a.list:
        for rid, e in refs.items():
            print(f"{rid}: {e['source']}")
        return 0
    if not a.run or not a.ref:
        ap.error("give a run directory and --ref")
    if not (a.run / "plan.json").exists():
        print(f"compare: error: {a.run} has no plan.json (not a moe-launch run directory)", file=sys.stderr)
        return 2
    run = entry_from_record(build_record(a.run, a.warmup))
    ref = resolve_ref(a.ref, refs, a.warmup)
    text = render(run, ref)
    print(text, end="")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

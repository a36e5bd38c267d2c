"""The dispatcher comparison tables of perf_results/README.md (issue 16), built from run records.

Runs are grouped by everything but the dispatcher and its knobs: model and layers, the parallel layout, batch,
precision, recompute, GPU and the code commit (the seed's pitfall: never compare across stacks or routing modes).
A group that holds a run with another dispatcher than alltoall becomes one table, one row per run, routing by
routing, each row against alltoall with the same routing in the same group ("-" where the group has none: runs
of another code commit, i.e. another GPU-host session, are never compared, since the same preset has differed by
5% between host sessions). A failed run stays in its table with its failure.
"""
from __future__ import annotations

from typing import Optional

# the knobs a run set for its dispatcher (Megatron flags in its argv); "-" = the backend's defaults
KNOB_FLAGS = ("--moe-flex-dispatcher-num-sms", "--moe-hybridep-num-blocks-permute",
              "--moe-hybridep-num-blocks-unpermute", "--moe-permute-fusion-into-hybridep")
COLUMNS = ["run", "dispatcher", "routing", "knobs", "deep_ep", "tokens/s/GPU", "TFLOP/s/GPU", "step ms",
           "peak GiB (alloc / reserved)", "vs alltoall"]


def group_key(r: dict) -> tuple:
    """What must be equal for two runs to be compared: all but dispatcher, knobs and routing."""
    m, p, b = r["model"], r["parallel"], r["batch"]
    return (m["name"], m["num_layers"], tuple(sorted((k, str(v)) for k, v in p.items())), b["seq_length"],
            b["micro_batch_size"], b["global_batch_size"], r["precision"]["name"], str(r.get("recompute")),
            r["system"].get("gpu_name"), (r.get("code") or {}).get("commit"),
            (r.get("versions") or {}).get("megatron_core"))


def knobs(r: dict) -> str:
    """The dispatcher flags in the run's argv, e.g. `num-sms 32` (a flag without a value is just named)."""
    argv, out = r.get("argv") or [], []
    for i, a in enumerate(argv):
        if a in KNOB_FLAGS:
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else ""
            out.append(f"{a.removeprefix('--moe-').removeprefix('flex-dispatcher-')} {value}".strip())
    return ", ".join(out) or "-"


def _median(r: dict, key: str) -> Optional[float]:
    ss = r.get("steady_state") or {}
    return (ss.get(key) or {}).get("median") if r["status"] == "ok" else None


def _row(r: dict, link: str, base: Optional[dict]) -> list[str]:
    mem = r.get("memory") or {}
    tf, ref = _median(r, "tflops_per_gpu"), _median(base, "tflops_per_gpu") if base else None
    cells = [f"[{r['name']}]({link})", str(r["dispatcher"]), str(r["routing"]), knobs(r),
             str((r.get("versions") or {}).get("deep_ep") or "-")]
    if tf is None:
        summary = ((r.get("failure") or {}).get("summary") or r["status"]).replace("|", "/")
        return cells + [f"{r['status']}: {summary}"[:160], "", "", "", ""]
    alloc, reserved = mem.get("max_allocated_mb"), mem.get("max_reserved_mb")
    peak = f"{alloc / 1024:.1f} / {reserved / 1024:.1f}" if alloc and reserved else "-"
    return cells + [f"{_median(r, 'tokens_per_s_per_gpu'):,.0f}", f"{tf:.1f}",
                    f"{_median(r, 'step_time_ms'):,.0f}", peak, f"{tf / ref:.3f}x" if ref else "-"]


def _title(r: dict) -> str:
    m, p, b = r["model"], r["parallel"], r["batch"]
    return (f"{m['name']} ({m['num_layers']} layers), {p['world_size']}x {r['system'].get('gpu_name') or 'GPU'}, "
            f"TP{p['tp']} PP{p['pp']} EP{p['ep']} CP{p['cp']}, seq {b['seq_length']}, MBS {b['micro_batch_size']}, "
            f"GBS {b['global_batch_size']}, {r['precision'].get('label') or r['precision']['name']}, "
            f"code {(r.get('code') or {}).get('short', '-')}")


def dispatcher_tables(records: list[dict], links: list[str]) -> str:
    """One markdown table per group of comparable runs that holds a run with a dispatcher other than alltoall."""
    groups: dict[tuple, list[tuple[dict, str]]] = {}
    for r, link in zip(records, links):
        groups.setdefault(group_key(r), []).append((r, link))
    out = []
    for members in groups.values():
        if {r["dispatcher"] for r, _ in members} <= {"alltoall"}:
            continue
        members.sort(key=lambda m: (str(m[0]["routing"]), str(m[0]["dispatcher"]), knobs(m[0]), m[0]["name"]))
        base = {str(r["routing"]): r for r, _ in members if r["dispatcher"] == "alltoall" and knobs(r) == "-"
                and r["status"] == "ok"}
        rows = [_row(r, link, base.get(str(r["routing"]))) for r, link in members]
        out += [f"**{_title(members[0][0])}**", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        out += ["| " + " | ".join(c) + " |" for c in rows] + [""]
    return "\n".join(out) or "(no run with a dispatcher other than alltoall yet)"

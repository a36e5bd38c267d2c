"""Where the GPU time went: a category breakdown of a torch.profiler Chrome trace.

usage: python -m launcher.records.trace_summary TRACE.json[.gz] [--steps N] [--json OUT.json] [--md OUT.md]

Reads what `torch.profiler.profile(...).export_chrome_trace(path)` writes (recipes/profiling.py for
our Megatron runs; any torch.profiler trace, e.g. of a Hugging Face peer). Each GPU event (kernel,
memcpy, memset) is linked to its launch (cuda_runtime/cuda_driver event, same args["correlation"]);
the CPU ops enclosing that launch (cpu_op, user_annotation and python_function events on the launching
thread whose [ts, ts+dur] contains the launch) name what it was for. RULES classifies it: first match
of (regex on the enclosing op names, joined outermost first with " > "; regex on the kernel name) wins.

Numbers, per trace (and per step with --steps N):
  wall   first GPU event start to last GPU event end, per GPU, added over GPUs
  busy   union of GPU event intervals over all streams of a GPU (overlap counted once)
  idle   wall - busy: the GPU waiting on CPU launches, syncs or the host
  per category: kernel time (sum, so concurrent streams can add past busy), share of busy, count,
  top 3 kernel names by time (unmatched kernels are `other`, their names visible there)
A CPU-only trace has no GPU events: the summary says so (status "no_gpu_kernels") instead of failing.
Pure json/gzip: runs on the login node without torch.

JSON keys (times in ms): schema, trace, steps, device_name, cpu_ops, gpu_events, kernels, status ("ok" or
"no_gpu_kernels"; the latter has `message` and none of the keys below), unlinked_gpu_events, wall_ms,
busy_ms, idle_ms, idle_share, kernel_ms, devices [{device, wall_ms, busy_ms, streams {id: busy_ms}}],
categories {name: {kernel_ms, share_of_busy, share_of_kernel_time, count, top [{name, ms, count}],
per_step {kernel_ms, count}}} (every category, largest first), per_step {wall_ms, busy_ms, idle_ms,
gpu_events} (the per_step keys only with --steps).
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional

SCHEMA = "moe-recipes/trace-summary/1"
ANY = ""  # an empty regex matches every name

# Ordered (category, regex on enclosing op names, regex on kernel name); first match wins, case-insensitive.
# Op rules come first because the op says what a generic kernel (a copy, a cast, a GEMM) was for; the
# kernel-name rules at the end catch launches whose op is unknown (no launch found, or a bare aten op).
# Names: Transformer Engine / Megatron autograd Functions (forward under the class name, backward as
# "<Name>Backward"), aten ops, torch's "Optimizer.step#AdamW.step" annotations; python_function names
# ("nn.Module: X", "file.py(N): fn") only exist when the profile ran with_stack=True.
ROPE = r"rotary|fusedrope|(?<![a-z])rope(?![a-z])|_rope|rope_"  # not "property"
GEMM_KERNEL = r"gemm|gemv|nvjet|xmma|cublas|splitKreduce|cutlass.*tensorop"
RULES: tuple[tuple[str, str, str], ...] = (
    ("memcpy", ANY, r"^memcpy"),
    ("memset", ANY, r"^memset"),
    # the whole optimizer phase: Megatron's grad-norm/clip/copies and any collectives it launches too;
    # clip_grad_norm_ (HF) shows as _foreach_norm + linalg_vector_norm of the per-tensor norms
    ("optimizer", r"optimizer|(?<!had)adam|multi_tensor|_foreach_|clip_grad|zero_grad|linalg_vector_norm", ANY),
    # TE GroupedLinear (Megatron TEGroupedMLP), torch._grouped_mm (HF grouped_mm), TE ops fuser grouped MLP
    # (TEFusedMLPWithGroupedLinear). The fuser's own op (_OperationFuserAutogradFunction) also runs dense
    # TEFusedMLP and fused norms, so it alone is no evidence: without with_stack its GEMMs go to dense_gemm
    ("expert_gemm", r"groupedlinear|_grouped_?mm|groupedmm|grouped_?gemm|groupedmlp", ANY),
    ("expert_gemm", ANY, r"grouped_?(gemm|mm)|groupedgemm|GroupProblemShape"),
    ("attention", r"scaled_?dot_?product|dotproductattention|fusedattn|flashattn|flash_attn|"
                  r"_efficient_attention|_cudnn_attention|attnfunc|fused_attn|scaled(uppertriang)?(masked)?softmax",
     ANY),
    ("loss", r"cross_?entropy|log_?softmax|nll_?loss", ANY),
    # embedding backward sorts and scatters: not token permutation (rotary "embeddings" are rope)
    ("embedding", r"aten::embedding|embeddingbackward|vocabparallelembedding|nn\.Module: (?!\w*rotary)\w*embedding_\d",
     ANY),
    ("dense_gemm", ANY, GEMM_KERNEL),  # before router/dispatch: the router GEMM is a GEMM in both stacks
    ("dense_gemm", r"aten::(linear|matmul|mm|addmm|bmm|baddbmm|_scaled_mm)|mmbackward|linear", r"cutlass|sm\d+_"),
    # token permutation and the expert-parallel exchange: TE fused permute, Megatron dispatchers, DeepEP/
    # HybridEP; without fusion (and in HF's grouped_mm path) the sort/histogram/index ops that group
    # tokens by expert (HF also masks sentinel rows with masked_fill): in these models only MoE routing
    # uses them
    ("moe_dispatch", r"permute_|_permute|unpermute|sort_chunk|chunk_sort|_alltoall|all_to_all|alltoall|"
                     r"fuseddispatch|fusedcombine|hybridep|deep_?ep|indicestomultihot|token_dispatch|"
                     r"tokendispatcher|moe_utils\.py\(\d+\): (un)?permute", ANY),
    ("moe_dispatch", r"aten::(sort|argsort|histc|bincount|index_select|index_add_?|index_copy_?|scatter_add_?|"
                     r"scatter_reduce_?|index_put_?|_index_put_impl_|masked_scatter_?|"
                     r"masked_fill_?|index)\b|maskedfillbackward", ANY),
    # router: top-k, score function (softmax/sigmoid over the experts), aux/z losses; the gating GEMM
    # already went to dense_gemm. aten::softmax outside attention/loss is the router's in these models.
    ("router", r"topk|router|aux_?loss|z_loss|score_?function|group_limited|aten::_?softmax(_backward_data)?\b|"
               r"(?<!log)softmaxbackward0|aten::sigmoid\b|sigmoidbackward0", ANY),
    ("communication", r"c10d::|nccl:|record_param_comms|_allgather|_reducescatter|_reducefrom|_gatherfrom|"
                      r"_scatterto|all_?reduce|all_?gather|reduce_?scatter", ANY),
    ("norm", r"layer_?norm|rms_?norm", ANY),
    ("rope", ROPE, ANY),
    ("activation", r"silu|swiglu|gelu|geglu|relu|glu", ANY),
    # kernel-name fallbacks for launches with no telling op
    ("attention", ANY, r"flash|fmha|sdpa|attention|attn"),
    ("loss", ANY, r"cross_entropy|nll_loss|logsoftmax"),
    ("moe_dispatch", ANY, r"permute|sort_chunks|deep_ep|hybrid_ep|alltoall|sendrecv"),
    ("router", ANY, r"topk|aux_loss"),
    ("optimizer", ANY, r"multi_tensor|(?<!had)adam"),
    ("communication", ANY, r"nccl"),
    ("norm", ANY, r"layer_?norm|rms_?norm|ln_(fwd|bwd)|welford|gammabeta|rowwisemoments"),
    ("rope", ANY, ROPE),
    ("activation", ANY, r"silu|swiglu|gelu|geglu|relu|act_and_mul|gated_act"),
)
CATEGORIES = tuple(dict.fromkeys([c for c, _, _ in RULES] + ["other"]))
_COMPILED = tuple((c, re.compile(o, re.I), re.compile(k, re.I)) for c, o, k in RULES)

# torch.compile names its graphs by a random hash ("## Call CompiledFxGraph f3x...q ##"): drop it, so no
# rule can match letters that happen to spell "rope" or "glu" in it
_HASH = re.compile(r"(?<=CompiledFxGraph )\w+")
GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_CATS = ("cuda_runtime", "cuda_driver")
OP_CATS = ("cpu_op", "user_annotation", "python_function")


def classify(ops: str, kernel: str) -> str:
    """The category of a kernel, given the joined names of the ops enclosing its launch."""
    for category, op_re, kernel_re in _COMPILED:
        if op_re.search(ops) and kernel_re.search(kernel):
            return category
    return "other"


def load_events(path: Path) -> tuple[list[dict], dict]:
    """The trace's events and its top-level fields; .gz by magic bytes, not by name."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    data = json.loads(raw)
    if isinstance(data, list):  # the bare-array form of the Chrome trace format
        return data, {}
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise ValueError("JSON without a traceEvents list: not a Chrome trace")
    return data["traceEvents"], data


def enclosing_ops(events: list[dict]) -> dict[int, str]:
    """correlation id -> names of the ops enclosing its launch, outermost first, joined by " > ".

    One sweep per thread: ops and launches sorted by start (ops before launches at the same ts, longer
    ops first, so parents precede children); a stack keeps the ops still open. Ops on one thread nest by
    time, but rounding can leave an op ending just before a later one starts, so each launch re-checks ends.
    """
    per_thread: dict[tuple, list] = defaultdict(list)
    for e in events:
        if e.get("ph") != "X":
            continue
        cat = e.get("cat")
        if cat in OP_CATS:
            per_thread[(e.get("pid"), e.get("tid"))].append((float(e["ts"]), 0, -float(e.get("dur", 0)), e))
        elif cat in LAUNCH_CATS and "correlation" in e.get("args", {}):
            per_thread[(e.get("pid"), e.get("tid"))].append((float(e["ts"]), 1, 0.0, e))
    out: dict[int, str] = {}
    for items in per_thread.values():
        items.sort(key=lambda item: item[:3])
        stack: list[tuple[float, str]] = []  # (end, name)
        for ts, kind, neg_dur, e in items:
            while stack and stack[-1][0] < ts:
                stack.pop()
            if kind == 0:
                stack.append((ts - neg_dur, _HASH.sub("", e.get("name", ""))))
            else:
                out[e["args"]["correlation"]] = " > ".join(n for end, n in stack if end >= ts)
    return out


def _union_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals: overlapping kernels count once."""
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    return total + (cur_end - cur_start if cur_end is not None else 0.0)


def _device_times(gpu: list[dict]) -> list[dict]:
    """Wall, busy and per-stream busy time of each GPU (device = args.device, else the event's pid)."""
    by_device: dict = defaultdict(lambda: defaultdict(list))
    for e in gpu:
        args = e.get("args", {})
        start = float(e["ts"])
        by_device[args.get("device", e.get("pid"))][args.get("stream", e.get("tid"))].append(
            (start, start + float(e.get("dur", 0))))
    out = []
    for device, streams in sorted(by_device.items(), key=lambda kv: str(kv[0])):
        every = [iv for ivs in streams.values() for iv in ivs]
        wall = max(end for _, end in every) - min(start for start, _ in every)
        out.append({"device": device, "wall_ms": wall / 1e3, "busy_ms": _union_us(every) / 1e3,
                    "streams": {str(s): round(_union_us(ivs) / 1e3, 4) for s, ivs in sorted(streams.items(), key=str)}})
    return out


def summarize(path, steps: Optional[int] = None) -> dict:
    """The summary dict of one trace (keys in the module docstring)."""
    path = Path(path)
    events, top = load_events(path)
    gpu = [e for e in events if e.get("ph") == "X" and e.get("cat") in GPU_CATS]
    n_ops = sum(1 for e in events if e.get("ph") == "X" and e.get("cat") in OP_CATS)
    props = top.get("deviceProperties") or []
    summary: dict = {"schema": SCHEMA, "trace": str(path), "steps": steps,
                     "device_name": props[0].get("name") if props else None, "cpu_ops": n_ops,
                     "gpu_events": len(gpu), "kernels": sum(1 for e in gpu if e.get("cat") == "kernel")}
    if not gpu:
        summary.update(status="no_gpu_kernels", message=(
            f"no GPU kernels in trace ({n_ops} CPU ops): a CPU-only profile, or CUDA activity was not recorded"))
        return summary
    ops_of = enclosing_ops(events)
    cats = {c: {"kernel_ms": 0.0, "count": 0, "names": defaultdict(lambda: [0.0, 0])} for c in CATEGORIES}
    unlinked = 0
    for e in gpu:
        corr = e.get("args", {}).get("correlation")
        if corr not in ops_of:
            unlinked += 1  # launched before the window opened, or by a thread the profiler did not see
        cat = cats[classify(ops_of.get(corr, ""), e.get("name", ""))]
        dur_ms = float(e.get("dur", 0)) / 1e3
        cat["kernel_ms"] += dur_ms
        cat["count"] += 1
        cat["names"][e.get("name", "")][0] += dur_ms
        cat["names"][e.get("name", "")][1] += 1
    devices = _device_times(gpu)
    wall = sum(d["wall_ms"] for d in devices)
    busy = sum(d["busy_ms"] for d in devices)
    total = sum(c["kernel_ms"] for c in cats.values())
    summary.update(status="ok", unlinked_gpu_events=unlinked, wall_ms=wall, busy_ms=busy,
                   idle_ms=wall - busy, idle_share=(wall - busy) / wall if wall else 0.0,
                   kernel_ms=total, devices=devices, categories={})
    for name, c in sorted(cats.items(), key=lambda kv: -kv[1]["kernel_ms"]):
        top3 = sorted(c["names"].items(), key=lambda kv: -kv[1][0])[:3]
        summary["categories"][name] = {
            "kernel_ms": c["kernel_ms"], "share_of_busy": c["kernel_ms"] / busy if busy else 0.0,
            "share_of_kernel_time": c["kernel_ms"] / total if total else 0.0, "count": c["count"],
            "top": [{"name": n, "ms": ms, "count": k} for n, (ms, k) in top3]}
    if steps:
        summary["per_step"] = {"wall_ms": wall / steps, "busy_ms": busy / steps, "idle_ms": (wall - busy) / steps,
                               "gpu_events": len(gpu) / steps}
        for c in summary["categories"].values():
            c["per_step"] = {"kernel_ms": c["kernel_ms"] / steps, "count": c["count"] / steps}
    return summary


def short(name: str, width: int = 90) -> str:
    """A kernel name readable in a table: namespaces that every aten kernel carries dropped, cut to width."""
    name = re.sub(r"^void |\(anonymous namespace\)::|\bat::native::|\bat_cuda_detail::", "", name).replace("|", "/")
    return name if len(name) <= width else name[:width - 3] + "..."


def to_markdown(s: dict) -> str:
    """The summary as a Markdown report (also what the CLI prints)."""
    lines = [f"# GPU time by category: {s['trace']}", ""]
    if s["status"] != "ok":
        return "\n".join(lines + [s["message"], ""])
    steps = s.get("steps")
    lines += [f"- device: {s.get('device_name') or 'unknown'}; GPU events: {s['gpu_events']} "
              f"({s['kernels']} kernels); not linked to a launch: {s['unlinked_gpu_events']}",
              f"- window (wall): {s['wall_ms']:.3f} ms; GPU busy: {s['busy_ms']:.3f} ms; "
              f"idle: {s['idle_ms']:.3f} ms ({100 * s['idle_share']:.1f}% of wall)"]
    if steps:
        p = s["per_step"]
        lines.append(f"- per step ({steps} steps): wall {p['wall_ms']:.3f} ms, busy {p['busy_ms']:.3f} ms, "
                     f"idle {p['idle_ms']:.3f} ms, {p['gpu_events']:.0f} GPU events")
    lines += ["", "| category | kernel ms | ms/step | % of busy | count | top kernel |",
              "|---|---:|---:|---:|---:|---|"]
    for name, c in s["categories"].items():
        if c["count"]:
            per = f"{c['per_step']['kernel_ms']:.3f}" if steps else "-"
            lines.append(f"| {name} | {c['kernel_ms']:.3f} | {per} | {100 * c['share_of_busy']:.1f} | "
                         f"{c['count']} | {short(c['top'][0]['name'], 60)} |")
    lines += ["", "Kernel time is summed, so kernels on concurrent streams can add up past busy time.", "",
              "## Top kernels per category", ""]
    for name, c in s["categories"].items():
        for t in c["top"]:
            lines.append(f"- {name}: {t['ms']:.3f} ms, {t['count']}x `{short(t['name'])}`")
    return "\n".join(lines + [""])


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launcher.records.trace_summary", description=__doc__.splitlines()[0])
    ap.add_argument("trace", type=Path, help="Chrome trace from torch.profiler (.json or .json.gz)")
    ap.add_argument("--steps", type=int, default=None, help="training steps in the window: adds per-step numbers")
    ap.add_argument("--json", type=Path, default=None, help="write the summary as JSON here")
    ap.add_argument("--md", type=Path, default=None, help="write the Markdown report here")
    a = ap.parse_args(argv)
    if a.steps is not None and a.steps < 1:
        ap.error(f"--steps must be >= 1, got {a.steps}")
    try:
        s = summarize(a.trace, a.steps)
    except (OSError, ValueError, KeyError, TypeError) as e:  # unreadable file, not JSON, not a Chrome trace
        print(f"trace_summary: error: cannot read {a.trace} as a Chrome trace: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 2
    text = to_markdown(s)
    print(text)
    if a.json:
        a.json.write_text(json.dumps(s, indent=1) + "\n")
    if a.md:
        a.md.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

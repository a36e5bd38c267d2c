"""Expert GEMMs in BF16 against FP8 on one GPU: what an FP8 expert path could gain at a model's real shapes (issue 17).

Why: FP8 only pays where its GEMMs are a large share of the step; on Hopper the experts' fast path is torch's
grouped GEMM (recipes/experts.py), whose FP8 sibling is torch._scaled_grouped_mm (row-wise scales, SM90). Before an
FP8 expert path is built, this measures each expert GEMM of one MoE layer both ways, with and without the
activation's quantization, and checks the FP8 result against the BF16 one.

    python -m recipes.gemm_bench --tokens 524288 --experts 128 --hidden 2048 --ffn 768 --out DIR

tokens = routed rows per micro batch (tokens x top-k); experts get equal shares (forced balance). Passes: fprop
(x [M, K] times each expert's [K, N]) and dgrad (the same kind of GEMM, N and K swapped) for fc1 (K = hidden,
N = 2 x ffn, SwiGLU) and fc2 (K = ffn, N = hidden); wgrad is BF16 only (its FP8 form needs scales per expert
and token range, which torch's row-wise scaled grouped GEMM does not take). Prints a table; writes
gemm_bench.json and gemm_bench.md to DIR.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Callable

import torch

from recipes.experts import grouped_mm

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3 value


def _rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] -> (FP8 values, FP32 scale per row) with x ~= values * scale."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / FP8_MAX
    return (x.float() / scale).to(FP8), scale.squeeze(-1)


def _time_ms(fn: Callable[[], torch.Tensor], iters: int) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def _ends(m: int, experts: int) -> torch.Tensor:
    """Each expert's end row in the sorted tokens (grouped_mm's offs): equal shares, as forced balance gives."""
    return torch.arange(1, experts + 1, device="cuda", dtype=torch.int32) * (m // experts)


def bench_pass(name: str, m: int, k: int, n: int, experts: int, iters: int) -> dict:
    """One grouped GEMM y [M, N] = x [M, K] times w[g] [N, K]^T per expert range, BF16 and FP8 row-wise."""
    gmm = grouped_mm()
    quantize = torch.compile(_rowwise, dynamic=False)  # one fused pass, as a real FP8 path would do it
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(experts, n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
    offs = _ends(m, experts)
    xq, xs = quantize(x)
    wq, ws = quantize(w)  # [G, N, K]: a scale per expert and output row, along K

    def bf16():
        return gmm(x, w.transpose(1, 2), offs=offs)

    def fp8():
        return torch._scaled_grouped_mm(xq, wq.transpose(1, 2), xs, ws, offs=offs, out_dtype=torch.bfloat16)

    def fp8_quantized():
        q, s = quantize(x)
        return torch._scaled_grouped_mm(q, wq.transpose(1, 2), s, ws, offs=offs, out_dtype=torch.bfloat16)

    flops = 2.0 * m * k * n
    row = {"pass": name, "m": m, "k": k, "n": n, "experts": experts}
    ref = bf16().float()
    try:
        got = fp8().float()
    except RuntimeError as e:  # this torch/GPU has no such kernel: say so in the table, time BF16 alone
        row["fp8_error"] = str(e).strip().splitlines()[0][:200]
        got = None
    timed = (("bf16", bf16),)
    if got is not None:
        row["rel_error_fp8"] = ((got - ref).norm() / ref.norm()).item()
        timed += (("fp8", fp8), ("fp8_with_quantize", fp8_quantized))
    for label, fn in timed:
        ms = _time_ms(fn, iters)
        row[f"{label}_ms"], row[f"{label}_tflops"] = ms, flops / ms / 1e9
    return row


def bench_wgrad(name: str, m: int, k: int, n: int, experts: int, iters: int) -> dict:
    """wgrad dW[g] [N, K] = dy[range g]^T x[range g]: BF16 grouped GEMM over the token axis."""
    gmm = grouped_mm()
    dy = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    offs = _ends(m, experts)
    ms = _time_ms(lambda: gmm(dy.t(), x, offs=offs), iters)
    return {"pass": name, "m": m, "k": k, "n": n, "experts": experts, "bf16_ms": ms,
            "bf16_tflops": 2.0 * m * k * n / ms / 1e9}


def run(tokens: int, experts: int, hidden: int, ffn: int, iters: int) -> dict:
    if tokens % (16 * experts):
        raise SystemExit(f"--tokens {tokens}: must be a multiple of 16 x experts ({16 * experts}): FP8 grouped "
                         f"GEMMs need 16-row-aligned expert ranges")
    rows = [bench_pass("fc1 fprop", tokens, hidden, 2 * ffn, experts, iters),
            bench_pass("fc1 dgrad", tokens, 2 * ffn, hidden, experts, iters),
            bench_pass("fc2 fprop", tokens, ffn, hidden, experts, iters),
            bench_pass("fc2 dgrad", tokens, hidden, ffn, experts, iters),
            bench_wgrad("fc1 wgrad", tokens, hidden, 2 * ffn, experts, iters),
            bench_wgrad("fc2 wgrad", tokens, ffn, hidden, experts, iters)]
    bf16 = sum(r["bf16_ms"] for r in rows)
    # FP8 where it exists (fprop, dgrad, with the activation's quantization), BF16 wgrad
    fp8 = sum(r.get("fp8_with_quantize_ms", r["bf16_ms"]) for r in rows)
    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "tokens": tokens,
            "experts": experts, "hidden": hidden, "ffn": ffn, "iters": iters, "rows": rows,
            "layer_bf16_ms": bf16, "layer_fp8_ms": fp8, "layer_speedup": bf16 / fp8}


def markdown(result: dict) -> str:
    lines = [f"# Expert GEMMs, BF16 vs FP8 row-wise: {result['device']}, torch {result['torch']}", "",
             f"{result['tokens']} routed rows, {result['experts']} experts (equal shares), hidden "
             f"{result['hidden']}, ffn {result['ffn']}; mean of {result['iters']} calls after 3 warm-up calls.", "",
             "| pass | M x K x N | BF16 ms (TFLOP/s) | FP8 ms (TFLOP/s) | FP8 + quantize ms | FP8 rel. error |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        fp8 = f"{r['fp8_ms']:.3f} ({r['fp8_tflops']:.0f})" if "fp8_ms" in r else "-"
        quant = f"{r['fp8_with_quantize_ms']:.3f}" if "fp8_ms" in r else "-"
        err = f"{r['rel_error_fp8']:.4f}" if "fp8_ms" in r else r.get("fp8_error", "-")
        lines.append(f"| {r['pass']} | {r['m']} x {r['k']} x {r['n']} | {r['bf16_ms']:.3f} ({r['bf16_tflops']:.0f}) "
                     f"| {fp8} | {quant} | {err} |")
    lines += ["", f"One MoE layer's expert GEMMs (forward and backward): BF16 {result['layer_bf16_ms']:.2f} ms, "
              f"FP8 fprop/dgrad with quantization + BF16 wgrad {result['layer_fp8_ms']:.2f} ms: "
              f"{result['layer_speedup']:.2f}x."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=524288, help="routed rows (tokens x top-k) per micro batch")
    p.add_argument("--experts", type=int, default=128)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--ffn", type=int, default=768, help="moe_ffn_hidden_size")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("recipes.gemm_bench needs a GPU")
    result = run(a.tokens, a.experts, a.hidden, a.ffn, a.iters)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "gemm_bench.json"), "w") as f:
        json.dump(result, f, indent=1)
    text = markdown(result)
    with open(os.path.join(a.out, "gemm_bench.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

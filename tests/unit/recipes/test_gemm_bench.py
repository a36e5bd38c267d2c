"""recipes/gemm_bench.py on the login side: its refusal of unaligned shapes and its table (the timings come from the
GPU host: perf_results/tuning/fp8_expert_gemm_h200)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipes import gemm_bench

MEASURED = Path(__file__).resolve().parents[3] / "perf_results" / "tuning" / "fp8_expert_gemm_h200"


def test_expert_ranges_must_be_16_row_aligned_for_fp8():
    with pytest.raises(SystemExit, match="multiple of 16 x experts"):
        gemm_bench.run(tokens=1000, experts=128, hidden=64, ffn=32, iters=1)


def test_the_committed_table_is_what_markdown_makes_of_the_committed_json():
    result = json.loads((MEASURED / "gemm_bench.json").read_text())
    assert gemm_bench.markdown(result) == (MEASURED / "gemm_bench.md").read_text()
    # the layer total is the sum of its rows: FP8 where measured (with the quantization), BF16 wgrad
    rows = result["rows"]
    assert result["layer_fp8_ms"] == pytest.approx(sum(r.get("fp8_with_quantize_ms", r["bf16_ms"]) for r in rows))


def test_a_missing_fp8_kernel_is_a_table_cell_not_a_crash():
    row = {"pass": "fc1 fprop", "m": 32, "k": 16, "n": 16, "experts": 2, "bf16_ms": 1.0, "bf16_tflops": 0.0,
           "fp8_error": "scaled_grouped_mm: not supported on this device"}
    result = {"device": "cpu", "torch": "x", "tokens": 32, "experts": 2, "hidden": 16, "ffn": 8, "iters": 1,
              "rows": [row], "layer_bf16_ms": 1.0, "layer_fp8_ms": 1.0, "layer_speedup": 1.0}
    assert "| - | - | scaled_grouped_mm: not supported on this device |" in gemm_bench.markdown(result)

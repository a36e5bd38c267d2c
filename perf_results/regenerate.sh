#!/usr/bin/env bash
# Regenerate everything generated under perf_results/ (records, tables, plots, comparisons) from the run
# directories and references.yaml. No GPU needed. usage: bash perf_results/regenerate.sh  (from the repo root)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
runs=perf_results/runs
cmp() { $PY -m launcher.records.compare "$runs/$1" --ref "$2" --out "perf_results/compare/$1__vs__$(basename "$2").md" --perf-results > /dev/null; }
rm -f perf_results/compare/*.md
# the 2-GPU Qwen3-30B-A3B-shape runs against their like-for-like references (issue 6) ...
cmp qwen3_30b_a3b_8l_ep2_dropless issue6_h200x2_qwen3_30b_a3b_8l_ep2_dropless
cmp qwen3_30b_a3b_8l_ep2_forced_balance issue6_h200x2_qwen3_30b_a3b_8l_ep2_forced_balance
# ... against each other (routing differs: flagged) and against the full model elsewhere (issue 7: flagged)
cmp qwen3_30b_a3b_8l_ep2_forced_balance "$runs/qwen3_30b_a3b_8l_ep2_dropless"
cmp qwen3_30b_a3b_8l_ep2_forced_balance issue7_nemo_automodel_h100x8_qwen3_30b_a3b
# the 1-GPU 4-layer MBS 1 run against issue 6's 1x H100 figure (the run recorded no GPU model: flagged)
cmp qwen3_30b_a3b_4l_1gpu_mbs1 issue6_h100x1_qwen3_30b_a3b_4l
# Megatron's local layers (no TE) on a recorded H100 vs the same shape with TE (GPU not recorded)
cmp qwen3_30b_a3b_4l_1gpu_local_mbs1 "$runs/qwen3_30b_a3b_4l_1gpu_mbs1"
# moe-bench results (issue 6): both sides' steady state rebuilt from each bench directory's files
for b in perf_results/bench/*/; do $PY -m launcher.tools.bench --summarize "$b" --perf-results > /dev/null; done
$PY -m launcher.records.record perf_results/issue13/*/ > /dev/null  # issue 13: a killed run and its resume (not results rows)
$PY -m launcher.records.results "$runs"/* --readme perf_results/README.md --plots perf_results/plots \
  --compare-dir perf_results/compare --summary README.md --perf-results

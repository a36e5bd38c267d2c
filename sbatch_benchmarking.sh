#!/usr/bin/env bash
# Megatron-MoE-ModelZoo's entry point on this launcher: the same environment variables (MODEL, NNODES,
# TP, PP, VPP, EP, ETP, CP, MBS, GBS, SEQ_LEN, PR, DISPATCHER, A2A_OVERLAP, OPTIMIZER_OFFLOAD, PROFILE,
# RUN_TIME, DRY_RUN, CONTAINER_IMAGE, CONTAINER_MOUNTS, ACCOUNT, PARTITION, ...) and trailing Megatron
# flags. launcher/tools/modelzoo.py translates them into moe-launch overrides and runs moe-launch cluster=slurm;
# nothing is implemented twice. DRY_RUN=1 prints the sbatch script that would be submitted.
#
#   NNODES=32 MODEL=Qwen3-235B-A22B PP=8 VPP=4 TP=4 EP=8 CP=2 GBS=256 SEQ_LEN=32768 PR=bf16 \
#       A2A_OVERLAP=0 OPTIMIZER_OFFLOAD=0 bash sbatch_benchmarking.sh \
#       --recompute-granularity selective --recompute-modules layernorm moe
set -euo pipefail
HERE=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
# this checkout's virtual environment when there is one, else the python on PATH (MOE_PYTHON overrides)
PY=${MOE_PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x "$HERE/.venv/bin/python" ]; then PY="$HERE/.venv/bin/python"; else PY=python3; fi
fi
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m launcher.tools.modelzoo "$@"

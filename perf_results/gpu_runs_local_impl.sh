#!/usr/bin/env bash
# The two runs made to check, on a real GPU, that every run measures itself (versions.json from rank 0,
# the status line, record.json/record.md written by the executor): runs/tiny_moe_1gpu_local and
# runs/qwen3_30b_a3b_4l_1gpu_local_mbs1. Exactly as executed on the device machine (1x H100 80GB HBM3,
# torch 2.11.0+cu130) from the working tree at 2e7c978 plus the uncommitted record/results work, with
# megatron-core and hydra from .gpu-host/base and NO Transformer Engine (model.transformer_impl=local:
# Megatron's local spec, no grouped GEMM; slower than the TE runs by design, not tuned).
# usage: bash perf_results/gpu_runs_local_impl.sh OUTDIR
set -u
OUT=$1
python3 -m pip install -q --no-index --no-deps --target /tmp/site $(ls .gpu-host/base/*.whl | grep -v transformer_engine)
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -m launcher cluster.gpus_per_node=1 model.transformer_impl=local train.train_iters=20 \
  launch.run_dir=$OUT/runs/tiny_moe_1gpu_local > $OUT/tiny.out 2>&1; echo tiny rc=$?
python3 -m launcher model=qwen3_30b_a3b model.num_layers=4 model.transformer_impl=local train=pretrain \
  train.micro_batch_size=1 train.global_batch_size=8 train.train_iters=15 cluster.gpus_per_node=1 \
  launch.run_dir=$OUT/runs/qwen3_30b_a3b_4l_1gpu_local_mbs1 > $OUT/q.out 2>&1; echo qwen rc=$?

#!/usr/bin/env bash
# The GPU-host runs behind perf_results/*.md, exactly as executed (after the staging in
# ../shared/gpu-host/README.md). usage: bash perf_results/gpu_host_runs.sh tests|tiny|qwen3 OUTDIR
set -uo pipefail
source /root/gpu-host.env
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
what=$1 out=$2
mkdir -p "$out"
versions() {
  python3 - <<'PY'
import torch, megatron.core, transformer_engine
print("torch", torch.__version__, "cuda", torch.version.cuda, "nccl", ".".join(map(str, torch.cuda.nccl.version())))
print("megatron-core", megatron.core.__version__, "transformer-engine", transformer_engine.__version__)
print("gpus", torch.cuda.device_count(), torch.cuda.get_device_name(0))
PY
}
keep() {  # keep the run directory's record files (the device returns at most 8 files)
  mkdir -p "$out/$1"; cp "/tmp/runs/$1/train.log" "/tmp/runs/$1/plan.json" "$out/$1/" 2>/dev/null || true
}
case $what in
  tests)
    versions | tee "$out/versions.txt"
    python3 -m pytest -m gpu tests/gpu -v -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log" | tail -15
    ;;
  tiny)
    python3 -m launcher cluster.gpus_per_node=1 train.train_iters=30 launch.run_dir=/tmp/runs/tiny_moe_1gpu \
      > /tmp/tiny.out 2>&1; echo "rc=$?"; tail -4 /tmp/tiny.out; keep tiny_moe_1gpu
    ;;
  qwen3)
    for routing in dropless forced_balance; do
      python3 -m launcher model=qwen3_30b_a3b model.num_layers=8 parallel=ep2 train=pretrain \
        train.micro_batch_size=4 train.global_batch_size=32 train.train_iters=20 train.routing=$routing \
        cluster.gpus_per_node=2 launch.run_dir=/tmp/runs/qwen3_30b_a3b_8l_ep2_$routing > /tmp/q.out 2>&1
      echo "$routing rc=$?"; grep -E "iteration +20/|error" /tmp/q.out | tail -3
      keep qwen3_30b_a3b_8l_ep2_$routing
    done
    ;;
esac

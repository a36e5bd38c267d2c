#!/usr/bin/env bash
# Issue 18's GPU-host runs: the estimator against Megatron's memory report on configurations the earlier records
# do not vary (recompute, PP, TP, no distributed optimizer, precision-aware optimizer, FP8, another family).
# usage (2x H200, after the staging in ../shared/gpu-host/README.md):
#   bash perf_results/gpu_host_issue18.sh one|two OUTDIR    # one: 1-GPU runs, two at a time; two: 2-GPU runs
#   bash perf_results/gpu_host_issue18.sh more OUTDIR       # the two 1-GPU runs that lost the port race, one at a time
#   bash perf_results/gpu_host_issue18.sh planner OUTDIR    # moe-plan's top choice for the 2-GPU shape, 12 steps
# Each run directory comes back in OUTDIR/runs_<case>.tar.gz; `python -m launcher.records.record` rebuilds
# the records here and `python -m launcher.tools.estimate_calibration --write` the comparison table.
set -uo pipefail
source /root/gpu-host.env
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
what=$1 out=$2
mkdir -p "$out" /tmp/runs
q30=(model=qwen3_30b_a3b train=pretrain hardware=h200 train.train_iters=6 train.lr_warmup_iters=1
     train.checkpoint.enabled=false)  # memory runs: a checkpoint would only cost disk and minutes
run() {  # run NAME GPUS overrides...: one moe-launch run, its directory under /tmp/runs
  local name=$1 gpus=$2; shift 2
  python3 -m launcher "$@" launch.run_dir=/tmp/runs/$name > /tmp/runs/$name.out 2>&1
  echo "$name rc=$? $(grep -E 'record .*record.json' /tmp/runs/$name.out | sed 's/.*record.json: //')"
}
case $what in
  one)
    CUDA_VISIBLE_DEVICES=0 run calib_q30b_4l_mbs2_recompute_norm_act 1 "${q30[@]}" model.num_layers=4 \
      train.micro_batch_size=2 train.global_batch_size=8 recompute=norm_act cluster.gpus_per_node=1 &
    CUDA_VISIBLE_DEVICES=1 run calib_q30b_4l_mbs2_recompute_full 1 "${q30[@]}" model.num_layers=4 \
      train.micro_batch_size=2 train.global_batch_size=8 recompute=full cluster.gpus_per_node=1 &
    wait
    CUDA_VISIBLE_DEVICES=0 run calib_q30b_4l_mbs2_precision_aware_opt 1 "${q30[@]}" model.num_layers=4 \
      train.micro_batch_size=2 train.global_batch_size=8 precision.use_precision_aware_optimizer=true \
      precision.exp_avg_dtype=bf16 precision.exp_avg_sq_dtype=bf16 cluster.gpus_per_node=1 &
    CUDA_VISIBLE_DEVICES=1 run calib_q30b_4l_mbs2_fp8_blockwise 1 "${q30[@]}" model.num_layers=4 \
      train.micro_batch_size=2 train.global_batch_size=8 precision=fp8_blockwise cluster.gpus_per_node=1 &
    wait
    ;;
  more)
    run calib_q30b_4l_mbs2_recompute_full 1 "${q30[@]}" model.num_layers=4 \
      train.micro_batch_size=2 train.global_batch_size=8 recompute=full cluster.gpus_per_node=1
    run calib_q30b_4l_mbs2_precision_aware_opt 1 "${q30[@]}" model.num_layers=4 \
      train.micro_batch_size=2 train.global_batch_size=8 precision.use_precision_aware_optimizer=true \
      precision.exp_avg_dtype=bf16 precision.exp_avg_sq_dtype=bf16 cluster.gpus_per_node=1
    ;;
  planner)  # moe-plan's top choice (data parallel, EP 1, MBS 4) against the EP2 bench preset's 338.6 measured
    python3 -m launcher.tools.planner preset=qwen3_30b_a3b_8l_2xh200_ep2_bench_bf16 --gpus 2 --seq 4096 --gbs 32 \
      --dispatchers alltoall,allgather --top 3 --megatron-check 1 2>&1 | tail -12
    run calib_planner_top_q30b_8l_2xh200 2 preset=qwen3_30b_a3b_8l_2xh200_ep2_bench_bf16 parallel.ep=1 \
      dispatcher.overlap_moe_expert_parallel_comm=false \
      train.micro_batch_size=4 train.train_iters=12 train.checkpoint.enabled=false cluster.gpus_per_node=2
    ;;
  two)
    run calib_q30b_8l_pp2_mbs2 2 "${q30[@]}" model.num_layers=8 parallel.pp=2 train.micro_batch_size=2 \
      train.global_batch_size=16 cluster.gpus_per_node=2
    run calib_q30b_4l_tp2_mbs2 2 "${q30[@]}" model.num_layers=4 parallel.tp=2 train.micro_batch_size=2 \
      train.global_batch_size=8 cluster.gpus_per_node=2
    run calib_q30b_4l_dp2_no_distopt 2 "${q30[@]}" model.num_layers=4 parallel.use_distributed_optimizer=false \
      parallel.overlap_param_gather=false \
      train.micro_batch_size=2 train.global_batch_size=16 cluster.gpus_per_node=2
    run calib_dsv2lite_4l_ep2_mbs1 2 model=deepseek_v2_lite train=pretrain hardware=h200 train.train_iters=6 \
      train.lr_warmup_iters=1 model.num_layers=4 parallel=ep2 train.micro_batch_size=1 train.global_batch_size=8 \
      cluster.gpus_per_node=2
    ;;
esac
cd /tmp/runs && for d in calib_*/; do rm -rf "${d}checkpoints"; done
tar czf "$out/runs_$what.tar.gz" $(ls -d calib_*/ 2>/dev/null) *.out
ls -la "$out"

#!/usr/bin/env bash
# Issue 17, item 2 on the 2x H200 GPU host (after the staging in ../shared/gpu-host/README.md): the EP2 bench preset
# (Qwen3-30B-A3B cut to 8 layers, EP 2, seq 4096, GBS 32, BF16, 12 steps) with what one H200 measured on
# 2026-12-01: the lean loss forming its gradient in backward (MBS 8 now fits: predicted 96.3 GiB per GPU, was an
# OOM in the native loss's logits; one rank's work on one GPU peaked at 100.5 GiB and ran 431.1 TFLOP/s forced,
# 421.3 dropless, the ceiling here: gpu_host_issue17_rank.sh), per routing and dispatcher. Targets: 400 TFLOP/s/GPU forced balance, 380 dropless.
# usage: [DISPATCHERS="alltoall hybridep"] [MBS="4 8"] [EXTRA="k=v ..." TAG=_x] \
#          bash perf_results/gpu_host_issue17_ep2.sh OUTDIR
#   hybridep needs deep_ep (the hybrid-ep branch, built outside the repository: perf_results/gpu_host_issue16.sh)
#   EXTRA: more overrides for every run, TAG: a suffix for their names. Next to try (2026-12-01): fewer gradient
#   buckets. This shape cuts 5 dense and 16 expert buckets (train.log), and with the overlap each bucket runs
#   Megatron's NaN check as a host sync in the last micro batch's backward (42 a step; on one GPU 20 such syncs cost
#   2.0%: perf_results/tuning/README.md). The experts' reduce group has one rank here, so their buckets hide
#   nothing: EXTRA="megatron.raw=[--ddp-bucket-size,1000000000]" TAG=_bucket1g
# Each run's record goes into OUTDIR/ep2_runs.tar.gz, rewritten after each run (a call's limit keeps the finished
# ones); one summary line per run.
set -uo pipefail
if [ -f /root/gpu-host.env ]; then source /root/gpu-host.env; fi
source perf_results/gpu_host_lib.sh
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
out=${1:?usage: bash perf_results/gpu_host_issue17_ep2.sh OUTDIR}
w=/tmp/i17ep2
mkdir -p "$out" "$w/runs"
# measurement runs: no checkpoint (an 8-layer save is ~78 GB and minutes of writing)
steps=(train.train_iters=12 train.lr_warmup_iters=2 train.checkpoint.enabled=false)
for d in ${DISPATCHERS:-alltoall}; do for mbs in ${MBS:-4 8}; do for routing in forced_balance dropless; do
  name=issue17_q30b_8l_ep2_${d}_${routing}_mbs${mbs}${TAG:-}
  python3 -m launcher preset=qwen3_30b_a3b_8l_2xh200_ep2_bench_bf16 dispatcher=$d train.routing=$routing \
    train.micro_batch_size=$mbs "${steps[@]}" ${EXTRA:-} launch.run_dir=$w/runs/$name > $w/$name.out 2>&1
  echo "$name rc=$?"
  record_summary $w/runs/$name
  tar czf "$out/ep2_runs.tar.gz" -C "$w/runs" $(cd $w/runs && ls)
done; done; done

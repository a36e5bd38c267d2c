#!/usr/bin/env bash
# Issue 17 on one H200 (after the staging in ../shared/gpu-host/README.md): the lean loss (recipes/loss.py,
# train.cross_entropy_fusion_impl=lean, the auto choice on GPUs) against Megatron's native fused loss, on the
# one-GPU bench preset (Qwen3-30B-A3B cut to 4 layers, seq 4096, GBS 16, BF16, dropless, 12 steps), then moe-bench
# against the transformers peer's MBS 8 (its best micro batch in perf_results/bench/peer_qwen3_30b_a3b_4l_1gpu_h200).
# usage: bash perf_results/gpu_host_issue17_loss.sh test|ab|bench OUTDIR
#   test   the GPU test: lean vs native loss and gradient at vocabulary 151,936, and both peaks
#   ab     moe-launch: native MBS 8, lean MBS 8, lean MBS 16 (fits with the lean loss: predicted 118 GiB; native
#          is refused at 137), each record into OUTDIR/runs.tar.gz after the run
#   bench  moe-bench, ours at MBS ${MBS:-8} with the defaults (or dispatcher.type=$DISP, and any $EXTRA overrides),
#          the peer at MBS 8, one profiled iteration each
#   ab2    (2026-12-01, after the loss's backward scale became one compiled pass) lean MBS 16 with the all-to-all
#          dispatcher and with the all-gather one (at EP 1 the all-to-all's two chunk sorts per layer are copies that
#          change nothing); writes the faster one to $w/best_dispatcher for a following `bench` call
#   ab3    (2026-12-01, third round) lean MBS 16, all-gather, 20 steps: as the preset runs it, then with
#          parallel.overlap_grad_reduce=false overlap_param_gather=false (at data-parallel size 1 the overlap has no
#          communication to hide, but its 10 gradient buckets each run Megatron's NaN/Inf check of the bucket's norm,
#          a host sync in the middle of backward: 20 per step), then that without the NaN check (to size the syncs)
#   fp8gemm recipes/gemm_bench.py at the MBS 8 shape (8 x 4096 tokens x top-8 routed rows, 128 experts)
set -uo pipefail
source /root/gpu-host.env
source perf_results/gpu_host_lib.sh
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
what=$1 out=$2 w=/tmp/i17l
mkdir -p "$out" "$w/runs"
run_preset() {  # run_preset NAME ITERS OVERRIDE...: the one-H200 bench preset without checkpoints; rc, last line, record
  local name=$1 iters=$2; shift 2
  python3 -m launcher preset=qwen3_30b_a3b_4l_1xh200_bench_bf16 train.train_iters=$iters train.lr_warmup_iters=2 \
    train.checkpoint.enabled=false "$@" launch.run_dir=$w/runs/$name > $w/$name.out 2>&1
  echo "$name rc=$?"; grep -E "iteration +$iters/" $w/$name.out | cut -c1-220
  record_summary $w/runs/$name
}
case $what in
  test)
    python3 -m pytest -m gpu tests/gpu/test_loss_gpu.py -v -s -p no:cacheprovider 2>&1 | tee "$out/test_loss_gpu.log" | tail -8
    ;;
  ab)
    for v in native:8 lean:8 lean:16; do
      impl=${v%:*} mbs=${v#*:}
      run_preset qwen3_30b_a3b_4l_1gpu_${impl}_loss_mbs$mbs 12 train.cross_entropy_fusion_impl=$impl \
        train.micro_batch_size=$mbs
      tar czf "$out/runs.tar.gz" -C "$w/runs" $(cd $w/runs && ls)
    done
    ;;
  bench)
    python3 -m launcher.tools.bench --peer-mbs 8 --profile 9:9 --out $w/bench preset=qwen3_30b_a3b_4l_1xh200_bench_bf16 \
      train.micro_batch_size=${MBS:-8} ${DISP:+dispatcher.type=$DISP} ${EXTRA:-} train.train_iters=9 train.lr_warmup_iters=2 train.checkpoint.enabled=false \
      > $w/bench.out 2>&1
    echo "moe-bench rc=$?"; tail -5 $w/bench.out; sed -n 5,12p $w/bench/bench.md
    head -22 $w/bench/ours/profile/summary_rank0.md
    tar czf "$out/bench.tar.gz" -C "$w" bench bench.out
    ;;
  ab2)
    for d in alltoall allgather; do
      run_preset qwen3_30b_a3b_4l_1gpu_lean_loss_mbs16_$d 12 dispatcher.type=$d train.micro_batch_size=16
      tar czf "$out/runs2.tar.gz" -C "$w/runs" $(cd $w/runs && ls -d *_alltoall *_allgather 2>/dev/null)
    done
    python3 - "$w" <<'PY'
import json, sys
w = sys.argv[1]
tok = {d: json.load(open(f"{w}/runs/qwen3_30b_a3b_4l_1gpu_lean_loss_mbs16_{d}/record.json"))["steady_state"]
       ["tokens_per_s_per_gpu"]["median"] for d in ("alltoall", "allgather")}
best = max(tok, key=tok.get)
print("tokens/s/GPU", tok, "best", best)
open(f"{w}/best_dispatcher", "w").write(best)
PY
    ;;
  ab3)
    for v in base:'' no_overlap:'parallel.overlap_grad_reduce=false parallel.overlap_param_gather=false' \
             no_overlap_no_nan_check:"parallel.overlap_grad_reduce=false parallel.overlap_param_gather=false megatron.raw=[--no-check-for-nan-in-loss-and-grad]"; do
      # ${v#*:} unquoted: the variant's overrides as separate words
      run_preset qwen3_30b_a3b_4l_1gpu_mbs16_allgather_${v%%:*} 20 dispatcher.type=allgather train.micro_batch_size=16 \
        ${v#*:}
      tar czf "$out/runs3.tar.gz" -C "$w/runs" $(cd $w/runs && ls -d *_mbs16_allgather_* 2>/dev/null)
    done
    ;;
  fp8gemm)
    python3 -m recipes.gemm_bench --tokens 262144 --out "$out/gemm_bench_mbs8" 2>&1 | tail -16
    ;;
esac

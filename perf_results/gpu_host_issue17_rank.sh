#!/usr/bin/env bash
# Issue 17 item 2 on one H200 (the only kind lent since the fourth session): the EP2 bench shape's work per GPU.
# At EP 2 with GBS 32 each rank runs attention, router and LM head for its own 16 sequences, and the experts for 64
# of the 128 experts with the tokens routed to them from both ranks: balanced top 8 of 128 gives each expert
# 2 ranks x MBS x 4096 x 8 / 128 = MBS x 4096 x 8 / 64 tokens, what one GPU holding 64 experts (top 8) gets from
# its own MBS x 4096 tokens. So the preset with model.num_experts=64, one GPU and GBS 16 runs the same kernels on the
# same shapes, the same micro batches per step and the same FLOPs per token by Megatron's formula; it lacks only
# the expert-parallel all-to-all and the dense gradients' all-reduce over 2 ranks. Its throughput bounds what EP 2
# can reach at that micro batch; against the EP2 record at the same micro batch it sizes the communication's cost.
# usage: bash perf_results/gpu_host_issue17_rank.sh OUTDIR [MBS:ROUTING[:OVERRIDE,...] ...]
#   default runs: 4:forced_balance 8:forced_balance 8:dropless; e.g. 8:forced_balance:train.kernel_profile=9:9
#   profiles iteration 9 (recipes/profiling.py writes the summary into the run's profile/)
# Each run's record goes into OUTDIR/rank_runs.tar.gz, rewritten after each run; one summary line per run.
set -uo pipefail
if [ -f /root/gpu-host.env ]; then source /root/gpu-host.env; fi
source perf_results/gpu_host_lib.sh
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
out=${1:?usage: bash perf_results/gpu_host_issue17_rank.sh OUTDIR [MBS:ROUTING[:OVERRIDE,...] ...]}; shift
w=/tmp/i17rank
mkdir -p "$out" "$w/runs"
for spec in "${@:-4:forced_balance 8:forced_balance 8:dropless}"; do for spec in $spec; do
  IFS=: read -r mbs routing more <<< "$spec"
  extra=(); [ -n "$more" ] && IFS=, read -ra extra <<< "$more"
  tag=$(printf '%s' "$more" | tr -c 'a-zA-Z0-9\n' '_' | sed 's/^\(.\)/_\1/')
  name=issue17_q30b_8l_rank_of_ep2_${routing}_mbs${mbs}${tag}
  python3 -m launcher preset=qwen3_30b_a3b_8l_2xh200_ep2_bench_bf16 parallel=single cluster.gpus_per_node=1 \
    model.num_experts=64 train.global_batch_size=16 train.micro_batch_size=$mbs train.routing=$routing \
    train.train_iters=12 train.lr_warmup_iters=2 train.checkpoint.enabled=false "${extra[@]}" \
    launch.run_dir=$w/runs/$name > $w/$name.out 2>&1
  echo "$name rc=$?"
  record_summary $w/runs/$name
  [ -f $w/runs/$name/profile/summary_rank0.md ] && head -24 $w/runs/$name/profile/summary_rank0.md
  tar czf "$out/rank_runs.tar.gz" -C "$w/runs" $(cd $w/runs && ls)
done; done

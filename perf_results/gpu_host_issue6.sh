#!/usr/bin/env bash
# Issue 6 on the 2x H200 GPU host, exactly as executed (after the staging in ../shared/gpu-host/README.md).
# Work lives in /tmp/i6 (kept between calls on a warm machine); each case tars what it made into OUTDIR.
# usage: bash perf_results/gpu_host_issue6.sh tune1|tune2|bench OUTDIR
#   tune1  GPU 0: the one-GPU tuning chain (perf_results/tuning/qwen3_30b_a3b_4l_1gpu.yaml)
#          GPU 1: the transformers peer at several micro batches (4 and 8 layers), then our FP8 runs
#   tune2  both GPUs: the EP2 chain from the measured EP2 preset; then dropless with the kept settings
#   overlap  both GPUs: the EP2 preset with the EP all-to-all overlap (after the forward-step fix)
#   bench  moe-bench at the kept settings, both sides profiled: 1 GPU (4 layers), 2 GPUs EP2 (8 layers)
set -uo pipefail
source /root/gpu-host.env
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
what=$1 out=$2 w=/tmp/i6
mkdir -p "$out" "$w"
q4=(model=qwen3_30b_a3b model.num_layers=4 train=pretrain train.global_batch_size=16 train.train_iters=9
    train.lr_warmup_iters=2 hardware=h200)
q8=(model=qwen3_30b_a3b model.num_layers=8 train=pretrain train.global_batch_size=32 train.train_iters=9
    train.lr_warmup_iters=2 hardware=h200)
pack() { tar czf "$out/$1.tar.gz" --exclude='*.json.gz' -C "$w" "${@:2}"; }
case $what in
  tune1)
    python3 -c "import torch, transformer_engine.pytorch, transformer_engine_torch as t; print('cublasLt', t.get_cublasLt_version(), torch.cuda.get_device_name(0))"
    CUDA_VISIBLE_DEVICES=0 python3 -m launcher.tools.tune perf_results/tuning/qwen3_30b_a3b_4l_1gpu.yaml --out $w/t1 \
      cluster.master_port=29500 > $w/t1.out 2>&1 &
    (
      export CUDA_VISIBLE_DEVICES=1
      python3 -m launcher.tools.bench --no-ours --peer-mbs 1,2,4,8 --out $w/peer4l "${q4[@]}" cluster.gpus_per_node=1 \
        cluster.device=cuda cluster.master_port=29600
      python3 -m launcher.tools.bench --no-ours --peer-mbs 2,4,8 --out $w/peer8l "${q8[@]}" cluster.gpus_per_node=1 \
        cluster.device=cuda cluster.master_port=29600
      for r in blockwise tensorwise; do
        python3 -m launcher "${q4[@]}" precision=fp8_$r train.micro_batch_size=4 dispatcher.permute_fusion=true \
          dispatcher.router_fusion=true train.cross_entropy_loss_fusion=true cluster.gpus_per_node=1 \
          cluster.master_port=29600 launch.run_dir=$w/fp8/q4_fp8_${r}_mbs4 > /dev/null 2>&1; echo "fp8 $r rc=$?"
      done
    ) > $w/gpu1.out 2>&1
    wait
    cat $w/gpu1.out | grep -E "moe-bench|fp8|error" ; cat $w/t1/tuning_log.md
    for d in peer4l peer8l; do cat $w/$d/bench.md | sed -n 5,12p; done
    pack tune1 t1 peer4l peer8l fp8 t1.out gpu1.out
    ;;
  tune1b)  # the chain again (tune1's command line was refused by moe-tune's parser), GPU 1 profiles both sides
    CUDA_VISIBLE_DEVICES=0 timeout 560 python3 -m launcher.tools.tune perf_results/tuning/qwen3_30b_a3b_4l_1gpu.yaml \
      --out $w/t1 cluster.master_port=29500 > $w/t1.out 2>&1 &
    CUDA_VISIBLE_DEVICES=1 python3 -m launcher.tools.bench --peer-mbs 8 --profile 9:9 --out $w/prof4l "${q4[@]}" \
      train.micro_batch_size=4 dispatcher.permute_fusion=true dispatcher.router_fusion=true \
      train.cross_entropy_loss_fusion=true cluster.gpus_per_node=1 cluster.master_port=29600 > $w/prof4l.out 2>&1
    wait
    cat $w/t1/tuning_log.md; cat $w/prof4l/bench.md | sed -n 5,9p
    cat $w/prof4l/ours/profile/summary_rank0.md | head -30; cat $w/prof4l/peer_mbs8/profile/summary_rank0.md | head -30
    tar czf "$out/tune1b.tar.gz" -C "$w" t1 t1.out prof4l prof4l.out
    ;;
  final)  # torch grouped-GEMM experts (recipes/experts.py) on top of what the one-GPU chain kept
    fuse=(dispatcher.permute_fusion=true dispatcher.router_fusion=true train.cross_entropy_loss_fusion=true
          model.moe_grouped_gemm_impl=torch)
    CUDA_VISIBLE_DEVICES=0 python3 -m launcher.tools.bench --peer-mbs 8 --profile 9:9 --out $w/bench_1gpu_torch_mbs8 \
      "${q4[@]}" "${fuse[@]}" train.micro_batch_size=8 cluster.gpus_per_node=1 cluster.master_port=29500 \
      > $w/b1.out 2>&1 &
    CUDA_VISIBLE_DEVICES=1 python3 -m launcher "${q4[@]}" "${fuse[@]}" train.micro_batch_size=4 cluster.gpus_per_node=1 \
      cluster.master_port=29600 launch.run_dir=$w/runs/q4_torch_mbs4 > $w/r1.out 2>&1; echo "q4 mbs4 rc=$?"
    wait; tail -3 $w/r1.out; sed -n 5,9p $w/bench_1gpu_torch_mbs8/bench.md; head -22 $w/bench_1gpu_torch_mbs8/ours/profile/summary_rank0.md
    for r in forced_balance dropless; do
      python3 -m launcher "${q8[@]}" "${fuse[@]}" parallel=ep2 train.micro_batch_size=4 train.routing=$r \
        cluster.gpus_per_node=2 launch.run_dir=$w/runs/q8_ep2_torch_mbs4_$r > $w/r_$r.out 2>&1; echo "$r rc=$?"
      grep -E "iteration +9/" $w/r_$r.out | cut -c1-160; tail -2 $w/r_$r.out
    done
    tar czf "$out/final.tar.gz" -C "$w" bench_1gpu_torch_mbs8 runs b1.out r1.out
    ;;
  tune2)
    # the chain starts from the measured EP2 preset (its base), so it needs no one-GPU chain on this host
    python3 -m launcher.tools.tune perf_results/tuning/qwen3_30b_a3b_8l_ep2.yaml --out $w/t2 > $w/t2.out 2>&1
    cat $w/t2/tuning_log.md
    kept=$(python3 -c "import json; print(' '.join(json.load(open('$w/t2/tune.json'))['kept_overrides']))")
    python3 -m launcher $kept train.routing=dropless train.train_iters=12 launch.run_dir=$w/t2/dropless_kept \
      > /dev/null 2>&1; echo "dropless rc=$?"
    python3 -m launcher.records.record $w/t2/dropless_kept | tail -3
    pack tune2 t2 t2.out
    ;;
  overlap)  # the EP2 chain's A2A overlap attempt again, after the forward step learned return_schedule_plan
    name=qwen3_30b_a3b_8l_ep2_torch_experts_a2a_overlap_forced_balance
    python3 -m launcher preset=qwen3_30b_a3b_8l_2xh200_ep2_bench_bf16 dispatcher.overlap_moe_expert_parallel_comm=true \
      train.train_iters=9 train.lr_warmup_iters=2 launch.run_dir=$w/$name > $w/$name.out 2>&1; echo "$name rc=$?"
    tail -3 $w/$name.out
    pack overlap $name
    ;;
  bench)
    k1=$(python3 -c "import json; print(' '.join(json.load(open('$w/t1/tune.json'))['kept_overrides']))")
    k2=$(python3 -c "import json; print(' '.join(json.load(open('$w/t2/tune.json'))['kept_overrides']))")
    mbs1=$(python3 -c "import json; b=json.load(open('$w/peer4l/bench.json')); print(b['best_peer'].removeprefix('peer_mbs'))")
    mbs2=$(python3 -c "import json; b=json.load(open('$w/peer8l/bench.json')); print(b['best_peer'].removeprefix('peer_mbs'))")
    python3 -m launcher.tools.bench --peer-mbs $mbs1 --profile 10:10 --out $w/bench_1gpu $k1 train.train_iters=10
    python3 -m launcher.tools.bench --peer-mbs $mbs2 --profile 10:10 --out $w/bench_ep2 $k2 train.train_iters=10
    tar czf "$out/bench.tar.gz" -C "$w" bench_1gpu bench_ep2
    ;;
esac

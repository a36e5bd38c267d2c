#!/usr/bin/env bash
# The GPU-host runs behind perf_results/*.md, exactly as executed (after the staging in
# ../shared/gpu-host/README.md).
# usage: bash perf_results/gpu_host_runs.sh tests|tiny|qwen3|failures|mbs|dispatch OUTDIR
#        bash perf_results/gpu_host_runs.sh proxies OUTDIR FIRST LAST   (lines of perf_results/proxies.txt;
#          PROXY_EXTRA="k=v ..." adds overrides to every proxy)
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
  failures)  # real failing runs, kept as test data for the failure classifier (one GPU)
    fail() {
      local name=$1; shift
      python3 -m launcher cluster.gpus_per_node=1 launch.run_dir=/tmp/runs/$name "$@" > /tmp/$name.out 2>&1
      echo "$name rc=$?"; mkdir -p "$out/$name"
      cp /tmp/runs/$name/train.log /tmp/runs/$name/exit.json "$out/$name/" 2>/dev/null || cp /tmp/$name.out "$out/$name/"
    }
    # meant as an OOM, this first version asserted earlier: warm-up 10 >= 5 steps (Megatron's LR scheduler,
    # inside pretrain); launcher/plan/rules/__init__.py check_lr_schedule now refuses it on the login node, and the
    # OOM sample comes from the `mbs` case (MBS 4)
    fail oom_qwen3_8l_1gpu model=qwen3_30b_a3b model.num_layers=8 train=pretrain train.micro_batch_size=4 \
      train.global_batch_size=8 train.train_iters=5
    # an absurd learning rate without clipping: the loss and gradients blow up to NaN/inf
    fail nan_tiny_lr1e9 train.lr=1e9 train.min_lr=1e8 train.clip_grad=0 train.lr_warmup_iters=0 train.train_iters=10
    fail missing_backend_deepep dispatcher=deepep train.train_iters=2
    fail missing_backend_ncclep dispatcher=ncclep train.train_iters=2
    ;;
  proxies)  # each family's proxy on one GPU: seq 2048, 4 x MBS 1 per step, 6 steps, BF16, alltoall
    # (PROXY_EXTRA: more overrides; PROXY_TAG: a suffix for the run directory, for A/B runs of one proxy)
    # gated delta net (qwen3_next) needs flash-linear-attention: WHEELS=dir with flash_linear_attention-0.6.0
    # and fla_core-0.6.0 (pip download --no-deps), installed next to the staged stack. On Hopper with the
    # host's Triton 3.6 fla refuses its gated backward (wrong results below Triton 3.7.1) unless tilelang is
    # there: the Nov 23 run added tilelang 0.1.15, apache-tvm-ffi 0.1.12, torch-c-dlpack-ext 0.1.5 and
    # z3-solver 4.15.4.0 to WHEELS (the host has nvcc 13.0, which tilelang compiles with)
    if [ -n "${WHEELS:-}" ]; then python3 -m pip install -q --no-index --no-deps --target /tmp/site "$WHEELS"/*.whl; fi
    grep -v '^#' perf_results/proxies.txt | sed -n "${3},${4}p" | while read -r name overrides; do
      python3 -m launcher $overrides train=pretrain train.seq_length=2048 train.global_batch_size=4 \
        train.train_iters=6 train.lr_warmup_iters=1 train.checkpoint.enabled=false cluster.gpus_per_node=1 hardware=h200 \
        ${PROXY_EXTRA:-} \
        launch.run_dir=/tmp/runs/proxy_$name${PROXY_TAG:-} > /tmp/proxy_$name.out 2>&1
      echo "$name rc=$?"; grep -E "iteration +6/|recipes.pretrain: error" /tmp/proxy_$name.out | cut -c1-200
      # after each proxy: a call's time limit keeps the finished ones
      tar czf "$out/proxies_${3}_${4}.tar.gz" -C /tmp/runs $(cd /tmp/runs && ls -d proxy_*)
    done
    ;;
  mbs)  # issue 6 baseline: Qwen3-30B-A3B shape cut to 4 layers on one GPU, seq 4096, BF16, alltoall
    for mbs in 1 2 4; do
      name=qwen3_30b_a3b_4l_1gpu_mbs$mbs
      python3 -m launcher model=qwen3_30b_a3b model.num_layers=4 train=pretrain train.micro_batch_size=$mbs \
        train.global_batch_size=8 train.train_iters=15 cluster.gpus_per_node=1 launch.run_dir=/tmp/runs/$name \
        > /tmp/$name.out 2>&1
      echo "$name rc=$?"; grep -E "iteration +15/" /tmp/$name.out | tail -1; keep $name
    done
    ;;
  dispatch)  # issue 16: the doctor and the dispatcher tuner on the EP2 bench shape (Qwen3-30B-A3B, 2 GPUs,
    # seq 4096 x MBS 4 tokens per rank). BACKENDS defaults to what the host has without DeepEP; with a DeepEP
    # build (hybrid-ep 17cfb81, outside the repository, on PYTHONPATH) pass BACKENDS=alltoall,allgather,deepep,hybridep
    shape="model=qwen3_30b_a3b model.num_layers=8 parallel=ep2 train=pretrain train.micro_batch_size=4 cluster.gpus_per_node=2"
    nvidia-smi topo -m | tee "$out/topology.txt"
    for d in alltoall deepep hybridep; do
      python3 -m launcher.tools.doctor $shape dispatcher=$d 2>&1 | tee -a "$out/doctor.txt"; echo "$d rc=$?" | tee -a "$out/doctor.txt"
    done
    python3 -m launcher.tools.dispatch_bench --name qwen3_30b_a3b_ep2_h200 --backends "${BACKENDS:-alltoall,allgather}" \
      --iters 20 --out-dir "$out" $shape 2>&1 | tail -40
    ;;
esac

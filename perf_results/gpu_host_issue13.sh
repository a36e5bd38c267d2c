#!/usr/bin/env bash
# Issue 13 on the 2x H200 GPU host (after the staging in ../shared/gpu-host/README.md): checkpoints, a dead
# rank, resume, and what checkpointing costs, on the Qwen3-30B-A3B 8-layer EP2 shape.
# usage: bash perf_results/gpu_host_issue13.sh kill|saves|d2h|d2h2 OUTDIR [VARIANT ...]
#   One 8-layer checkpoint (model, FP32 main params and Adam moments) is 74 GB and the 2-GPU host has 128 GiB of
#   disk, so the run may hold one checkpoint at a time. Measured 2026-11-30: the async save of iteration 30 was
#   still being written when iteration 60 began the next one (> 36 s of training at 1.2 s/step), and the disk
#   filled. Hence: 200 iterations saving every 100 (async torch_dist, the default --exit-signal-handler). Once
#   iteration 100's save is complete (latest_checkpointed_iteration.txt says 100) and 3 more iterations are
#   logged, SIGKILL rank 1: the job must end within the collective timeout with class and rank in the record.
#   The same command again resumes from iteration 100 (attempts/1 keeps the first attempt); 6 iterations later
#   its rank 1 is SIGKILLed too (the save at 200 would need a second 74 GB). The losses of iterations 101..103 of
#   both attempts must be equal (a continuous curve). The cost of the async save comes from attempt 1: the step
#   times while the save was written against the median before it, projected to the default interval
#   (min(1000, train_iters // 10) for long runs; issue 13: under 2%).
# saves: what repeated async saves cost, on the 4-layer shape (37 GB a checkpoint: with keep_last=1 during the
#   run the disk holds the complete one and the one being written). 80 iterations, a save every 20, Megatron's
#   DEBUG timings of the save (MOE_DEBUG_LOGGERS: state dict, plan, device-to-host copy, finalize), per VARIANT:
#     default   moe-launch's async save (--async-save --async-strategy mcore --use-persistent-ckpt-worker) with
#               torch's default pinned allocator (train.checkpoint.host_register=false, as before the rule)
#     constant  + --ckpt-assume-constant-structure (the save plan cached after the first save, parallel writers)
#     shm       + --async-ckpt-use-cpu-shm. Measured 2026-12-01 (second session): first wait 22.1 s, the next 8.4 s,
#               but by Megatron's code (dist_checkpointing/strategies/torch.py) the flag acts only with
#               --async-strategy nvrx (nvidia-resiliency-ext), so under mcore this is a second sample of `default`:
#               the device-to-host copy's time varies run to run (16.1-16.5 s before, 8.4 s here, 26 GB)
#     pinreg    + torch's pinned-memory allocator registering pages with 8 threads (PYTORCH_CUDA_ALLOC_CONF
#               pinned_use_cuda_host_register, pinned_num_register_threads): the wait is Megatron's preload_tensors,
#               `tensor.to("cpu", non_blocking=True)`, which allocates pinned host memory on the first save.
#               Measured 2026-12-01 (ninth session): first save 6.9 s vs 18.6 s, the next 1.3 vs 1.2 s, and now the
#               default (train.checkpoint.host_register=auto); `default` there pins it off
#   INTERVAL: iterations between saves (20); 45 lets the previous write (25-30 s) finish before the next save, as
#   at the default interval, so a later save reuses the cached pinned blocks
#   Shows each run's "checkpoint saves" row (training's wait per save, the background write, the wait's share).
#   Measured 2026-11-30 on the 8-layer shape (kill): the first async save held training 64.1 s; on CPU a run's
#   first save costs ~10x its later ones, hence several saves here. On one GPU (2026-12-01) the default variant had
#   not finished after 320 s: give each variant a call of its own (the tarball is rewritten after each variant);
#   ITERS=60 (saves at 20, 40 and the final one) and LIMIT=seconds (SIGTERM to moe-launch, which then saves, writes
#   its record and exits) keep it inside one call.
set -uo pipefail
source /root/gpu-host.env
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
what=$1 out=$2 w=/tmp/i13
mkdir -p "$out" "$w"
q8=(model=qwen3_30b_a3b model.num_layers=8 parallel=ep2 train=pretrain train.micro_batch_size=4
    train.global_batch_size=32 train.lr_warmup_iters=2 model.moe_grouped_gemm_impl=torch cluster.gpus_per_node=2
    hardware=h200)
logged() { grep -qE "iteration +$2/" "$1" 2>/dev/null; }
losses() { python3 -c "
import sys; from launcher.records.logparse import parse_file
its = {i['iteration']: i for i in parse_file(sys.argv[1]).iterations}
print(' '.join(f\"{n}:{its[n]['loss']:.6f}\" for n in range(int(sys.argv[2]), int(sys.argv[3]) + 1) if n in its))" "$@"; }
kill_rank() {  # kill_rank RANK RUN_DIR: the pid of the worker whose environment says RANK=$1 and MOE_RUN_DIR=$2
  # (the run directory too: another job's rank 1 on this host would match RANK alone)
  for p in $(pgrep -f "recipes.pretrain"); do
    env=$(tr '\0' '\n' < /proc/$p/environ 2>/dev/null)
    grep -qx "RANK=$1" <<< "$env" && grep -qx "MOE_RUN_DIR=$2" <<< "$env" && echo $p; done | head -1; }
launcher_pid=
trap '[ -n "$launcher_pid" ] && kill -TERM $launcher_pid 2>/dev/null; exit 143' TERM INT  # no launcher outlives us
case $what in
  d2h)  # what the save's wait is made of: Megatron's preload_tensors copies each tensor with
    # tensor.to("cpu", non_blocking=True), which takes pinned host memory from torch's caching host allocator.
    # 24 tensors of 1 GiB (a 2-layer checkpoint is 26 GB), three rounds each (the first allocates, later ones may
    # reuse the cache), under the default allocator and with pinned_use_cuda_host_register (8 threads); then the
    # copy alone into pinned buffers allocated beforehand, and a pageable copy
    for conf in "expandable_segments:True" \
        "expandable_segments:True,pinned_use_cuda_host_register:True,pinned_num_register_threads:8"; do
      PYTORCH_CUDA_ALLOC_CONF=$conf python3 - <<'PY' 2>&1 | tee -a "$out/d2h.txt"
import os, time, torch
n, gib = 24, 1 << 30
src = [torch.empty(gib // 4, dtype=torch.float32, device="cuda") for _ in range(n)]
print("PYTORCH_CUDA_ALLOC_CONF", os.environ["PYTORCH_CUDA_ALLOC_CONF"])
def timed(label, copy):
    torch.cuda.synchronize(); t = time.perf_counter(); out = copy(); torch.cuda.synchronize()
    dt = time.perf_counter() - t
    print(f"  {label}: {dt:.2f} s, {n / dt:.1f} GiB/s"); return out
for r in range(3):
    dst = timed(f"round {r}: to(cpu, non_blocking=True)", lambda: [s.to("cpu", non_blocking=True) for s in src])
    del dst
pinned = [torch.empty(gib // 4, dtype=torch.float32, pin_memory=True) for _ in range(n)]
timed("copy into pinned buffers allocated before", lambda: [d.copy_(s, non_blocking=True) for d, s in zip(pinned, src)])
del pinned
timed("pageable to(cpu)", lambda: [s.to("cpu") for s in src])
PY
    done
    ;;
  d2h2)  # the first save of two ranks at once, as at EP 2 (there the first save held training 64.1 s, against
    # 18.6 s for one GPU's 26 GB): NPROC processes on the one GPU here, each copying GIB x 1 GiB (an EP2 rank's
    # checkpoint is 37 GB; 2 x 30 GiB pinned fits this host's 128 GiB) with tensor.to("cpu", non_blocking=True),
    # two rounds, under the default allocator and with pinned_use_cuda_host_register; one process, then two
    for conf in "expandable_segments:True" \
        "expandable_segments:True,pinned_use_cuda_host_register:True,pinned_num_register_threads:8"; do
      for nproc in 1 2; do
        for p in $(seq 1 $nproc); do
          PYTORCH_CUDA_ALLOC_CONF=$conf GIB=${GIB:-30} python3 - > $w/d2h2_$p.txt 2>&1 <<'PY' &
import os, time, torch
n, gib = int(os.environ["GIB"]), 1 << 30
src = [torch.empty(gib // 4, dtype=torch.float32, device="cuda") for _ in range(n)]
torch.cuda.synchronize()
for r in range(2):
    t = time.perf_counter()
    dst = [s.to("cpu", non_blocking=True) for s in src]
    torch.cuda.synchronize(); dt = time.perf_counter() - t
    print(f"round {r}: {n} GiB in {dt:.2f} s, {n / dt:.1f} GiB/s"); del dst
PY
        done; wait
        echo "$nproc process(es) at once, PYTORCH_CUDA_ALLOC_CONF=$conf" | tee -a "$out/d2h2.txt"
        for p in $(seq 1 $nproc); do sed "s/^/  process $p /" $w/d2h2_$p.txt; done | tee -a "$out/d2h2.txt"
      done
    done
    ;;
  saves)
    shift 2
    # one GPU (the only kind lent on 2026-12-01): no EP; 2 layers, about 1.9B parameters and 22 GB a checkpoint (12 bytes each), so that the
    # complete one and the one being written fit the 64 GiB disk of the one-GPU host
    shape=(model.num_layers=4); [ "$(nvidia-smi -L | wc -l)" = 1 ] && shape=(model.num_layers=2 parallel=single cluster.gpus_per_node=1)
    # SHAPE: other overrides instead, e.g. one EP2 rank's share of the 8-layer shape on the one GPU, 37 GB a
    # checkpoint, so one save only (ITERS=INTERVAL): SHAPE="model.num_layers=8 model.num_experts=64
    # parallel=single cluster.gpus_per_node=1 train.global_batch_size=16"
    [ -n "${SHAPE:-}" ] && read -ra shape <<< "$SHAPE"
    for v in "${@:-default constant}"; do for v in $v; do
      r=$w/saves_$v; rm -rf "$r"
      extra=(); [ "$v" = constant ] && extra=('megatron.raw=[--ckpt-assume-constant-structure]')
      [ "$v" = shm ] && extra=('megatron.raw=[--async-ckpt-use-cpu-shm]')
      [ "$v" = pinreg ] && extra=('train.checkpoint.host_register=true')
      [ "$v" = default ] && extra=('train.checkpoint.host_register=false')  # the allocator before the rule
      MOE_DEBUG_LOGGERS=megatron.training.checkpointing,megatron.core.dist_checkpointing \
        timeout -s TERM "${LIMIT:-86400}" python3 -m launcher "${q8[@]}" "${shape[@]}" train.train_iters="${ITERS:-80}" train.save_interval="${INTERVAL:-20}" \
        train.checkpoint.keep_last=1 "${extra[@]}" launch.run_dir=$r > $w/saves_$v.out 2>&1 &
      launcher_pid=$!; wait $launcher_pid; echo "== saves $v rc=$?"; launcher_pid=
      grep "checkpoint saves" $r/record.md
      grep -E "takes [0-9.]+ to (prepare state dict|finish D2H|schedule async|finalize)|plan time|write\(async\) time|parallel save sharding|recipes.retention" $r/train.log \
        | grep -E "rank: 0|retention|sharding" | cut -c1-160 | head -40
      rm -rf $r/checkpoints
      tar czf "$out/saves.tar.gz" -C "$w" $(cd $w && ls -d saves_*)  # after each variant: a call's limit keeps the finished ones
    done; done
    ;;
  kill)
    r=$w/kill; rm -rf "$r"
    run=("${q8[@]}" train.train_iters=200 train.save_interval=100 launch.run_dir=$r)
    python3 -m launcher "${run[@]}" > $w/kill1.out 2>&1 &
    launcher_pid=$!
    saved_at=
    while kill -0 $launcher_pid 2>/dev/null; do
      if [ -z "$saved_at" ] && [ "$(cat $r/checkpoints/latest_checkpointed_iteration.txt 2>/dev/null)" = 100 ]; then
        saved_at=$(python3 -c "from launcher.records.logparse import parse_file as p
print(max([i['iteration'] for i in p('$r/train.log').iterations] or [0]))"); echo "save of 100 complete at iteration $saved_at"
      fi
      [ -n "$saved_at" ] && logged $r/train.log $((saved_at + 3)) && break
      sleep 1
    done
    pid=$(kill_rank 1 "$(realpath -m "$r")"); t0=$(date +%s); kill -9 "$pid"; echo "attempt 1: SIGKILL rank 1 (pid $pid) at iteration $((saved_at + 3))"
    wait $launcher_pid; echo "moe-launch rc=$? after $(( $(date +%s) - t0 )) s"
    python3 -c "import json; r = json.load(open('$r/record.json')); print('record:', r['status'], r['failure'])"
    cat $r/exit.json; echo; ls $r/checkpoints; du -sh $r/checkpoints/iter_*
    pgrep -f "recipes.pretrain" && echo "LEFT OVER WORKERS" || echo "no worker left"
    cp $r/train.log $w/attempt1_train.log
    python3 -m launcher "${run[@]}" > $w/kill2.out 2>&1 &
    launcher_pid=$!
    # the relaunch moves the first attempt to attempts/1 before its own train.log starts
    until [ -f $r/attempts/1/train.log ] && logged $r/train.log 106; do
      sleep 1; kill -0 $launcher_pid 2>/dev/null || break; done
    pid=$(kill_rank 1 "$(realpath -m "$r")"); [ -n "$pid" ] && kill -9 "$pid"; echo "attempt 2: SIGKILL rank 1 (pid $pid) after iteration 106"
    wait $launcher_pid; echo "relaunch rc=$?"; launcher_pid=
    grep -E "moe-launch: (resuming|checkpoints|the previous|attempt)" $w/kill2.out
    grep -E "loading (distributed )?checkpoint|loaded checkpoint" $r/train.log | head -3
    echo "attempt 1: $(losses $r/attempts/1/train.log 98 $((saved_at + 3)))"
    echo "attempt 2: $(losses $r/train.log 98 106)"
    python3 - "$r/attempts/1/train.log" "$saved_at" <<'PY'
import re, statistics, sys
from launcher.records.logparse import parse_file
text, done = open(sys.argv[1]).read(), int(sys.argv[2])
steps = {i["iteration"]: i["step_ms"] for i in parse_file(sys.argv[1]).iterations}
base = statistics.median(steps[n] for n in range(4, 100) if n in steps)
# async save: iteration 100 hands the tensors to the writer; the iterations up to `done` ran while it wrote
during = {n: steps[n] for n in range(100, done + 1) if n in steps}
extra = sum(v - base for v in during.values())
print(f"median step {base:.0f} ms (iterations 4-99); {len(during)} iterations while saving (100-{done}), "
      f"extra {extra:.0f} ms in all: {100 * extra / (100 * base):.2f}% at interval 100, "
      f"{100 * extra / (1000 * base):.3f}% at the long-run default 1000 (issue 13: under 2%)")
print("save-checkpoint timer:", re.findall(r"save-checkpoint[ .]+: \(([0-9.]+), ([0-9.]+)\)", text)[:3])
PY
    rm -rf $r/checkpoints  # 74 GB: what comes back is the logs and records
    tar czf "$out/kill.tar.gz" -C "$w" kill1.out kill2.out attempt1_train.log kill
    ;;
esac

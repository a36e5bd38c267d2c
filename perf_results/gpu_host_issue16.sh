#!/usr/bin/env bash
# Issue 16 on the 2x H200 GPU host (after the staging in ../shared/gpu-host/README.md): DeepEP and HybridEP for
# real on the Qwen3-30B-A3B 8-layer EP2 shape.
# Prerequisite, not in this repository (project policy: no DeepEP source, binary or build script here): a deep_ep
# built from DeepEP's hybrid-ep branch at a commit that matches megatron-core 0.19.2 (README, "DeepEP and
# HybridEP"), importable from PYTHONPATH. Its version string carries the commit (1.2.1+17cfb81), which every run
# records in versions.json.
# usage: bash perf_results/gpu_host_issue16.sh doctor|tune|train OUTDIR [BACKEND:ROUTING[:tuned] ...]
#   doctor  deep_ep's version and location, the GPU topology (NV18 between the two H200s), moe-doctor for deepep
#           and hybridep on this shape (signatures against megatron-core 0.19.2's calls, NVLink, NVSHMEM, JIT)
#   tune    moe-dispatch-bench over alltoall, allgather, deepep and hybridep and their knobs for this shape;
#           writes perf_results/dispatch/qwen3_30b_a3b_ep2_h200.{json,md} (copied to OUTDIR)
#   train   one 12-step run per BACKEND:ROUTING (alltoall|deepep|hybridep : forced_balance|dropless), the EP2 bench
#           preset with only the dispatcher and the routing changed (same stack, same settings); ":tuned" adds
#           dispatcher.tuned=qwen3_30b_a3b_ep2_h200 (the tuner's best knobs) and brings its default and alltoall
#           runs of the same routing into the call. Run directories' record files go to
#           runs/issue16_<backend>_<routing>[_tuned]/ inside OUTDIR/issue16_runs.tar.gz, rewritten after each run: the
#           device tool brings back at most 8 files (more were lost once), and a call stopped at its limit still
#           returns the runs that finished. I16_EXTRA="k=v ..." adds overrides to every run (e.g.
#           "train.train_iters=14 train.kernel_profile=10:11": rank 0's kernel summary comes back as profile_summary.md)
set -uo pipefail
[ -f /root/gpu-host.env ] && source /root/gpu-host.env
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
what=${1:?usage: doctor|tune|train OUTDIR} out=${2:?OUTDIR}
shift 2
w=/tmp/i16 tuned=qwen3_30b_a3b_ep2_h200
mkdir -p "$out" "$w"
shape=(model=qwen3_30b_a3b model.num_layers=8 parallel=ep2 cluster.gpus_per_node=2 hardware=h200 train=pretrain
       train.micro_batch_size=4)
# measurement runs: no checkpoint (an 8-layer save is ~78 GB and minutes of writing)
preset=(preset=qwen3_30b_a3b_8l_2xh200_ep2_bench_bf16 train.train_iters=12 train.lr_warmup_iters=2
        train.checkpoint.enabled=false)
case $what in
  doctor)
    python3 -c "import deep_ep, importlib.metadata as m; print('deep_ep', m.version('deep_ep'), deep_ep.__file__)"
    nvidia-smi topo -m
    for b in deepep hybridep; do
      python3 -m launcher.tools.doctor "${shape[@]}" dispatcher=$b; echo "moe-doctor dispatcher=$b rc=$?"
    done
    ;;
  tune)
    python3 -m launcher.tools.dispatch_bench --name $tuned --backends alltoall,allgather,deepep,hybridep "${shape[@]}"
    echo "moe-dispatch-bench rc=$?"
    cp perf_results/dispatch/$tuned.json perf_results/dispatch/$tuned.md "$out/" 2>/dev/null
    ;;
  train)
    # runs are compared only within one host session (the same preset has differed by 5% between sessions): every
    # BACKEND:ROUTING:tuned brings its default BACKEND:ROUTING and alltoall:ROUTING into this call if not asked for
    specs=()
    for spec in "$@"; do
      IFS=: read -r b r t <<< "$spec"
      if [ -n "$t" ]; then
        for need in alltoall:$r $b:$r; do
          case " $* ${specs[*]} " in *" $need "*) ;; *) specs+=("$need"); echo "added $need (the tuned run's baseline)";; esac
        done
      fi
      specs+=("$spec")
    done
    for spec in "${specs[@]}"; do
      IFS=: read -r b r t <<< "$spec"
      name=issue16_${b}_${r}${t:+_tuned}
      extra=(dispatcher=$b train.routing=$r)
      [ -n "$t" ] && extra+=(dispatcher.tuned=$tuned)
      read -ra more <<< "${I16_EXTRA:-}"; extra+=("${more[@]}")
      rm -rf "$w/$name" "$w/keep/runs/$name"
      python3 -m launcher "${preset[@]}" "${extra[@]}" launch.run_dir=$w/$name > "$w/$name.out" 2>&1
      echo "$name rc=$?"
      mkdir -p "$w/keep/runs/$name"
      for f in record.json record.md plan.json config.yaml train.log versions.json exit.json; do
        cp "$w/$name/$f" "$w/keep/runs/$name/" 2>/dev/null; done
      cp "$w/$name/profile/summary_rank0.md" "$w/keep/runs/$name/profile_summary.md" 2>/dev/null
      tar czf "$out/issue16_runs.tar.gz" -C "$w/keep" runs
      python3 - "$w/$name" <<'PY'
import json, sys
try:
    r = json.load(open(f"{sys.argv[1]}/record.json"))
except OSError as e:
    sys.exit(f"  no record: {e.strerror}")
s, m = r.get("steady_state") or {}, r.get("memory") or {}
if r["status"] != "ok" or "tflops_per_gpu" not in s:
    sys.exit(f"  {r['status']}: {(r.get('failure') or {}).get('summary', '')}"[:400])
print(f"  {s['tflops_per_gpu']['median']:.1f} TFLOP/s/GPU, {s['tokens_per_s_per_gpu']['median']:,.0f} tokens/s/GPU, "
      f"step {s['step_time_ms']['median']:.0f} ms, peak {json.dumps(m)[:120]}")
PY
    done
    ;;
  *) echo "usage: bash perf_results/gpu_host_issue16.sh doctor|tune|train OUTDIR [BACKEND:ROUTING[:tuned] ...]"; exit 2 ;;
esac

#!/usr/bin/env bash
# Issue 17, items 1-2 on the 2x H200 GPU host (after the staging in ../shared/gpu-host/README.md): the plain
# command a user types against the tuned EP2 bench preset, both dropless, both through moe-launch, 12 steps, same
# shape (Qwen3-30B-A3B cut to 8 layers, EP 2, seq 4096, MBS 4, GBS 32, BF16). The tuned choices are now rules
# (launcher/plan/tuned.py), so the two should resolve to the same argv and environment (checked first, on the
# login side) and run at the same speed. Target: plain >= 95% of the preset's TFLOP/s/GPU (issue: 220.7 vs 322.1).
# usage: bash perf_results/gpu_host_issue17.sh OUTDIR
# Prints each run's steady state (median of iterations 4-12) and the ratio; OUTDIR gets both run directories'
# record files (record.json, record.md, plan.json, train.log) and issue17.txt with the printed lines.
set -uo pipefail
if [ -f /root/gpu-host.env ]; then source /root/gpu-host.env; fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
out=${1:?usage: bash perf_results/gpu_host_issue17.sh OUTDIR}
w=/tmp/i17
mkdir -p "$out" "$w"
# measurement runs: no checkpoint (an 8-layer save is ~78 GB and minutes of writing)
steps=(train.train_iters=12 train.lr_warmup_iters=2 train.checkpoint.enabled=false)
plain=(model=qwen3_30b_a3b model.num_layers=8 train=pretrain hardware=h200 parallel=ep2 train.micro_batch_size=4
       train.global_batch_size=32)
preset=(preset=qwen3_30b_a3b_8l_2xh200_ep2_bench_bf16 train.routing=dropless)

# 1. the login side: both plans, side by side (dry runs; the argv and the environment must be equal)
python3 -m launcher "${plain[@]}" "${steps[@]}" launch.dry_run=true launch.run_dir=$w/dry_plain > $w/dry_plain.out 2>&1
python3 -m launcher "${preset[@]}" "${steps[@]}" launch.dry_run=true launch.run_dir=$w/dry_preset > $w/dry_preset.out 2>&1
python3 - "$w" <<'PY' | tee "$out/issue17.txt"
import json, sys
w = sys.argv[1]
a, b = (json.load(open(f"{w}/dry_{n}/plan.json")) for n in ("plain", "preset"))
print("same argv:", a["argv"] == b["argv"], " same env:", a["env"] == b["env"])
print("plain resolved:", json.dumps(a["resolved"]["tuned"]))
for note in a["resolved"]["notes"]:
    if "=auto -> " in note:
        print("  ", note[:160])
PY

# 2. the runs, one after the other on both GPUs
for name in plain preset; do
  if [ $name = plain ]; then args=("${plain[@]}"); else args=("${preset[@]}"); fi
  python3 -m launcher "${args[@]}" "${steps[@]}" launch.run_dir=$w/$name > $w/$name.out 2>&1
  echo "$name rc=$?" | tee -a "$out/issue17.txt"
  mkdir -p "$out/$name"
  cp $w/$name/record.json $w/$name/record.md $w/$name/plan.json $w/$name/train.log "$out/$name/" 2>/dev/null || true
done

# 3. both steady states (the records' own window: iterations after the first 3) and the ratio
python3 - "$w" <<'PY' | tee -a "$out/issue17.txt"
import json, sys
w, tf = sys.argv[1], {}
for name in ("plain", "preset"):
    try:
        r = json.load(open(f"{w}/{name}/record.json"))
    except OSError as e:
        print(f"{name}: no record ({e.strerror})"); continue
    s = r["steady_state"]
    if r["status"] != "ok" or "tflops_per_gpu" not in s:
        print(f"{name}: {r['status']}: {(r.get('failure') or {}).get('summary', '')}"[:300]); continue
    tf[name] = s["tflops_per_gpu"]["median"]
    print(f"{name}: {tf[name]:.1f} TFLOP/s/GPU, {s['tokens_per_s_per_gpu']['median']:,.0f} tokens/s/GPU, "
          f"step {s['step_time_ms']['median']:.0f} ms (median of iterations {s['window']['first']}-{s['window']['last']})")
if len(tf) == 2:
    ratio = tf["plain"] / tf["preset"]
    print(f"plain / preset = {ratio:.3f} (target >= 0.95): {'PASS' if ratio >= 0.95 else 'FAIL'}")
PY

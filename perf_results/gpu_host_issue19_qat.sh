#!/usr/bin/env bash
# Issue 19 (QAT and distillation with nvidia-modelopt) on the GPU host, one H200: the 4-layer Qwen3-30B-A3B-shape
# proxy (preset qwen3_30b_a3b_4l_1xh200_bench_bf16 at seq 2048, MBS 4, GBS 8, mock data) trained 20 steps in BF16,
# its weights saved (no optimizer state: 6 GB instead of 42), then
#   fp8     continued 50 steps with quant=fp8 from that BF16 checkpoint (--finetune: weights only, a new schedule),
#           saving its weights with the quantizers at step 50
#   resume  that QAT checkpoint relaunched for 5 more steps: "quantizers restored from ..." and no calibration
#   nvfp4   the same continuation with quant=nvfp4 (modelopt's Triton NVFP4 fake quant, compute capability >= 8.9)
#   distill a 2-layer student of the same shape distilled 50 steps from the 4-layer BF16 teacher (logit KL)
# usage: bash perf_results/gpu_host_issue19_qat.sh OUTDIR [STAGES]     (from the repository root, .[modelopt]
#        installed; STAGES default "bf16 fp8 distill nvfp4 resume", in order of importance; bf16 is needed first)
# Shows per stage: rc, the recipes.qat / recipes.distill lines, the loss every 5 steps (lm loss; for distill also
# kd logits loss and kd total loss), the record's status. Expected: fp8 and nvfp4 losses start near the BF16
# run's last loss (quantization noise only) and fall; resume's first loss is close to fp8's last; distill's
# kd logits loss falls. Measured 2026-12-01 on one H200 (wall per run: bf16 92 s, fp8 157 s, distill 66 s, nvfp4
# 103 s): over 9 minutes for all five stages with the installs, so give it a call of its own at the 600 s limit, or
# two calls ("bf16 fp8 resume", then "distill nvfp4" while /tmp/i19q/bf16 is kept); the call's limit ended resume.
set -uo pipefail
[ -f /root/gpu-host.env ] && source /root/gpu-host.env
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
out=${1:?OUTDIR} stages=${2:-"bf16 fp8 distill nvfp4 resume"} w=/tmp/i19q  # apart from gpu_host_issue19.sh's /tmp/i19: the two may run at once, one GPU each
mkdir -p "$out" "$w/runs"
python3 -c "import modelopt, torch; print('modelopt', modelopt.__version__, 'torch', torch.__version__, \
'capability', torch.cuda.get_device_capability())"
q4=(preset=qwen3_30b_a3b_4l_1xh200_bench_bf16 train.seq_length=2048 train.micro_batch_size=4 train.global_batch_size=8
    train.lr_warmup_iters=2 train.log_interval=5 train.checkpoint.async_save=false)
run() {  # run NAME overrides...: one moe-launch run under $w/runs/NAME, then what it printed about modelopt and loss
  local name=$1; shift
  python3 -m launcher "${q4[@]}" "$@" launch.run_dir=$w/runs/$name > $w/runs/$name.out 2>&1
  echo "== $name rc=$?"
  grep -hE "recipes\.(qat|distill|pretrain): |moe-launch: error" $w/runs/$name/train.log $w/runs/$name.out 2>/dev/null | head -6
  python3 - $w/runs/$name/train.log <<'PY'
import re, sys
for line in open(sys.argv[1], errors="replace"):
    if " iteration " in line and "lm loss" in line:
        it = re.search(r"iteration +(\d+)/", line).group(1)
        print(it, " | ".join(re.findall(r"(?:lm loss|kd logits loss|kd total loss): \S+", line)))
PY
  python3 -c "import json; r=json.load(open('$w/runs/$name/record.json')); print('status', r['status'])" 2>/dev/null
}
for s in $stages; do case $s in
  bf16) run bf16 train.train_iters=20 train.save=$w/bf16 'megatron.raw=[--no-save-optim]' ;;
  fp8) run qat_fp8 quant=fp8 train.train_iters=50 train.save_interval=50 train.save=$w/qat_fp8 \
         train.load=$w/bf16 'megatron.raw=[--finetune,--no-save-optim]'
       ls $w/qat_fp8/iter_0000050 ;;
  resume) run qat_fp8_resume quant=fp8 train.train_iters=55 train.save_interval=55 train.save=$w/qat_fp8 \
            'megatron.raw=[--no-load-optim,--no-save-optim]' ;;
  nvfp4) run qat_nvfp4 quant=nvfp4 train.train_iters=50 train.checkpoint.enabled=false train.load=$w/bf16 \
           'megatron.raw=[--finetune]' ;;
  distill) run distill_2l_from_4l distill=kd distill.teacher_checkpoint=$w/bf16 model.num_layers=2 \
             train.train_iters=50 train.checkpoint.enabled=false ;;
esac; done
cd $w/runs && tar czf "$out/issue19_qat.tar.gz" --exclude='checkpoints' ./*
ls -la "$out"

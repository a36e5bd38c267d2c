#!/usr/bin/env bash
# Issue 19 on the GPU host (one H200): the 4-layer Qwen3-30B-A3B-shape proxy trained 200 steps on prepared text
# (Python's standard library sources, a 32,768-token BPE tokenizer trained there, moe-prepare-data; a disjoint
# set of files is the held-out text), its checkpoint exported to Hugging Face in BF16, FP8 and NVFP4 through
# moe-convert (nvidia-modelopt), each export read by transformers on the GPU, and next-token accuracy on the
# held-out text printed for transformers and for the Megatron model with the tolerance (moe-convert compare,
# recipes/convert_check.py); then the way back: the BF16 export imported again and 10 steps continued from it
# with the TE spec. Measured 2026-12-01 on one H200: train 157 s (data and tokenizer included), export 210 s (the
# three at once), compare 104 s without the way back (ROUNDTRIP=0); in three phases (one device call each; the machine
# keeps /tmp/i19 while it stays warm; each phase leaves its own tarball in OUTDIR).
#
# usage, where the package registry is (the GPU host has none):
#   bash perf_results/gpu_host_issue19.sh stage      # -> .gpu-host/issue19/*.whl, copy them to /root/wh/issue19/
# on the GPU host, from the repository root, after ../shared/gpu-host/README.md's staging:
#   bash perf_results/gpu_host_issue19.sh run OUTDIR train      # text, tokenizer, data, 200 steps (~4 min)
#   bash perf_results/gpu_host_issue19.sh run OUTDIR export     # BF16, FP8, NVFP4 exports (~4 min)
#   bash perf_results/gpu_host_issue19.sh run OUTDIR compare    # accuracies, generation, import + continue (~5 min)
#   (or run OUTDIR all: the three in one call, when the call may last ~13 minutes)
# Shows: "train rc=0" with the loss falling; "export bf16/fp8/nvfp4 rc=..." with each export's size and quant config
# (NVFP4: exported, or the reason it cannot on Hopper); then per export a line
#   bf16: next-token accuracy megatron 0.xxxx hf 0.xxxx |diff| 0.000x <= 0.005: PASS
#   fp8:  ... <= 0.02: PASS       nvfp4: transformers cannot read packed FP4 (said), or its line
# a greedy generation from the BF16 export, and "continued rc=0 first losses: ..." next to the trained run's last
# loss (the way back into a TE run). OUTDIR/issue19_{train,export,compare}.tar.gz: logs, JSONs, configs, no weights.
set -uo pipefail
mode=${1:?stage|run}
# what recipes/convert.py, recipes/convert_check.py and moe-prepare-data import beyond torch and the base stage
# (megatron-core, TE, hydra-core, omegaconf, pydantic): measured with sys.modules after those imports
WHEELS=(nvidia-modelopt==0.47.0 transformers==5.17.0 tokenizers==0.23.3 safetensors==0.8.0 huggingface_hub==1.33.0
        requests==2.34.2 urllib3==2.8.0 idna==3.20 certifi==2026.10.19.post1 charset-normalizer==3.5.3
        httpx==0.28.1 httpcore==1.0.9 h11==0.16.0 anyio==4.16.0 regex==2026.11.19 tqdm==4.70.1
        rich==15.0.0 Pygments==2.21.0 markdown-it-py==4.3.0 mdurl==0.1.2 click==8.5.1
        typer==0.29.2 shellingham==1.5.4 nvidia-ml-py==13.615.71 PuLP==3.3.2 scipy==1.18.1)
# not listed, already there for torch, Megatron, TE and hydra on the host: numpy, PyYAML, packaging, psutil, fsspec
if [ "$mode" = stage ]; then
  mkdir -p .gpu-host/issue19
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .gpu-host/issue19 "${WHEELS[@]}"
  du -sh .gpu-host/issue19/*.whl | sort -h | tail -5; ls .gpu-host/issue19 | wc -l
  exit 0
fi
out=${2:?OUTDIR} phase=${3:-all}
source /root/gpu-host.env
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
w=/tmp/i19
mkdir -p "$out" "$w/train_txt" "$w/heldout_txt" "$w/data"
if ! python3 -c "import modelopt.torch.export, transformers, huggingface_hub, requests" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site /root/wh/issue19/*.whl
fi
python3 -c "import modelopt, transformers; print('modelopt', modelopt.__version__, 'transformers', transformers.__version__)" \
  || { echo "the issue-19 wheels are missing: see 'stage' above"; exit 1; }
t0=$(date +%s)
q4=(model=qwen3_30b_a3b model.num_layers=4 model.vocab_size=32768 train=pretrain hardware=h200 cluster.gpus_per_node=1
    data=indexed "data.paths=[$w/data/train]" "data.tokenizer_model=$w/tok" train.seq_length=1024
    train.micro_batch_size=4 train.global_batch_size=8 train.lr=6e-4 train.min_lr=6e-5)
ph() { [ "$phase" = all ] || [ "$phase" = "$1" ]; }
if ph train; then
# text: the standard library, one document per file; every 10th file is held out
py=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
find "$py" -maxdepth 2 -name '*.py' -size +1k | sort | head -1500 | nl -nln | while read -r i f; do
  d=train_txt; [ $((i % 10)) = 0 ] && d=heldout_txt; cp "$f" "$w/$d/$(echo "$f" | md5sum | cut -c1-16).txt"; done
python3 - "$w" <<'PY'
import json, sys
from pathlib import Path
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
w = Path(sys.argv[1])
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train([str(f) for f in sorted((w / "train_txt").iterdir())[:500]], trainers.BpeTrainer(
    vocab_size=32768, special_tokens=["<|endoftext|>"], show_progress=False,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
(w / "tok").mkdir(exist_ok=True)
tok.save(str(w / "tok" / "tokenizer.json"))
(w / "tok" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                             "eos_token": "<|endoftext|>"}))
print("tokenizer", tok.get_vocab_size())
PY
for d in train heldout; do
  python3 -m launcher.tools.prepare_data --input "$w/${d}_txt" --text-mode file --output-prefix "$w/data/$d" \
    --tokenizer-model "$w/tok" --overwrite 2>&1 | tail -1
done
# 1. train: the 4-layer proxy on one GPU, checkpoints on (one save, at the end, weights only: with their Adam state
#    the 2.6B parameters (vocabulary 32,768) would be about 31 GB, and the one-GPU host has 64 GiB of disk for
#    this and the exports; export reads the model only), seq 1024 and 8 sequences a step so that 200 steps take
#    about 2 minutes
python3 -m launcher "${q4[@]}" train.train_iters=200 train.lr_warmup_iters=20 train.save_interval=1000 \
  'megatron.raw=[--no-save-optim]' \
  train.log_interval=20 launch.run_dir=$w/runs/train > $w/train.out 2>&1; echo "train rc=$? ($(( $(date +%s) - t0 )) s)"
grep -E "lm loss" $w/runs/train/train.log | sed -n '1p;$p' | grep -oE "iteration +[0-9]+/ +[0-9]+|lm loss: [0-9.E+-]+"
tar czf "$out/issue19_train.tar.gz" --exclude='*.bin' --exclude='*.distcp' -C "$w" runs/train train.out data tok
fi
if ph export; then
# 2. exports: BF16, FP8 (PTQ calibrated on 32 training sequences), NVFP4 (modelopt's CUDA kernels; on Hopper it
#    may refuse: its message is printed)
rm -rf $w/hf_bf16 $w/hf_fp8 $w/hf_nvfp4  # moe-convert never overwrites: a repeated phase starts clean
# the three exports are independent (each loads the checkpoint at world 1 on its own port): they run at once, spread
# over the visible GPUs (bf16 and nvfp4 on the first, fp8 on the second where there are two)
ngpu=$(nvidia-smi -L | wc -l)
export_one() {  # export_one NAME GPU [--quant Q --calib-data ...]
  local d=$1 g=$2; shift 2
  CUDA_VISIBLE_DEVICES=$g python3 -m launcher.tools.convert export --ckpt $w/runs/train --out $w/hf_$d "$@" \
    > $w/export_$d.out 2>&1; local rc=$?; echo "export $d rc=$rc ($(( $(date +%s) - t0 )) s)"
  [ $rc = 0 ] || grep -E "error|Error" $w/export_$d.out | tail -2
}
export_one bf16 0 &
for q in fp8 nvfp4; do
  g=0; [ "$q" = fp8 ] && [ "$ngpu" -ge 2 ] && g=1
  export_one $q $g --quant $q --calib-data $w/data/train --calib-samples 32 &
done
wait
for d in bf16 fp8 nvfp4; do [ -d $w/hf_$d ] && echo "$d: $(du -sh $w/hf_$d | cut -f1) $(tr -d ' \n' < $w/hf_$d/hf_quant_config.json 2>/dev/null | cut -c1-160)"; done
tar czf "$out/issue19_export.tar.gz" -C "$w" export_bf16.out export_fp8.out export_nvfp4.out \
  $(cd $w && ls hf_*/config.json hf_*/hf_quant_config.json hf_*/convert.log 2>/dev/null)
fi
if ph compare; then
# 3. each export read by transformers on the GPU and the Megatron model (the run's checkpoint at one process), on
#    16 held-out sequences of 1024 tokens (16,368 predictions); one process runs Megatron once for all exports.
#    It runs in the background while 4. and 5. run (5. on the second GPU where there is one); its lines come last
hfs=$(for d in bf16 fp8 nvfp4; do [ -f $w/hf_$d/config.json ] && printf "%s," $w/hf_$d; done); hfs=${hfs%,}
jsons=$(echo "$hfs" | sed "s#$w/hf_\([a-z0-9]*\)#$w/compare_\1.json#g")
( python3 -m launcher.tools.convert compare --hf "$hfs" --json "$jsons" --ckpt $w/runs/train --data $w/data/heldout \
  --samples 16 > $w/compare.out 2>&1; echo "compare rc=$? ($(( $(date +%s) - t0 )) s)" ) &
cmp_pid=$!
# 4. transformers generates from the BF16 export with its tokenizer (the export is a plain HF directory)
python3 - "$w/hf_bf16" <<'PY' 2>&1 | tail -2
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16).cuda().eval()
ids = tok("import os\nimport sys\n\n\ndef ", return_tensors="pt").input_ids.cuda()
print("generate:", repr(tok.decode(m.generate(ids, max_new_tokens=24, do_sample=False)[0])))
PY
# 5. the way back (ROUNDTRIP=0 skips it, about 2 minutes): import the BF16 export and continue 10 steps with the TE
#    spec on the GPU from it; the first loss should be the trained run's last losses (same weights, same data)
if [ "${ROUNDTRIP:-1}" = 1 ]; then
  [ "$(nvidia-smi -L | wc -l)" -ge 2 ] && export CUDA_VISIBLE_DEVICES=1
  rm -rf $w/imported $w/runs/continued
  python3 -m launcher.tools.convert import --hf $w/hf_bf16 --out $w/imported model=qwen3_30b_a3b model.num_layers=4 \
    model.vocab_size=32768 train=pretrain data=indexed "data.paths=[$w/data/train]" "data.tokenizer_model=$w/tok" \
    train.seq_length=1024 > $w/import.out 2>&1; echo "import rc=$? ($(( $(date +%s) - t0 )) s)"
  python3 -m launcher "${q4[@]}" train.train_iters=10 train.lr_warmup_iters=1 \
    train.checkpoint.enabled=false train.log_interval=1 \
    train.checkpoint.init_from=$w/imported launch.run_dir=$w/runs/continued > $w/continued.out 2>&1
  echo "continued rc=$? first losses: $(grep -oE 'lm loss: [0-9.E+-]+' $w/runs/continued/train.log | head -2 | tr '\n' ' ')" \
    "trained run's last: $(grep -oE 'lm loss: [0-9.E+-]+' $w/runs/train/train.log | tail -1)"
fi
wait $cmp_pid  # the comparison ran on the first GPU meanwhile
grep -E "error" $w/compare.out | tail -3
python3 - $w <<'PY'
import json, sys
from pathlib import Path
tolerance = {"bf16": 0.005, "fp8": 0.02, "nvfp4": 0.05}  # |accuracy(transformers) - accuracy(Megatron BF16)|
for name, tol in tolerance.items():
    f = Path(sys.argv[1]) / f"compare_{name}.json"
    if not f.is_file():
        print(f"{name}: no comparison (see the export/compare lines above)")
        continue
    r = json.loads(f.read_text())
    m, h = r["megatron"]["next_token_accuracy"], r["hf"]["next_token_accuracy"]
    print(f"{name}: next-token accuracy megatron {m:.4f} hf {h:.4f} |diff| {abs(m - h):.4f} <= {tol}: "
          f"{'PASS' if abs(m - h) <= tol else 'FAIL'} (loss megatron {r['megatron']['loss']:.4f} hf "
          f"{r['hf']['loss']:.4f}, top-1 agreement {r['top1_agreement']:.4f}, {r['tokens']} tokens)")
PY
echo "total $(( $(date +%s) - t0 )) s"
tar czf "$out/issue19_compare.tar.gz" --exclude='*.safetensors' --exclude='*.distcp' -C "$w" \
  $(cd $w && ls compare* import.out continued.out imported/convert.json imported/convert.log 2>/dev/null) \
  $(cd $w && ls -d runs/continued 2>/dev/null)
fi

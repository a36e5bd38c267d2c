#!/usr/bin/env bash
# Issue 14 on the GPU host: a 4-layer Qwen3-30B-A3B-shape run (preset qwen3_30b_a3b_4l_1xh200_bench_bf16, one H200)
# on prepared data, a blend of two datasets. Everything is made on the host from text it has: Python's standard
# library sources (dataset A, one document per file) and the installed packages' Python sources (dataset B), a
# 32,768-token BPE tokenizer trained there with `tokenizers`, both datasets written by moe-prepare-data.
# usage: bash perf_results/gpu_host_issue14.sh OUTDIR      (from the repository root, .[data] installed)
# Shows: the prepare throughput lines, "resolved: data.split=100,0,0 ...", Megatron's loss falling over 40 steps,
# record.json status ok; then the separate train/valid blends with evaluation; then the vocabulary refusal.
set -uo pipefail
[ -f /root/gpu-host.env ] && source /root/gpu-host.env
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
out=${1:?OUTDIR} w=/tmp/i14
mkdir -p "$out" "$w/a" "$w/b" "$w/data"
py=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# A: the standard library; B: installed packages (megatron, transformers, torch python files), one doc per file
find "$py" -maxdepth 2 -name '*.py' -size +1k | sort | head -2000 | while read -r f; do
  cp "$f" "$w/a/$(echo "$f" | md5sum | cut -c1-16).txt"; done
find "$site/megatron" "$site/transformers/models" -name '*.py' -size +1k 2>/dev/null | sort | head -3000 | \
  while read -r f; do cp "$f" "$w/b/$(echo "$f" | md5sum | cut -c1-16).txt"; done
du -sh "$w/a" "$w/b"
python3 - "$w" <<'PY'
import json, sys
from pathlib import Path
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
w = Path(sys.argv[1])
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
files = sorted((w / "a").iterdir())[:400] + sorted((w / "b").iterdir())[:400]
tok.train([str(f) for f in files], trainers.BpeTrainer(vocab_size=32768, special_tokens=["<|endoftext|>"],
          show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
(w / "tok").mkdir(exist_ok=True)
tok.save(str(w / "tok" / "tokenizer.json"))
(w / "tok" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                             "eos_token": "<|endoftext|>"}))
print("tokenizer", tok.get_vocab_size())
PY
for d in a b; do
  python3 -m launcher.tools.prepare_data --input "$w/$d" --text-mode file --output-prefix "$w/data/${d}_text_document" \
    --tokenizer-model "$w/tok" --overwrite 2>&1 | tail -2
done
q4=(preset=qwen3_30b_a3b_4l_1xh200_bench_bf16 data=indexed "data.tokenizer_model=$w/tok" train.checkpoint.enabled=false
    train.train_iters=40
    train.lr_warmup_iters=4 train.log_interval=5)
# 1: a weighted blend of the two, the default split (100,0,0 without evaluation)
python3 -m launcher "${q4[@]}" "data.paths=[0.7,$w/data/a_text_document,0.3,$w/data/b_text_document]" \
  launch.run_dir=$w/runs/blend > $w/blend.out 2>&1; echo "blend rc=$?"
grep -E "resolved: data|lm loss" $w/blend.out | sed -n '1p;2p;$p'; python3 -c "import json; r=json.load(open('$w/runs/blend/record.json')); print('status', r['status'], 'steady', r['steady_state'].get('tokens_per_s_per_gpu'))"
# 2: separate blends per split, with evaluation every 20 steps (SPLITS=0 skips it)
[ "${SPLITS:-1}" = 1 ] && python3 -m launcher "${q4[@]}" data=splits "data.train_paths=[0.7,$w/data/a_text_document,0.3,$w/data/b_text_document]" \
  "data.valid_paths=[$w/data/b_text_document]" train.eval_iters=2 train.eval_interval=20 \
  launch.run_dir=$w/runs/splits > $w/splits.out 2>&1; echo "splits rc=$?"
grep -E "validation loss|lm loss" $w/splits.out | tail -3
# 3: refused on the login side, before any GPU: the model's vocabulary below the tokenizer's 32,768
python3 -m launcher "${q4[@]}" "data.paths=[$w/data/a_text_document]" model.vocab_size=16000 launch.dry_run=true; \
  echo "vocab refusal rc=$? (expected 2)"
tar czf "$out/issue14.tar.gz" --exclude='*.bin' -C "$w" runs blend.out splits.out data tok

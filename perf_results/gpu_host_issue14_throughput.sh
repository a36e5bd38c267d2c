#!/usr/bin/env bash
# Issue 14: moe-prepare-data's throughput with 1 worker and with every core, on an idle machine (no GPU is used:
# the GPU host's 16-32 cores, or any machine; perf_results/issue14_prepare_throughput.txt was made on 2 cores). The corpus (>= 200 MB of JSONL) is made here from the Python sources the machine ships
# (standard library, installed packages), each file one document, repeated with variation (a round number and a
# shuffled line order per round) until it passes 200 MB. A 32,768-token BPE tokenizer is trained on part of it.
# usage: bash perf_results/gpu_host_issue14_throughput.sh OUTDIR   (from the repository root, .[data] installed;
#        CORPUS_MB=2 for a quick check of the script)
# Prints the corpus size, each run's summary line and MB/s, and whether the two outputs are byte-identical.
set -uo pipefail
[ -f /root/gpu-host.env ] && source /root/gpu-host.env
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
out=${1:?OUTDIR} w=/tmp/i14t
mkdir -p "$out" "$w"
python3 - "$w" "${CORPUS_MB:-200}" <<'PY'
import json, random, sys, sysconfig
from pathlib import Path
w = Path(sys.argv[1])
files = sorted(p for root in {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]}
               for p in Path(root).rglob("*.py") if p.stat().st_size > 1024)
texts = [f.read_text(errors="replace") for f in files[:20000]]
rng, size, n, docs = random.Random(0), 0, 0, 0
with open(w / "corpus.jsonl", "w") as fh:
    while size < int(sys.argv[2]) * 2**20:
        for t in texts:
            lines = t.splitlines()
            rng.shuffle(lines)
            line = json.dumps({"text": f"# round {n}\n" + "\n".join(lines)}) + "\n"
            fh.write(line)
            size += len(line.encode())
            docs += 1
            if size >= int(sys.argv[2]) * 2**20:
                break
        n += 1
print(f"corpus: {size / 2**20:.0f} MiB, {docs} documents from {len(texts)} source files ({n} full rounds)")
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train_from_iterator(texts[:3000 if int(sys.argv[2]) >= 200 else 100], trainers.BpeTrainer(vocab_size=32768, special_tokens=["<|endoftext|>"],
                        show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
(w / "tok").mkdir(exist_ok=True)
tok.save(str(w / "tok" / "tokenizer.json"))
(w / "tok" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                             "eos_token": "<|endoftext|>"}))
PY
cores=$(nproc)
for n in 1 "$cores"; do
  python3 -m launcher.tools.prepare_data --input "$w/corpus.jsonl" --output-prefix "$w/w$n" \
    --tokenizer-model "$w/tok" --workers "$n" --overwrite 2>&1 | tail -1 | tee "$w/w$n.out"
  python3 - "$w" "$n" <<'PY' | tee -a "$w/throughput.txt"
import json, sys
from pathlib import Path
w, n = Path(sys.argv[1]), sys.argv[2]
s = json.loads(next(w.glob(f"w{n}*.json")).read_text())
mb = (w / "corpus.jsonl").stat().st_size / 1e6
print(f"workers {n}: {mb:.0f} MB in {s['wall_s']:.1f} s = {mb / s['wall_s']:.2f} MB/s, "
      f"{s['tokens'] / s['wall_s']:,.0f} tokens/s ({s['documents']:,} documents, {s['tokens']:,} tokens)")
PY
done
cmp "$w/w1.bin" "$w/w$cores.bin" && cmp "$w/w1.idx" "$w/w$cores.idx" && echo "outputs byte-identical" | tee -a "$w/throughput.txt"
echo "cores: $cores, $(lscpu | grep -m1 'Model name')" | tee -a "$w/throughput.txt"
cp "$w/throughput.txt" "$w"/w*.out "$w"/w*.json "$out/" 2>/dev/null

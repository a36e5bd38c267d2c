"""The tiny MoE trains on CPU on prepared data: a tokenizer trained here with `tokenizers` (512 tokens, the tiny
model's vocabulary), two datasets made by moe-prepare-data (Python's own standard library sources, one document
per file; the repository's README, one per line), blended 0.6/0.4 with the default split, through moe-launch
and Megatron's pretrain loop. The loss falls; the data summary's vocabulary fits the model."""
from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from launcher.records.logparse import parse_file

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
VOCAB = 512


def _tokenizer(out: Path, texts: list[Path]) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(p) for p in texts], trainer)
    out.mkdir(parents=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                           "eos_token": "<|endoftext|>"}))
    return out


def _prepare(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "launcher.tools.prepare_data", *args, "--workers", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_tiny_moe_trains_on_a_blend_of_two_prepared_datasets(tmp_path):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = tmp_path / "code"
    code.mkdir()
    for src in sorted(stdlib.glob("[a-c]*.py"))[:40]:  # ~1 MB of Python, one document per file
        (code / f"{src.stem}.txt").write_text(src.read_text(errors="replace"))
    readme = tmp_path / "readme.txt"
    readme.write_text("\n".join(line for line in (REPO / "README.md").read_text().splitlines() if line.strip()))
    tok = _tokenizer(tmp_path / "tok", [readme, *sorted(code.iterdir())[:10]])
    data = tmp_path / "data"
    data.mkdir()
    _prepare(["--input", str(code), "--text-mode", "file", "--output-prefix", str(data / "code_text_document"),
              "--tokenizer-model", str(tok)])
    _prepare(["--input", str(readme), "--output-prefix", str(data / "readme_text_document"),
              "--tokenizer-model", str(tok)])
    run = tmp_path / "run"
    blend = f"data.paths=[0.6,{data / 'code_text_document'},0.4,{data / 'readme_text_document'}]"
    proc = subprocess.run([sys.executable, "-m", "launcher", "data=indexed", blend, f"data.tokenizer_model={tok}",
                           "train.train_iters=16", "train.seq_length=128", "data.num_workers=0",
                           # the ranks validate with Megatron anyway; the data rules are the launcher's own
                           "launch.megatron_validate=false", f"launch.run_dir={run}"],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "data.split=100,0,0" in proc.stdout  # the default split that works with a blend, said once
    losses = [it["loss"] for it in parse_file(run / "train.log").iterations]
    print("losses", [round(x, 3) for x in losses])
    assert len(losses) == 16
    # ln(512) = 6.24 at the start; measured 6.26 -> 5.29 at step 16 (real text learns slower than mock tokens)
    assert sum(losses[-4:]) / 4 < losses[0] - 0.7, losses
    assert json.loads((run / "record.json").read_text())["status"] == "ok"

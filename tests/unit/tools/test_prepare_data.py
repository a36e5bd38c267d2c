"""moe-prepare-data: JSONL / text / Parquet -> Megatron .bin/.idx, read back with Megatron's IndexedDataset.

The tokenizer is trained here, with the `tokenizers` library, on the repository's README; the corpus is
the README's paragraphs. Nothing reaches a network (hub refusals run with HF_HUB_OFFLINE=1).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from launcher.errors import ConfigError
from launcher.tools import data_sources, prepare_data
from launcher.tools.data_progress import Progress

REPO = Path(__file__).resolve().parents[3]
EOS = "<|endoftext|>"
VOCAB = 400


def _train_tokenizer(out: Path, with_config: bool = True) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(REPO / "README.md")], trainer)
    out.mkdir(parents=True)
    tok.save(str(out / "tokenizer.json"))
    if with_config:  # what makes it a Hugging Face tokenizer directory with an eos token
        (out / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS}))
    return out


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return _train_tokenizer(tmp_path_factory.mktemp("tok") / "bpe")


@pytest.fixture(scope="module")
def hf(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """The README's paragraphs (non-blank), in order: the expected documents."""
    return [p for p in (REPO / "README.md").read_text().split("\n\n") if p.strip()]


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory, texts) -> Path:
    path = tmp_path_factory.mktemp("in") / "readme.jsonl"
    rows = [json.dumps({"id": i, "content": t}) for i, t in enumerate(texts)]
    rows.insert(3, json.dumps({"id": -1, "content": ""}))  # an empty document: skipped and counted
    path.write_text("\n".join(rows) + "\n\n")             # a trailing blank line: ignored
    return path


def _run(inp, prefix: Path, tok_dir, *extra: str) -> int:
    args = ["--input", *map(str, inp if isinstance(inp, list) else [inp]), "--output-prefix", str(prefix),
            "--tokenizer-model", str(tok_dir), "--workers", "1", *extra]
    return prepare_data.main(args)


def _docs(prefix: Path) -> list[list[int]]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(prefix))
    assert list(ds.document_indices) == list(range(len(ds) + 1))  # one sequence per document
    return [ds[i].tolist() for i in range(len(ds))]


def _bytes(prefix: Path) -> tuple[bytes, bytes]:
    return Path(f"{prefix}.bin").read_bytes(), Path(f"{prefix}.idx").read_bytes()


def test_jsonl_documents_equal_direct_tokenization(tmp_path, tok_dir, hf, texts, jsonl):
    prefix = tmp_path / "readme_text_document"
    assert _run(jsonl, prefix, tok_dir, "--text-field", "content") == 0
    expected = [hf(t).input_ids + [hf.eos_token_id] for t in texts]
    assert _docs(prefix) == expected
    s = prepare_data.read_summary(str(prefix))
    assert (s["documents"], s["tokens"], s["skipped_documents"]) == (len(texts), sum(map(len, expected)), 1)
    assert s["tokenizer"]["vocab_size"] == len(hf) == VOCAB
    assert s["tokenizer"]["eod_id"] == hf.convert_tokens_to_ids(EOS)
    assert s["tokenizer"]["type"] == "HuggingFaceTokenizer" and s["tokenizer"]["model"] == str(tok_dir)
    assert s["dtype"] == "uint16" and s["workers"] == 1
    assert s["inputs"] == [{"path": str(jsonl), "format": "jsonl", "bytes": jsonl.stat().st_size}]


def test_no_append_eod(tmp_path, tok_dir, hf, texts, jsonl):
    prefix = tmp_path / "noeod"
    assert _run(jsonl, prefix, tok_dir, "--text-field", "content", "--no-append-eod") == 0
    assert _docs(prefix) == [hf(t).input_ids for t in texts]
    assert prepare_data.read_summary(str(prefix))["tokenizer"]["append_eod"] is False


def test_parquet_gives_the_bytes_of_the_same_jsonl(tmp_path, tok_dir, texts, jsonl):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(len(texts))), "content": texts}), tmp_path / "readme.parquet",
                   row_group_size=7)  # several row groups: the reader streams them
    assert _run(tmp_path / "readme.parquet", tmp_path / "pq", tok_dir, "--text-field", "content") == 0
    assert _run(jsonl, tmp_path / "js", tok_dir, "--text-field", "content") == 0
    assert _bytes(tmp_path / "pq") == _bytes(tmp_path / "js")


def test_worker_count_does_not_change_a_byte(tmp_path, tok_dir, jsonl, monkeypatch):
    # small chunks: about 40 of them, so two workers finish out of order and the writer must reorder
    monkeypatch.setattr(data_sources, "CHUNK_BYTES", 500)
    assert _run([jsonl, jsonl], tmp_path / "w1", tok_dir, "--text-field", "content") == 0
    assert _run([jsonl, jsonl], tmp_path / "w2", tok_dir, "--text-field", "content", "--workers", "2") == 0
    assert _bytes(tmp_path / "w1") == _bytes(tmp_path / "w2")
    assert prepare_data.read_summary(str(tmp_path / "w2"))["workers"] == 2


def test_plain_text_line_and_file_modes(tmp_path, tok_dir, hf):
    d = tmp_path / "txt"
    d.mkdir()
    (d / "a.txt").write_text("first line\n\nsecond line\n")
    (d / "b.txt").write_text("third\n")
    eos = hf.eos_token_id
    assert _run(d, tmp_path / "lines", tok_dir) == 0  # a directory: its files, sorted
    assert _docs(tmp_path / "lines") == [hf(t).input_ids + [eos] for t in ("first line", "second line", "third")]
    assert _run(d, tmp_path / "files", tok_dir, "--text-mode", "file") == 0
    assert _docs(tmp_path / "files") == [hf(t).input_ids + [eos] for t in ("first line\n\nsecond line", "third")]


def test_null_tokenizer_reads_ids(tmp_path):
    (tmp_path / "ids.txt").write_text("1 2 3\n7 8\n")
    args = ["--input", str(tmp_path / "ids.txt"), "--output-prefix", str(tmp_path / "ids"),
            "--tokenizer-type", "NullTokenizer", "--vocab-size", "10", "--workers", "1"]
    assert prepare_data.main(args) == 0
    assert _docs(tmp_path / "ids") == [[1, 2, 3, 9], [7, 8, 9]]  # eod = vocab_size - 1, Megatron's default
    (tmp_path / "big.txt").write_text("1 2 12\n")
    args[1], args[3] = str(tmp_path / "big.txt"), str(tmp_path / "big")
    assert prepare_data.main(args) == 2
    assert not Path(f"{tmp_path}/big.bin").exists() and not Path(f"{tmp_path}/big.bin.partial").exists()


def _refusal(capsys, argv: list[str], *needles: str) -> str:
    assert prepare_data.main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moe-prepare-data: error: ") and "Fix: " in lines[0], err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def base(tmp_path, tok_dir, jsonl):
    def argv(**over: str) -> list[str]:
        opts = {"--input": str(jsonl), "--output-prefix": str(tmp_path / "out"), "--tokenizer-model": str(tok_dir),
                "--text-field": "content", "--workers": "1", **over}
        return [x for k, v in opts.items() if v is not None for x in (k, v)]
    return argv


def test_refusals_name_field_value_rule_fix(capsys, tmp_path, base, monkeypatch):
    _refusal(capsys, base(**{"--input": str(tmp_path / "nope.jsonl")}), "--input=", "does not exist")
    (tmp_path / "data.csv").write_text("a,b\n")
    _refusal(capsys, base(**{"--input": str(tmp_path / "data.csv")}), "--input=", "--format jsonl")
    _refusal(capsys, base(**{"--format": "jsnl"}), "--format='jsnl'", "--format jsonl")
    _refusal(capsys, base(**{"--text-field": "contnt"}), "--text-field='contnt'", "--text-field content")
    _refusal(capsys, base(**{"--text-field": "id"}), "--text-field='id'", "not a string")
    _refusal(capsys, base(**{"--text-mode": "para"}), "--text-mode='para'")
    _refusal(capsys, base(**{"--workers": "0"}), "--workers=0", "at least 1")
    _refusal(capsys, base(**{"--workers": "two"}), "--workers", "invalid int")
    _refusal(capsys, base(**{"--output-prefix": str(tmp_path / "no" / "dir" / "x")}), "does not exist", "mkdir -p")
    _refusal(capsys, base(**{"--output-prefix": str(tmp_path) + "/"}), "names a directory")
    real_access = data_sources.os.access
    monkeypatch.setattr(prepare_data.os, "access",
                        lambda p, m: False if Path(p) == tmp_path else real_access(p, m))
    _refusal(capsys, base(), "--output-prefix=", "is not writable")


def test_tokenizer_refusals(capsys, tmp_path, base, monkeypatch):
    (tmp_path / "empty_tok").mkdir()
    _refusal(capsys, base(**{"--tokenizer-model": str(tmp_path / "empty_tok")}), "--tokenizer-model=",
             "could not be loaded as a Hugging Face tokenizer")
    _refusal(capsys, base(**{"--tokenizer-model": str(tmp_path / "missing_tok")}), "does not exist")
    _refusal(capsys, base(**{"--tokenizer-model": None}), "--tokenizer-model=None", "is required")
    _refusal(capsys, base(**{"--tokenizer-type": "HuggingfaceTokenizer"}), "--tokenizer-type HuggingFaceTokenizer")
    _refusal(capsys, base(**{"--tokenizer-type": "NullTokenizer"}), "--vocab-size")
    _refusal(capsys, base(**{"--eod-token": "<eos>"}), "--eod-token='<eos>'", "is not a token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # hub unreachable: one line at once, no retries
    _refusal(capsys, base(**{"--tokenizer-model": "no-such-org/no-such-tokenizer"}),
             "the hub cannot be reached", "--local-dir")


def test_tokenizer_without_eos(capsys, tmp_path, base, hf):
    bare = _train_tokenizer(tmp_path / "bare", with_config=False)  # tokenizer.json only: no eos token
    _refusal(capsys, base(**{"--tokenizer-model": str(bare)}), "has no eos token", "--eod-token")
    assert prepare_data.main(base(**{"--tokenizer-model": str(bare), "--eod-token": EOS})) == 0
    assert prepare_data.read_summary(str(tmp_path / "out"))["tokenizer"]["eod_id"] == hf.convert_tokens_to_ids(EOS)


def test_bad_corpus_mid_stream_leaves_no_output(capsys, tmp_path, base, texts):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"content": texts[0]}) + "\n" + "{not json\n")
    _refusal(capsys, base(**{"--input": str(bad)}), f"--input='{bad}:2'", "is not a JSON object")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]  # partial .bin removed
    bad.write_bytes(b'{"content": "ok"}\n{"content": "\xff\xfe"}\n')
    _refusal(capsys, base(**{"--input": str(bad)}), "is not UTF-8")
    bad.write_text("\n\n" + json.dumps({"content": "  "}) + "\n")
    _refusal(capsys, base(**{"--input": str(bad)}), "holds no non-empty document")


def test_existing_output_needs_overwrite(capsys, tmp_path, base):
    assert prepare_data.main(base()) == 0
    capsys.readouterr()
    _refusal(capsys, base(), "out.bin exists", "--overwrite")
    assert prepare_data.main(base() + ["--overwrite"]) == 0


def test_parquet_refusals(capsys, tmp_path, base):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["a", "b"], "n": [1, 2]}), tmp_path / "t.parquet")
    _refusal(capsys, base(**{"--input": str(tmp_path / "t.parquet")}), "is not a column", "--text-field body")
    _refusal(capsys, base(**{"--input": str(tmp_path / "t.parquet"), "--text-field": "n"}), "not a string column")
    (tmp_path / "fake.parquet").write_text("not parquet")
    _refusal(capsys, base(**{"--input": str(tmp_path / "fake.parquet")}), "is not a readable Parquet file")


def test_read_summary_refusals(tmp_path):
    with pytest.raises(ConfigError, match="has no x.summary.json"):
        prepare_data.read_summary(str(tmp_path / "x"))
    (tmp_path / "y.summary.json").write_text("{")
    with pytest.raises(ConfigError, match="cannot be read as JSON"):
        prepare_data.read_summary(str(tmp_path / "y"))
    (tmp_path / "z.summary.json").write_text('{"kind": "other"}')
    with pytest.raises(ConfigError, match="is not a moe-prepare-data summary"):
        prepare_data.read_summary(str(tmp_path / "z"))


def test_progress_line_on_a_terminal_and_in_a_log():
    now = [0.0]
    tty, log = io.StringIO(), io.StringIO()
    for stream, is_tty in ((tty, True), (log, False)):
        p = Progress(stream, tty=is_tty, clock=lambda: now[0])
        now[0] = 0.1
        p.update(1, 10, 100)          # too soon: nothing
        now[0] = 20.0
        p.update(1000, 2_000_000, 4_000_000)
        p.finish(1000, 2_000_000, 4_000_000)
        now[0] = 0.0
    assert tty.getvalue().count("\r") == 2 and tty.getvalue().endswith("\033[K\n")
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in log.getvalue()
    assert "1,000 docs, 2.00M tokens, 4.0 MB | 50 docs/s, 100.00k tokens/s, 0.20 MB/s | 20 s" in lines[0]


def test_the_command_imports_nothing_heavy():
    """Like the launcher: torch, megatron, tokenizers, transformers, pyarrow and numpy load only when used."""
    import subprocess
    import sys

    probe = ("import sys, launcher.tools.prepare_data\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('torch', 'megatron', 'tokenizers', 'transformers', 'pyarrow', 'numpy')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_a_bad_line_with_workers_running_stops_them_and_leaves_nothing(capsys, tmp_path, base, texts,
                                                                       monkeypatch):
    bad = tmp_path / "bad.jsonl"
    good = "".join(json.dumps({"content": t}) + "\n" for t in texts)
    bad.write_text(good * 3 + '{"content": 1}\n' + good)  # the bad line comes while chunks are in flight
    monkeypatch.setattr(data_sources, "CHUNK_BYTES", 500)
    _refusal(capsys, base(**{"--input": str(bad), "--workers": "2"}), f"{bad}:{3 * len(texts) + 1}",
             "type int, not a string")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]

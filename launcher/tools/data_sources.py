"""Input side of moe-prepare-data: find the input files, tell their format, stream their documents.

Nothing here loads a whole corpus: JSONL and plain text are read line by line, Parquet in record
batches of one column, and documents leave in chunks of about CHUNK_BYTES of text. The one exception
is --text-mode file (a whole file is one document), which holds one file at a time.
"""
from __future__ import annotations

import gzip
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator

from launcher.errors import ConfigError, closest

FORMATS = ("jsonl", "text", "parquet")
TEXT_MODES = ("line", "file")
# extension (after an optional .gz for the line formats) -> format
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".txt": "text", ".text": "text",
              ".parquet": "parquet"}
# a chunk is the unit a worker tokenizes: big enough that the inter-process copy is cheap next to the
# tokenization, small enough that 2 x workers chunks in flight stay a few MB
CHUNK_BYTES = 1 << 20
CHUNK_DOCS = 8192
PARQUET_BATCH_ROWS = 1024


@dataclass(frozen=True)
class InputFile:
    path: str
    format: str
    size: int  # bytes on disk (compressed size for .gz)


@dataclass(frozen=True)
class ReadOptions:
    text_field: str = "text"  # JSONL field / Parquet column holding the document
    text_mode: str = "line"   # plain text: one document per line, or per file


def _format_of(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
        if suffixes and EXTENSIONS.get(suffixes[-1]) == "parquet":
            return None  # Parquet compresses inside the file; a gzipped .parquet is not readable
    return EXTENSIONS.get(suffixes[-1]) if suffixes else None


def _one_file(path: Path, fmt: str) -> InputFile:
    detected = _format_of(path)
    chosen = detected if fmt == "auto" else fmt
    if chosen is None:
        raise ConfigError("--input", str(path), "the format cannot be told from the file name "
                          f"(known endings: {', '.join(sorted(EXTENSIONS))}, optionally .gz)",
                          "pass --format jsonl, text or parquet")
    if chosen == "parquet" and path.suffix.lower() == ".gz":
        raise ConfigError("--input", str(path), "a gzipped Parquet file cannot be streamed",
                          "gunzip it (Parquet compresses its own pages)")
    if not os.access(path, os.R_OK):
        raise ConfigError("--input", str(path), "is not readable", "fix its permissions")
    return InputFile(str(path), chosen, path.stat().st_size)


def _dir_files(path: Path, fmt: str) -> list[Path]:
    # sorted so that the document order, and so the output, does not depend on the file system
    found = sorted(p for p in path.rglob("*") if p.is_file() and _format_of(p) is not None)
    return [p for p in found if fmt == "auto" or _format_of(p) == fmt]


def expand_inputs(paths: Iterable[str], fmt: str = "auto") -> list[InputFile]:
    """Files given as they are, directories as their files of a known ending (recursive, sorted)."""
    if fmt != "auto" and fmt not in FORMATS:
        hint = closest(fmt, FORMATS)
        raise ConfigError("--format", fmt, f"is not one of auto, {', '.join(FORMATS)}",
                          f"--format {hint}" if hint else "pick one of them")
    files: list[InputFile] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise ConfigError("--input", raw, "does not exist", "give an existing file or directory")
        if path.is_dir():
            inside = _dir_files(path, fmt)
            if not inside:
                want = f"{fmt} files" if fmt != "auto" else "files ending in " + ", ".join(sorted(EXTENSIONS))
                raise ConfigError("--input", raw, f"is a directory with no {want}",
                                  "point at the files, or pass --format for their format")
            files += [_one_file(p, fmt) for p in inside]
        else:
            files.append(_one_file(path, fmt))
    if not files:
        raise ConfigError("--input", "", "no input given", "pass --input FILE_OR_DIR [...]")
    return files


def _open_text(path: str) -> IO[str]:
    # strict UTF-8: a corpus with broken bytes is refused (with its line), not silently mangled
    if path.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="\n")
    return open(path, encoding="utf-8", newline="\n")


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, line) with the newline removed; decoding and gzip errors name the line."""
    lineno = 0
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                yield lineno, line.rstrip("\n").rstrip("\r")
    except UnicodeDecodeError as e:
        raise ConfigError("--input", f"{path}:{lineno + 1}", f"is not UTF-8 text ({e.reason})",
                          "re-encode the file as UTF-8") from None
    except (OSError, EOFError) as e:  # truncated or corrupt .gz
        raise ConfigError("--input", f"{path}:{lineno + 1}", f"cannot be read ({e})",
                          "check or re-create the file") from None


def _json_text(path: str, lineno: int, line: str, field: str) -> str | None:
    """The document of one JSONL line; None for a null value (skipped, counted)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ConfigError("--input", f"{path}:{lineno}", f"is not a JSON object ({e.msg})",
                          "fix or remove the line (JSONL: one JSON object per line)") from None
    if not isinstance(record, dict):
        raise ConfigError("--input", f"{path}:{lineno}", f"is a JSON {type(record).__name__}, not an object",
                          "JSONL wants one JSON object per line")
    if field not in record:
        keys = [k for k in record if isinstance(record[k], str)] or list(record)
        hint = closest(field, keys) or (keys[0] if keys else None)
        raise ConfigError("--text-field", field, f"is not a field of {path}:{lineno} "
                          f"(fields: {', '.join(map(str, record))})",
                          f"--text-field {hint}" if hint else "add the text field to every line")
    value = record[field]
    if value is None or isinstance(value, str):
        return value
    raise ConfigError("--text-field", field, f"holds a value of type {type(value).__name__}, not a string, "
                      f"in {path}:{lineno}", "name the field that holds the document text")


def _jsonl_docs(path: str, opts: ReadOptions) -> Iterator[str | None]:
    for lineno, line in _lines(path):
        if line.strip():  # blank lines separate nothing in JSONL: skipped
            yield _json_text(path, lineno, line, opts.text_field)


def _text_docs(path: str, opts: ReadOptions) -> Iterator[str | None]:
    if opts.text_mode == "file":
        yield "\n".join(line for _, line in _lines(path))
        return
    for _, line in _lines(path):
        yield line


def _parquet_file(path: str, field: str):  # -> pyarrow.parquet.ParquetFile
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("--input", path, "Parquet input needs pyarrow, which is not installed",
                          "pip install 'moe-recipes[data]'") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError for anything that is not Parquet
        raise ConfigError("--input", path, f"is not a readable Parquet file ({str(e).splitlines()[0]})",
                          "check the file, or pass --format for its real format") from None
    names = pf.schema_arrow.names
    if field not in names:
        hint = closest(field, names) or (names[0] if names else None)
        raise ConfigError("--text-field", field, f"is not a column of {path} (columns: {', '.join(names)})",
                          f"--text-field {hint}" if hint else "name the text column")
    kind = str(pf.schema_arrow.field(field).type)
    if kind not in ("string", "large_string", "string_view"):
        raise ConfigError("--text-field", field, f"is a {kind} column of {path}, not a string column",
                          "name the column that holds the document text")
    return pf


def _parquet_docs(path: str, opts: ReadOptions) -> Iterator[str | None]:
    pf = _parquet_file(path, opts.text_field)
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[opts.text_field]):
        yield from batch.column(0).to_pylist()


READERS = {"jsonl": _jsonl_docs, "text": _text_docs, "parquet": _parquet_docs}


def preflight(files: list[InputFile], opts: ReadOptions) -> None:
    """Read the first document of every file, so a wrong field or format fails before any work."""
    if opts.text_mode not in TEXT_MODES:
        raise ConfigError("--text-mode", opts.text_mode, f"is not one of {', '.join(TEXT_MODES)}",
                          "--text-mode line (one document per line) or file (one per file)")
    for f in files:
        if f.format == "parquet":
            _parquet_file(f.path, opts.text_field)
        elif f.format == "jsonl":
            first = _jsonl_docs(f.path, opts)
            next(first, None)
            first.close()  # closes the file now, not at garbage collection


def documents(files: list[InputFile], opts: ReadOptions, skipped: list[int]) -> Iterator[str]:
    """Every non-empty document of every file, in order; skipped[0] counts the empty and null ones."""
    for f in files:
        for doc in READERS[f.format](f.path, opts):
            if doc is None or not doc.strip():
                skipped[0] += 1
                continue
            yield doc


def chunks(docs: Iterable[str], max_bytes: int = 0, max_docs: int = 0) -> Iterator[list[str]]:
    """Consecutive documents grouped into lists of about max_bytes characters (or max_docs documents;
    0: CHUNK_BYTES / CHUNK_DOCS, read at call time); the grouping never changes the output, only how
    the work is cut."""
    max_bytes, max_docs = max_bytes or CHUNK_BYTES, max_docs or CHUNK_DOCS
    chunk: list[str] = []
    size = 0
    for doc in docs:
        chunk.append(doc)
        size += len(doc)
        if size >= max_bytes or len(chunk) >= max_docs:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk

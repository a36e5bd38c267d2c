"""A memo of Megatron's validation: the same argv, world size, environment, target GPU and versions give the
same verdict, so a dry run (or a relaunch) need not import Megatron again to hear it (about 5 s of CPU on
a login node, most of a default dry run; issue 15).

The key is a SHA-256 of: the argv, the world size, the run environment, the compute capability, the
versions of megatron-core, torch and Transformer Engine (as installed; none when absent), and the source
of the code that validates (validator.py, parser.py, this file), so an upgrade or an edit misses. Only
successes are kept (a refusal is recomputed and says its own words again). Entries are small JSON files in
$MOE_CACHE_DIR, else $XDG_CACHE_HOME/moe-recipes, else ~/.cache/moe-recipes (under validate/).
MOE_VALIDATE_CACHE=0 turns it off. This is the plan room's one write: a cache outside the run directory
whose loss changes nothing but time; one that cannot be read or written is skipped.
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
CODE = (HERE / "validator.py", HERE / "parser.py", Path(__file__).resolve())


def enabled() -> bool:
    return os.environ.get("MOE_VALIDATE_CACHE", "1") != "0"


def cache_dir() -> Path:
    if os.environ.get("MOE_CACHE_DIR"):
        return Path(os.environ["MOE_CACHE_DIR"]) / "validate"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "moe-recipes" / "validate"


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)  # reads the installed metadata, imports nothing
    except metadata.PackageNotFoundError:
        return None


def cache_key(argv: list[str], world_size: int, env: dict[str, str], capability: tuple[int, int]) -> str:
    code = hashlib.sha256(b"".join(p.read_bytes() for p in CODE)).hexdigest()
    versions = {d: _version(d) for d in ("megatron-core", "torch", "transformer-engine", "transformer_engine")}
    doc = {"argv": list(argv), "world_size": world_size, "env": sorted(env.items()), "capability": list(capability),
           "versions": versions, "code": code}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def read(key: str) -> Optional[dict]:
    if not enabled():
        return None
    try:
        return json.loads((cache_dir() / f"{key}.json").read_text())["derived"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write(key: str, derived: dict) -> None:
    if not enabled():
        return
    path = cache_dir() / f"{key}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"derived": derived}) + "\n")
        os.replace(tmp, path)  # atomic: two launches at once never read half a file
    except OSError:
        pass  # a read-only home: the next launch validates again, nothing else changes

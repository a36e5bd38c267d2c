"""The corpus of malformed inputs (tests/data/malformed.yaml): each one stops before anything is allocated
with one line naming the field, the value, the rule and a fix. Placeholders name prepared data
(data_fixture.py) and broken variants of it made here."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from data_fixture import prepared  # noqa: F401 - the session fixture
from launcher.errors import ConfigError

# 138 launches to the first refusal (about 100 s on 2 cores): CI's `pytest -m 'not gpu'` runs them, a plain
# `pytest` (the fast set, under 3 minutes) leaves them out
pytestmark = pytest.mark.slow

CORPUS = yaml.safe_load((Path(__file__).resolve().parents[2] / "data" / "malformed.yaml").read_text())
CPU = ["cluster.device=cpu", "model.transformer_impl=local", "precision=fp32"]


@pytest.fixture(scope="session")
def places(prepared, tmp_path_factory) -> dict[str, str]:  # noqa: F811
    root = tmp_path_factory.mktemp("broken")
    a = Path(prepared["a"])
    out = {k: str(prepared[k]) for k in ("a", "b", "tok", "big", "big_tok")}

    def copy(name: str) -> Path:
        for ext in (".bin", ".idx"):
            shutil.copy(f"{a}{ext}", root / f"{name}{ext}")
        return root / name
    out["missing"] = str(root / "nothing_text_document")
    empty = copy("empty")
    Path(f"{empty}.bin").write_bytes(b"")
    out["empty"] = str(empty)
    trunc = copy("trunc")
    Path(f"{trunc}.idx").write_bytes(Path(f"{trunc}.idx").read_bytes()[:-8])
    out["trunc"] = str(trunc)
    mixed = copy("mixed")
    shutil.copy(f"{prepared['b']}.bin", f"{mixed}.bin")
    out["mixed"] = str(mixed)
    notidx = copy("notidx")
    Path(f"{notidx}.idx").write_bytes(b"not an index at all, but long enough to hold a header")
    out["notidx"] = str(notidx)
    (root / "plain_file").write_text("x")
    out["file"] = str(root / "plain_file")
    ro = root / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    out["ro"] = str(ro)
    tmp = root / "tmpdir"
    tmp.mkdir()
    out["tmp"] = str(tmp)
    return out


def _fill(items: list[str], places: dict[str, str]) -> list[str]:
    out = []
    for item in map(str, items):
        for key, value in places.items():  # only the placeholders: megatron.extra={...} keeps its braces
            item = item.replace("{" + key + "}", value)
        out.append(item)
    return out


@pytest.mark.parametrize("case", CORPUS, ids=[c["id"] for c in CORPUS])
def test_malformed_input_is_one_line(case, places, tmp_path, monkeypatch, capsys):
    for module in filter(None, [case.get("needs_missing")]):
        import importlib.util

        if importlib.util.find_spec(module) is not None:
            pytest.skip(f"{module} is installed here (the `logging` extra)")
    if case.get("needs_nonroot_or_rofs") and os.access(places["ro"], os.W_OK):
        pytest.skip("root writes into a 0555 directory; the rule needs a read-only filesystem to refuse")
    overrides = [*CPU, f"launch.run_dir={tmp_path / 'run'}", "launch.dry_run=true", *_fill(case["overrides"], places)]
    if case.get("conf"):
        from launcher.config import compose

        conf = tmp_path / "conf"
        shutil.copytree(compose.CONF_DIR, conf)
        (conf / case["conf"]["path"]).write_text(case["conf"]["text"])
        monkeypatch.setattr(compose, "CONF_DIR", conf)
    if case.get("cli"):
        from launcher.cli import main

        assert main(overrides) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith(f"moe-launch: error: {case['field']}="), err[0]
        assert case["says"] in err[0] and ". Fix: " in err[0]
        return
    from conftest import make_cfg
    from launcher.plan.plan import build_plan
    from conftest import PROBE

    with pytest.raises(ConfigError) as e:
        cfg = make_cfg(overrides)
        cfg.launch.megatron_validate = bool(case.get("megatron"))
        build_plan(cfg, PROBE)
    line = str(e.value)
    assert e.value.field == case["field"], line
    assert case["says"] in line, line
    assert "\n" not in line and ". Fix: " in line


def test_the_corpus_is_large_and_every_case_is_distinct():
    assert len(CORPUS) >= 100
    assert len({c["id"] for c in CORPUS}) == len(CORPUS)
    assert len({tuple(c["overrides"]) for c in CORPUS}) == len(CORPUS)

"""launcher/errors.py: the directory and file helpers turn an OSError on a path the user named into one line."""
from __future__ import annotations

import pytest

from launcher.errors import ConfigError, make_dir, write_text


def test_make_dir_makes_parents_and_names_the_field_when_it_cannot(tmp_path):
    assert make_dir(tmp_path / "a" / "b", "--out").is_dir()
    (tmp_path / "file").write_text("")
    for bad, why in ((tmp_path / "file" / "x", "Not a directory"), ("/proc/moe-test/x", "No such file")):
        with pytest.raises(ConfigError, match=why) as e:
            make_dir(bad, "--out")
        assert e.value.field == "--out" and "Fix: point --out at a writable directory" in str(e.value)


def test_write_text_names_the_field_when_it_cannot(tmp_path):
    write_text(tmp_path / "x.json", "{}", "--json")
    assert (tmp_path / "x.json").read_text() == "{}"
    with pytest.raises(ConfigError, match="cannot be written") as e:
        write_text(tmp_path, "{}", "--json")  # a directory there
    assert e.value.field == "--json" and "\n" not in str(e.value)

"""Megatron pipeline layout strings: "E" embedding, "t" decoder layer, "m" MTP layer, "L" loss,
"|" stage boundary, "," cosmetic, "(...)*n" and "x*n" repetition (pipeline_parallel_layer_layout.py)."""
from __future__ import annotations

import re

from launcher.errors import ConfigError

_GROUP = re.compile(r"\(([^()]*)\)\*(\d+)")
_CHAR = re.compile(r"([EtmL])\*(\d+)")


def parse_layout(text: str) -> list[str]:
    """Expand repetitions and split into stages: "Ett|(ttt|)*2tL" -> ["Ett", "ttt", "ttt", "tL"]."""
    if " " in text or re.search(r"\([^)]*\(", text):
        raise ConfigError("parallel.pipeline_layout", text, "Megatron's layout syntax has no spaces and no nested "
                          "groups", "write it flat, e.g. Ett|(ttt|)*30ttL")
    s = text.replace(",", "")
    while True:
        expanded = _GROUP.sub(lambda m: m.group(1) * int(m.group(2)), s)
        expanded = _CHAR.sub(lambda m: m.group(1) * int(m.group(2)), expanded)
        if expanded == s:
            break
        s = expanded
    bad = set(s) - set("EtmL|")
    if bad:
        raise ConfigError("parallel.pipeline_layout", text, f"unknown symbols {sorted(bad)}",
                          "use E, t, m, L, |, (...)*n")
    return s.split("|")

"""Credentials in cluster.env: a name that looks like one is never written to the run directory nor printed.

Its value reaches the ranks through the process environment of the launch (the local or container executor
passes it to command.sh's process, sbatch exports the submitting environment), and command.sh names it only
(`export NAME` when the launching shell has it). config.yaml, plan.json and command.sh show PLACEHOLDER.
"""
from __future__ import annotations

import fnmatch
from typing import Iterable

PLACEHOLDER = "<from environment>"
PATTERNS = ("*_KEY", "*_TOKEN", "*_SECRET", "*PASSWORD*", "*_KEY_*", "*CREDENTIAL*")


def is_secret(name: str, extra: Iterable[str] = ()) -> bool:
    """Case-insensitive match against the credential patterns and cluster.secret_names."""
    upper = name.upper()
    return any(fnmatch.fnmatchcase(upper, p.upper()) for p in (*PATTERNS, *extra))


def secret_env(env: dict[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """The credential entries of cluster.env, with their values (kept in memory only)."""
    extra = tuple(extra)
    return {k: str(v) for k, v in env.items() if is_secret(k, extra)}


def redact_overrides(overrides: list[str], names: Iterable[str]) -> list[str]:
    """Command-line overrides with the value of every credential replaced (plan.json's moe_launch)."""
    names = set(names)
    out = []
    for o in overrides:
        key, eq, _ = o.partition("=")
        bare = key.lstrip("+~")
        hit = eq and bare.startswith("cluster.env.") and bare[len("cluster.env."):] in names
        # a whole-dict override (cluster.env={A: 1, B_TOKEN: x}) cannot be edited safely: drop its value
        whole = eq and bare == "cluster.env" and names
        out.append(f"{key}={PLACEHOLDER}" if hit or whole else o)
    return out

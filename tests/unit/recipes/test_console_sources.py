"""Harmless warnings fixed at their source where we cause them (issue 15): Megatron's one_logger default
prints an internal wiki link on every run when its package is missing; recipes.pretrain turns the default
off then, without touching the argv."""
from __future__ import annotations

import importlib.util

from recipes.pretrain import _no_one_logger_without_its_package


def test_one_logger_default_is_off_without_its_package(monkeypatch):
    from megatron.training.arguments import parse_args

    assert importlib.util.find_spec("one_logger") is None  # this environment: the warning would print
    monkeypatch.setattr("sys.argv", ["pretrain"])
    assert parse_args().enable_one_logger is True               # Megatron's own default
    assert parse_args(_no_one_logger_without_its_package).enable_one_logger is False


def test_one_logger_default_stays_when_the_package_is_there(monkeypatch):
    import argparse

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "one_logger" else real(name))
    p = argparse.ArgumentParser()
    p.add_argument("--no-one-logger", action="store_false", dest="enable_one_logger")
    assert _no_one_logger_without_its_package(p).parse_args([]).enable_one_logger is True

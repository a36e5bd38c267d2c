"""MOE_DEBUG_LOGGERS (recipes/pretrain.py): the named loggers print their DEBUG lines, with a time, once each;
other loggers keep their level."""
from __future__ import annotations

import logging

from recipes import pretrain


def test_named_loggers_print_debug_lines_once(monkeypatch, capsys):
    names = ["moe_test.ckpt_a", "moe_test.ckpt_b"]
    monkeypatch.setenv("MOE_DEBUG_LOGGERS", " moe_test.ckpt_a, ,moe_test.ckpt_b ")
    try:
        pretrain._debug_loggers()
        logging.getLogger("moe_test.ckpt_a").debug("rank: 0, plan time: 1.5")
        logging.getLogger("moe_test.ckpt_b.child").debug("takes 3.0 to finish D2H")
        logging.getLogger("moe_test.other").debug("not shown")
        err = capsys.readouterr().err
        assert err.count("moe_test.ckpt_a: rank: 0, plan time: 1.5") == 1
        assert "moe_test.ckpt_b.child: takes 3.0 to finish D2H" in err and "not shown" not in err
    finally:
        for n in names:
            log = logging.getLogger(n)
            log.handlers.clear()
            log.setLevel(logging.NOTSET)
            log.propagate = True


def test_unset_changes_nothing(monkeypatch):
    monkeypatch.delenv("MOE_DEBUG_LOGGERS", raising=False)
    before = dict(logging.Logger.manager.loggerDict)
    pretrain._debug_loggers()
    assert dict(logging.Logger.manager.loggerDict) == before

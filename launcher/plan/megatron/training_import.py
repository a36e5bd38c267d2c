"""megatron.training on the login side, without nvidia-modelopt.

megatron-core 0.19.2's training package imports modelopt at import time (training/checkpointing.py and
training/training.py) for two hooks that also need megatron.post_training, which the wheel does not ship: they stay
off whatever happens (has_nvidia_modelopt = False). With the modelopt extra installed that import costs modelopt and
the transformers it pulls in: `import megatron.training.arguments` took 9.0 s (7.7 s CPU) here, 5.1 s with modelopt
absent, in every moe-launch, dry run and moe-doctor. While megatron.training loads, `modelopt` is marked absent
(None in sys.modules: `import modelopt` raises ModuleNotFoundError, which both hooks catch); the mark is removed
afterwards, so a later `import modelopt` (moe-convert, the QAT rules) works as usual. The ranks do the same in
recipes/megatron_import.py.
"""
from __future__ import annotations

import importlib.util
import sys


def load() -> None:
    """Import megatron.training (idempotent); modelopt stays out unless something loaded it already or Megatron's
    hooks could really use it (megatron.post_training present)."""
    if "megatron.training" in sys.modules:
        return
    hide = "modelopt" not in sys.modules and importlib.util.find_spec("megatron.post_training") is None
    if hide:
        sys.modules["modelopt"] = None  # type: ignore[assignment]
    try:
        import megatron.training  # noqa: F401
    finally:
        if hide and sys.modules.get("modelopt", False) is None:
            del sys.modules["modelopt"]

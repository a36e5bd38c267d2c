"""Import megatron.training without loading nvidia-modelopt for hooks that cannot be enabled (every rank).

Megatron-Core 0.19.2 tries `from modelopt.torch.opt.plugins import ...` (training/checkpointing.py:69) and
`from modelopt.torch.distill.plugins.megatron import ...` (training/training.py:209) at import time, each
followed in the same try block by `from megatron.post_training.utils import ...`. The wheel does not ship
megatron.post_training, so both blocks fail and `has_nvidia_modelopt` is False whatever happens, but only
after modelopt (and, through its plugins, transformers) has been loaded: about 45% of `import
megatron.training` (measured on 2 shared cores: 7.7 s of CPU with it, 4.2 s without), paid by every rank
of every run once the `modelopt` or `test` extra is installed.

So while Megatron's modules load, modelopt is hidden, when those hooks are dead (no megatron.post_training)
and the run does not use modelopt itself (quant.qat and distill, MOE_QAT/MOE_DISTILL: those runs import
Megatron exactly as before; recipes/qat.py installs the save hooks itself). The finder is removed as
soon as Megatron is loaded, so a later `import modelopt` works as usual.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys

HIDDEN = "modelopt"


class _HideModelopt(importlib.abc.MetaPathFinder):
    """A finder that answers every modelopt import with the error a missing package gives."""

    def find_spec(self, name, path=None, target=None):
        if name == HIDDEN or name.startswith(HIDDEN + "."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden while Megatron loads: "
                                      "recipes/megatron_import.py)", name=name)
        return None


def modelopt_hooks_dead() -> bool:
    """Megatron's import-time modelopt hooks need megatron.post_training, which the 0.19.2 wheel lacks."""
    return importlib.util.find_spec("megatron.post_training") is None


def hide_modelopt(uses_modelopt: bool) -> bool:
    """Whether to load Megatron with modelopt hidden: only where it would be loaded for nothing."""
    return not uses_modelopt and HIDDEN not in sys.modules and modelopt_hooks_dead()


def load_megatron_training(uses_modelopt: bool) -> bool:
    """Import megatron.training (the pretrain loop and its checkpointing); True when modelopt was hidden."""
    if not hide_modelopt(uses_modelopt):
        import megatron.training  # noqa: F401
        return False
    finder = _HideModelopt()
    sys.meta_path.insert(0, finder)
    try:
        import megatron.training  # noqa: F401
        import megatron.training.checkpointing  # noqa: F401
        import megatron.training.training  # noqa: F401
    finally:
        sys.meta_path.remove(finder)
    return True

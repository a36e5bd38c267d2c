"""recipes/megatron_import.py: Megatron loads without nvidia-modelopt where its modelopt hooks are dead anyway, with
the same has_nvidia_modelopt (False), and modelopt imports as usual afterwards."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from recipes import megatron_import

REPO = Path(__file__).resolve().parents[3]


def test_the_finder_hides_modelopt_and_nothing_else():
    finder = megatron_import._HideModelopt()
    for name in ("modelopt", "modelopt.torch.opt.plugins"):
        with pytest.raises(ModuleNotFoundError, match="hidden while Megatron loads"):
            finder.find_spec(name)
    assert finder.find_spec("modelopt_like") is None and finder.find_spec("megatron.training") is None


def test_hidden_only_for_runs_without_modelopt_where_the_hooks_are_dead(monkeypatch):
    assert megatron_import.modelopt_hooks_dead()  # megatron-core 0.19.2's wheel has no megatron.post_training
    monkeypatch.delitem(sys.modules, "modelopt", raising=False)
    assert megatron_import.hide_modelopt(uses_modelopt=False)
    assert not megatron_import.hide_modelopt(uses_modelopt=True)  # QAT / distillation: Megatron loads as before
    monkeypatch.setattr(megatron_import, "modelopt_hooks_dead", lambda: False)
    assert not megatron_import.hide_modelopt(uses_modelopt=False)  # a Megatron whose hooks would work keeps them


PROBE = textwrap.dedent("""
    import json, sys
    from recipes import megatron_import
    hidden = megatron_import.load_megatron_training(uses_modelopt=sys.argv[1] == "1")
    import megatron.training.checkpointing as ckpt, megatron.training.training as training
    loaded = "modelopt" in sys.modules
    import modelopt.torch.opt  # noqa: F401 - the finder is gone: recipes/qat.py can import it
    print(json.dumps({"hidden": hidden, "loaded_with_megatron": loaded, "hooks": [ckpt.has_nvidia_modelopt,
                      training.has_nvidia_modelopt], "finders": sum(type(f).__name__ == "_HideModelopt"
                                                                    for f in sys.meta_path)}))
""")


@pytest.mark.slow  # two fresh interpreters import Megatron (seconds each): CI runs it, the fast set leaves it out
@pytest.mark.parametrize("uses_modelopt", [False, True])
def test_megatron_loads_with_the_same_dead_hooks_and_modelopt_imports_after(uses_modelopt):
    pytest.importorskip("modelopt")
    proc = subprocess.run([sys.executable, "-c", PROBE, "1" if uses_modelopt else "0"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # the hooks are off either way; only where the run uses modelopt does Megatron load it (as it always did)
    assert got == {"hidden": not uses_modelopt, "loaded_with_megatron": uses_modelopt, "hooks": [False, False],
                   "finders": 0}

"""The login side imports megatron.training without nvidia-modelopt (launcher/plan/megatron/training_import.py),
in a fresh interpreter: Megatron's hooks stay off as they would anyway, modelopt is not loaded, and a later
`import modelopt` still works."""
import subprocess
import sys

import pytest

SCRIPT = """
import sys
from launcher.plan.megatron.training_import import load
load()
import megatron.training.checkpointing as ck, megatron.training.training as tr
print("loaded:", "modelopt" in sys.modules, ck.has_nvidia_modelopt, tr.has_nvidia_modelopt)
import modelopt
print("later:", modelopt.__name__)
"""


@pytest.mark.slow
def test_megatron_training_loads_without_modelopt_and_modelopt_still_imports_later():
    pytest.importorskip("modelopt")
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "loaded: False False False" in out.stdout and "later: modelopt" in out.stdout, out.stdout

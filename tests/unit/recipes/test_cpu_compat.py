"""recipes/cpu_compat.py on a machine without CUDA: torch.compile'd functions (Megatron's jit_fuser) run eagerly."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[3]

PROBE = textwrap.dedent("""
    import torch
    from recipes import cpu_compat
    assert cpu_compat.apply_torch()
    seen = []

    @torch.compile  # what megatron/core/jit.py makes of @jit_fuser
    def swiglu_like(x):
        seen.append(torch.compiler.is_compiling())  # True while dynamo traces it, False when it runs eagerly
        return torch.nn.functional.silu(x) * x

    y = swiglu_like(torch.ones(4))
    assert torch.equal(y, torch.nn.functional.silu(torch.ones(4)))
    print(seen)
""")


@pytest.mark.slow  # a fresh interpreter (apply_torch patches torch for good): CI runs it, the fast set leaves it out
@pytest.mark.skipif(torch.cuda.is_available(), reason="cpu_compat acts only where there is no CUDA")
def test_compiled_functions_run_eagerly_on_cpu():
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[False]"  # never traced: no inductor build on any rank

"""moe-doctor: will the dispatcher this config asks for work on this machine? Composes like moe-launch, runs the
launcher's login-side rules (the flex backends' requirements among them), then the compute-side checks of
recipes/preflight.py in a child python on this machine, with the run's environment: deep_ep's signatures
against megatron-core 0.19.2's calls, NVLink between one EP group's GPUs, NVSHMEM versions, HybridEP's JIT and
NVLink domain, TE's NCCL EP, GPU architecture against dispatcher and precision. The same checks run on every
rank of a real run before the model is built (recipes/pretrain.py). Run it on a compute node for the GPU checks.

usage: moe-doctor [group=option ...] [key.path=value ...]
  e.g. moe-doctor model=qwen3_30b_a3b model.num_layers=8 parallel=ep2 dispatcher=hybridep cluster.gpus_per_node=2
Exit status: 0 ready, 2 bad config (login-side rule), 3 a compute-side check failed.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Optional

from launcher.config.schema import RunConfig
from launcher.errors import ConfigError
from launcher.plan.resolve import Resolved
from launcher.tools.usage import args_or_help


def preflight_argv(cfg: RunConfig, res: Resolved) -> list[str]:
    """recipes.preflight's arguments: backend, FP8 recipe, EP group size, GPUs of this node, nodes one EP group
    spans (the flex dispatcher's group is expert-model-parallel x expert tensor-parallel)."""
    d, p = cfg.dispatcher, cfg.parallel
    backend = str(d.flex_backend) if str(d.type) == "flex" and d.flex_backend else "none"
    fp8 = str(cfg.precision.fp8_recipe) if cfg.precision.fp8_recipe else "none"
    group = p.ep * (p.etp or p.tp)
    local = res.nproc_per_node
    from launcher.plan.rules.dispatcher import megatron_value

    fused = [] if backend != "hybridep" else ["fused"] if any(megatron_value(cfg, k) not in (None, False) for k in (
        "moe_permute_fusion_into_hybridep", "moe_hybridep_num_blocks_permute", "moe_hybridep_num_blocks_unpermute")) \
        else []
    return [backend, fp8, str(group), str(local), str(-(-group // max(local, 1))), *fused]


def main(argv: Optional[list[str]] = None) -> int:
    args = args_or_help(argv, __doc__.split("\n\n", 1)[1])
    if args is None:
        return 0
    try:
        from launcher.config.compose import compose
        from launcher.plan.plan import run_env
        from launcher.plan.probe import detect
        from launcher.plan.resolve import resolve
        from launcher.plan.rules import validate

        from launcher.plan.dispatch_tuned import apply_tuned

        _, cfg = compose(args)
        cfg = apply_tuned(cfg)  # dispatcher.tuned: check the knobs the run will get
        cfg.launch.dry_run = True  # the doctor starts no run: the rules as for a dry run
        res = resolve(cfg, detect())
        validate(cfg, res)
        env = {**os.environ, **run_env(cfg, res)}
    except ConfigError as e:
        print(f"moe-doctor: error: {e}", file=sys.stderr)
        return 2
    d = cfg.dispatcher
    name = f"{d.type}/{d.flex_backend}" if d.flex_backend else str(d.type)
    print(f"moe-doctor: dispatcher {name}, {cfg.precision.name}, login-side rules passed")
    checks = preflight_argv(cfg, res)
    proc = subprocess.run([sys.executable, "-m", "recipes.preflight", *checks], env=env)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())

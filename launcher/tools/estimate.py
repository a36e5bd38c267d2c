"""moe-estimate: will this layout fit, and how many FLOPs is a step? Composes like moe-launch, runs nothing,
imports neither torch nor megatron.

usage: python -m launcher.tools.estimate [--json FILE] [group=option ...] [key.path=value ...]
  e.g. python -m launcher.tools.estimate preset=qwen3_235b_a22b_256xh100_tp2pp8vpp4ep32_deepep_bf16
       python -m launcher.tools.estimate model=qwen3_30b_a3b model.num_layers=8 parallel=ep2 train=pretrain \
           train.micro_batch_size=4 train.global_batch_size=32 cluster.gpus_per_node=2 hardware=h200
The GPU count comes from the cluster group (cluster.nodes x cluster.gpus_per_node, or hardware's GPUs per
node for Slurm); on a machine without GPUs set one of them, or the estimate is for a CPU run.
Exit status: 0 fits, 1 predicted not to fit, 2 bad config.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

from launcher.errors import ConfigError, write_text
from launcher.tools.usage import args_or_help


def main(argv: Optional[list[str]] = None) -> int:
    args = args_or_help(argv, __doc__.split("\n", 2)[2])
    if args is None:
        return 0
    out = None
    if "--json" in args:
        i = args.index("--json")
        if i + 1 >= len(args):
            print("moe-estimate: error: --json needs a file name", file=sys.stderr)
            return 2
        out = Path(args[i + 1])
        del args[i:i + 2]
    try:
        from launcher.config.compose import compose
        from launcher.plan.plan import resolve_and_validate
        from launcher.plan.tuned import tuned_config
        from launcher.plan.estimate_flops import estimate_flops
        from launcher.plan.estimate_memory import estimate_memory
        from launcher.plan.estimate_table import check_fits, estimate_record, render_table
        from launcher.plan.probe import detect

        _, cfg = compose(args)
        cfg.launch.dry_run = True  # the estimate starts nothing: the launcher's rules as for a dry run
        # the launcher's own rules first (the estimate assumes a valid layout), tuned knobs as a launch resolves them
        res = resolve_and_validate(cfg, detect())
        cfg = tuned_config(cfg, res.tuned)
        est = estimate_memory(cfg, res)
        p = cfg.parallel
        title = (f"{cfg.model.name} on {res.world_size} x {res.device} ({cfg.hardware.name}): tp={p.tp} pp={p.pp} "
                 f"vpp={p.vpp} ep={p.ep} etp={p.etp} cp={p.cp} dp={res.data_parallel_size(cfg)}, "
                 f"MBS {cfg.train.micro_batch_size}, seq {cfg.train.seq_length}, recompute "
                 f"{cfg.recompute.granularity} {[getattr(m, 'value', m) for m in cfg.recompute.modules]}, "
                 f"{cfg.precision.name}\n")
        print(render_table(est, estimate_flops(cfg), title))
        if out is not None:
            write_text(out, json.dumps(estimate_record(cfg, res), indent=1) + "\n", "--json")
        check_fits(cfg, res, est)
    except ConfigError as e:
        print(f"moe-estimate: error: {e}", file=sys.stderr)
        return 1 if e.field == "memory" else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

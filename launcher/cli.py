"""moe-launch: compose -> validate -> plan -> write the run directory -> run (or stop: dry run).

usage: moe-launch [group=option ...] [key.path=value ...]
  e.g. moe-launch model=qwen3_30b_a3b parallel=ep8 train.micro_batch_size=2 launch.dry_run=true
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from launcher.config.schema import RunConfig
    from launcher.plan.checkpoint import ResumePoint

from launcher.errors import ConfigError

USAGE = __doc__.split("\n", 2)[2]


def _help() -> str:
    from launcher.config.compose import group_options, groups

    lines = [USAGE.rstrip(), "", "config groups (conf/<group>/<option>.yaml):"]
    lines += [f"  {g:<11} {', '.join(group_options(g))}" for g in groups()]
    lines += ["", "any field can be overridden: model.num_layers=8 parallel.ep=2 cluster.gpus_per_node=2",
              "any Megatron flag the schema does not set: 'megatron.extra={moe_per_layer_logging: true}' or "
              "'megatron.raw=[--log-params-norm]'",
              "launch.dry_run=true writes the run directory (config.yaml, plan.json, argv.txt, command.sh) "
              "and runs nothing"]
    return "\n".join(lines)


def _size(n: float) -> str:
    gib = 2 ** 30
    return f"{n / gib:.1f} GiB" if n >= gib / 10 else f"{n / 2 ** 20:.0f} MiB"  # the tiny model is ~100 MiB


def _saves(plan) -> str:
    """What the run leaves behind and where: logs and records, and the checkpoints the plan writes."""
    from launcher.plan.checkpoint import describe

    return (f"  saves:    train.log (all output), record.json/.md in the run directory; "
            f"{describe(plan.checkpoint) if plan.checkpoint else 'no checkpoints'}")


def _modelopt_lines(cfg) -> list[str]:
    """What nvidia-modelopt does inside the run (recipes/qat.py, recipes/distill.py), when it does anything."""
    q, d = cfg.quant, cfg.distill
    lines = []
    if q.qat != "none":
        lines.append(f"  quant:    {q.qat} fake-quant QAT (modelopt), amax calibrated on {q.calib_batches} micro "
                     f"batches after the weights load (a QAT checkpoint restores them instead); unquantized: "
                     f"{', '.join(q.exclude) or 'modelopt defaults'}")
    if d.enabled:
        pairs = f", {len(d.layer_pairs)} layer pairs x {d.layer_weight}" if d.layer_pairs else ""
        lines.append(f"  distill:  teacher {d.teacher_checkpoint} (frozen, architecture from its checkpoint), logit KL "
                     f"at T={d.temperature}{pairs}, lm loss x {d.lm_loss_weight}")
    return lines


def plan_lines(cfg, plan, run_dir: Path) -> list[str]:
    """The plan in a few lines: model, layout and world size, training, memory, what is saved, the run directory.
    How each `auto` was resolved is one line (each reason in plan.json; launch.verbose=true prints them)."""
    res, p, m, b = plan.resolved, cfg.parallel, cfg.model, plan.facts["batch"]
    flex = f"/{cfg.dispatcher.flex_backend}" if cfg.dispatcher.flex_backend else ""
    vpp = f" vpp={p.vpp}" if p.vpp else ""
    lines = [f"moe-launch: {m.name} on {res.world_size} x {res.device}: {m.num_layers} layers, {m.num_experts} experts "
             f"(top-{m.moe_router_topk})",
             f"  layout:   tp={p.tp} pp={p.pp}{vpp} ep={p.ep} etp={p.etp} cp={p.cp} dp={res.data_parallel_size(cfg)}, "
             f"dispatcher {cfg.dispatcher.type}{flex}, {cfg.precision.name}, {res.transformer_impl} layers",
             f"  training: {b['train_iters']} iterations, global batch {b['global_batch_size']} x {b['seq_length']} "
             f"tokens, micro batch {b['micro_batch_size']}, {cfg.data.kind} data"]
    est = plan.estimate
    lines.append(f"  memory:   predicted peak {_size(est['peak_bytes'])} of {_size(est['capacity_bytes'])} per "
                 f"{'process' if res.device == 'cpu' else 'GPU'} (pipeline rank {est['worst_rank']}; estimate.json)")
    lines.append(_saves(plan))
    if cfg.launch.max_restarts:
        lines.append(f"  restarts: up to {cfg.launch.max_restarts}, from the newest complete checkpoint, after a rank "
                     "killed by a signal or a timeout (launch.max_restarts)")
    lines += _modelopt_lines(cfg)
    if res.notes and cfg.launch.verbose:
        lines += [f"  resolved: {note}" for note in res.notes]
    elif res.notes:
        lines.append(f"  resolved: {', '.join(n.split(':', 1)[0] for n in res.notes)} (why: plan.json)")
    lines.append(f"moe-launch: run directory {run_dir}")
    return lines


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the program itself (moe-launch, python -m launcher), not a caller's test
        from launcher.run.console import guard

        guard()  # a reader that goes away ends the console, not the run (launcher/run/console.py)
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(_help())
        return 0
    try:
        from launcher.config.compose import compose
        from launcher.plan.probe import detect
        from launcher.run.registry import executor_for
        from launcher.run.rundir import check_run_dir, default_run_dir
        from launcher.run.rundir_lock import lock_run_dir

        composed, cfg = compose(args)
        executor = executor_for(cfg)
        run_dir = Path(cfg.launch.run_dir) if cfg.launch.run_dir else default_run_dir(cfg)
        check_run_dir(run_dir, cfg)  # before the plan: Megatron's validator takes half a minute
        # a directory in use is refused before its checkpoints are read; a new one is made only for a valid plan
        lock = lock_run_dir(run_dir) if run_dir.exists() else None
        probe = detect()
        plan, entry_text = _plan(cfg, executor, run_dir, _resume_point(cfg, run_dir), probe)
        if not cfg.launch.dry_run:
            executor.check_machine(cfg, plan, probe)  # e.g. a local GPU run on a machine without GPUs: one line, no run
        lock = lock or lock_run_dir(run_dir)  # held until moe-launch exits
        script, archived = _write_attempt(cfg, composed, args, executor, run_dir, plan, entry_text)
    except ConfigError as e:
        print(f"moe-launch: error: {e}", file=sys.stderr)
        return 2
    for line in plan_lines(cfg, plan, run_dir):
        print(line)
    if archived is not None:
        print(f"moe-launch: the previous attempt's files are in {archived}")
    for note in plan.checkpoint.notes:
        print(f"moe-launch: {note}", file=sys.stderr if note.startswith("warning") else sys.stdout)
    room = _room_warning(cfg, plan)
    if room:
        print(f"moe-launch: {room}", file=sys.stderr)
    if cfg.launch.dry_run:
        print(script.read_text(), end="")
        print(f"moe-launch: dry run: nothing started; run it with: {executor.how_to_run(script)}")
        return 0
    try:
        rc = executor.run(cfg, script)
        for n in range(1, cfg.launch.max_restarts + 1):
            script = _restart(cfg, composed, args, executor, run_dir, n) if rc != 0 else None
            if script is None:
                break
            rc = executor.run(cfg, script)
        return rc
    finally:
        lock.close()  # the kernel would drop it at exit anyway; closing says the run is over


def _room_warning(cfg, plan) -> Optional[str]:
    """launcher/run/disk_room.py: whether the run's checkpoints fit the free space (a warning, never a refusal)."""
    from launcher.run.disk_room import room_warning

    try:
        return room_warning(cfg, plan.checkpoint) if plan.checkpoint else None
    except OSError:  # the save path's file system cannot be read from here: nothing to say
        return None


def _plan(cfg, executor, run_dir: Path, resume, probe):
    """The launch plan and the executor's entry file text (sbatch.sh / container.sh: rendered, so checked, first)."""
    from launcher.run.registry import launch_plan

    plan = launch_plan(cfg, probe, run_dir=run_dir, resume=resume)
    return plan, executor.render(cfg, plan, run_dir)


def _write_attempt(cfg, composed, args, executor, run_dir: Path, plan,
                   entry_text: Optional[str]) -> tuple[Path, Optional[Path]]:
    """A new attempt's files: the earlier attempt moved to attempts/<n>/, then the run directory and entry file
    written; returns the file a real run executes and where the earlier attempt went (None: there was none)."""
    from launcher.run.rundir import write_run_dir
    from launcher.run.rundir_lock import archive_attempt

    archived = archive_attempt(run_dir)
    script = write_run_dir(run_dir, composed, plan, executor.workdir(cfg), args)
    return executor.write_entry(run_dir, entry_text, script), archived


def _restart(cfg, composed, args, executor, run_dir: Path, n: int) -> Optional[Path]:
    """launch.max_restarts: re-plan from the newest checkpoint and write the next attempt, when the failure is one
    a restart can fix (launcher/run/restart.py); returns the attempt's entry file, or None (and one line why) when
    the run ends here."""
    from launcher.run.restart import not_restarted, restart_reason

    why, resume = restart_reason(run_dir), _resume_point(cfg, run_dir)
    if why is None or resume is None:
        what = f"the failure is {not_restarted(run_dir)}" if why is None else "there is no complete checkpoint"
        print(f"moe-launch: not restarting: {what} (launch.max_restarts restarts after a rank killed by a "
              "signal or a timeout, from a complete checkpoint)", file=sys.stderr)
        return None
    try:
        from launcher.plan.probe import detect

        plan, entry_text = _plan(cfg, executor, run_dir, resume, detect())
        script, archived = _write_attempt(cfg, composed, args, executor, run_dir, plan, entry_text)
    except ConfigError as e:
        print(f"moe-launch: not restarting: {e}", file=sys.stderr)
        return None
    print(f"moe-launch: restart {n}/{cfg.launch.max_restarts}: {why}; the failed attempt is in {archived}; "
          f"resuming from iteration {resume.iteration}", file=sys.stderr)
    return script


def _resume_point(cfg: "RunConfig", run_dir: Path) -> "Optional[ResumePoint]":
    """The newest complete checkpoint in the directory this run saves to, when it should resume from it."""
    from launcher.plan.checkpoint import save_dir
    from launcher.run.resume import find_resume

    ckpt = save_dir(cfg, run_dir)
    return find_resume(Path(ckpt)) if ckpt and cfg.train.checkpoint.resume else None

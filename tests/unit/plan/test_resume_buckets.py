"""A resume, or a start from train.load, cuts its gradient buckets as the checkpoint's run did
(launcher/plan/resume_buckets.py): checkpoints written by Megatron's own dist_checkpointing with the saving run's
arguments in the common state and the optimizer format in the content metadata, read by find_resume as moe-launch
does, then planned; Megatron's validator takes the argv. What it replaces: recipes/checkpoint.py refusing the resume
(tests/unit/recipes/test_expert_checkpoint.py)."""
from __future__ import annotations

import dataclasses

from conftest import make_cfg
from launcher.plan.plan import build_plan
from launcher.plan.probe import MachineProbe
from launcher.records.checkpoint_buckets import BucketCut, read_saved_buckets
from launcher.run.resume import find_resume
from saved_checkpoint import write_checkpoint

H200X2 = MachineProbe(gpus=2, transformer_engine=True, apex_fused_wgrad=False, deep_ep=False, cpu_count=16)
EP2 = ["model=qwen3_30b_a3b", "model.num_layers=8", "train=pretrain", "hardware=h200", "parallel=ep2",
       "train.micro_batch_size=4", "train.global_batch_size=32"]


def _checkpoint(ckpt_dir, monkeypatch, fmt="dp_reshardable", **saved):
    """<ckpt_dir>/iter_0000010 as Megatron writes it, and the tracker file beside it."""
    return write_checkpoint(ckpt_dir, monkeypatch, fmt, **saved)


def _resume_plan(tmp_path, monkeypatch, overrides=(), validate=False, **saved):
    run_dir = tmp_path / "run"
    point = find_resume(_checkpoint(run_dir / "checkpoints", monkeypatch, **saved))
    cfg = make_cfg([*EP2, *overrides])
    cfg.launch.megatron_validate = validate
    return build_plan(cfg, H200X2, run_dir, point), point


def test_find_resume_reads_how_the_checkpoint_cut_its_buckets(gloo_world, tmp_path, monkeypatch):
    point = find_resume(_checkpoint(tmp_path / "a", monkeypatch, overlap_grad_reduce=False, data_parallel_size=1))
    assert point.iteration == 10
    assert point.buckets == BucketCut(overlap_grad_reduce=False, bucket_size=None, num_buckets=None,
                                         data_parallel_size=1)
    # per-parameter optimizer state loads into any buckets: nothing to follow
    assert find_resume(_checkpoint(tmp_path / "b", monkeypatch, fmt="fully_reshardable")).buckets is None
    assert read_saved_buckets(tmp_path / "missing") is None


def test_a_one_gpu_checkpoint_resumes_on_two_gpus_with_its_single_bucket(gloo_world, tmp_path, monkeypatch):
    """overlap_grad_reduce=auto would be on at EP2 (dense gradients reduce over 2 ranks); the checkpoint of a one-GPU
    run (auto -> off: one bucket) makes it off, and Megatron accepts the argv at 2 GPUs."""
    plan, _ = _resume_plan(tmp_path, monkeypatch, validate=True, overlap_grad_reduce=False)
    assert "--overlap-grad-reduce" not in plan.argv and "--overlap-param-gather" not in plan.argv
    assert "--ddp-bucket-size" not in plan.argv
    assert any(n.startswith("overlap_grad_reduce=auto -> false: follows the checkpoint") for n in plan.resolved.notes)


def test_a_large_runs_checkpoint_keeps_its_bucket_size_on_fewer_ranks(gloo_world, tmp_path, monkeypatch):
    """Saved at data-parallel size 64 (Megatron's default: 64M elements); resumed where the default is 40M."""
    plan, _ = _resume_plan(tmp_path, monkeypatch, validate=True, data_parallel_size=64)
    i = plan.argv.index("--ddp-bucket-size")
    assert plan.argv[i + 1] == "64000000" and "--overlap-grad-reduce" in plan.argv
    assert any(n.startswith("--ddp-bucket-size 64000000: the gradient buckets") for n in plan.checkpoint.notes)
    # the checkpoint's own explicit size and bucket count are kept the same way
    for saved, flags in ((dict(ddp_bucket_size=1000), ["--ddp-bucket-size", "1000"]),
                         (dict(ddp_num_buckets=4), ["--ddp-num-buckets", "4"])):
        plan, _ = _resume_plan(tmp_path / str(flags), monkeypatch, **saved)
        i = plan.argv.index(flags[0])
        assert plan.argv[i:i + 2] == flags


def test_nothing_changes_where_the_defaults_agree_or_the_user_pinned(gloo_world, tmp_path, monkeypatch):
    plain, _ = _resume_plan(tmp_path / "same", monkeypatch, data_parallel_size=8)  # 40M both: resharding loads
    fresh = build_plan(make_cfg(EP2), H200X2)
    assert [a for a in plain.argv if a.startswith("--ddp") or a.startswith("--overlap")] == \
        [a for a in fresh.argv if a.startswith("--ddp") or a.startswith("--overlap")]
    pinned, _ = _resume_plan(tmp_path / "pinned", monkeypatch, ["parallel.overlap_grad_reduce=true"],
                             overlap_grad_reduce=False)
    assert "--overlap-grad-reduce" in pinned.argv  # the recipe's check answers for a pinned value
    raw, _ = _resume_plan(tmp_path / "raw", monkeypatch, ["megatron.raw=[--ddp-bucket-size,2000]"],
                          data_parallel_size=64)
    assert raw.argv.count("--ddp-bucket-size") == 1 and raw.argv[raw.argv.index("--ddp-bucket-size") + 1] == "2000"
    eq, _ = _resume_plan(tmp_path / "raw_eq", monkeypatch, ["megatron.raw=['--ddp-bucket-size=2000']"],
                         data_parallel_size=64)  # the same flag in argparse's other spelling
    assert [a for a in eq.argv if a.startswith("--ddp-bucket-size")] == ["--ddp-bucket-size=2000"]
    extra, _ = _resume_plan(tmp_path / "extra", monkeypatch, ["+megatron.extra.ddp_num_buckets=4"],
                            data_parallel_size=64)
    assert "--ddp-bucket-size" not in extra.argv and "--ddp-num-buckets" in extra.argv
    no_dist_opt, _ = _resume_plan(tmp_path / "nodo", monkeypatch, ["parallel.use_distributed_optimizer=false"],
                                  overlap_grad_reduce=False)
    assert "--overlap-grad-reduce" in no_dist_opt.argv  # plain DDP keeps no optimizer state per bucket


def test_a_fresh_run_ignores_another_runs_resume_point(gloo_world, tmp_path, monkeypatch):
    """Without a run directory (tools, tests) nothing resumes, so nothing follows."""
    point = find_resume(_checkpoint(tmp_path / "c", monkeypatch, overlap_grad_reduce=False))
    plan = build_plan(make_cfg(EP2), H200X2, None, point)
    assert "--overlap-grad-reduce" in plan.argv
    assert dataclasses.asdict(point)["buckets"]["overlap_grad_reduce"] is False


def test_a_start_from_another_runs_checkpoint_follows_its_buckets_too(gloo_world, tmp_path, monkeypatch):
    """train.load=<a one-GPU run's checkpoints> at EP2 (auto would turn the overlap on: 40M-element buckets); the
    recipe refused this before with the overrides to type (recipes/checkpoint.py), now the plan follows it."""
    other = _checkpoint(tmp_path / "one_gpu" / "checkpoints", monkeypatch, overlap_grad_reduce=False)
    cfg = make_cfg([*EP2, f"train.load={other}"])
    cfg.launch.megatron_validate = True
    plan = build_plan(cfg, H200X2, tmp_path / "new_run")
    assert plan.argv[plan.argv.index("--load") + 1] == str(other) and "--overlap-grad-reduce" not in plan.argv
    assert any(n.startswith("overlap_grad_reduce=auto -> false: follows the checkpoint it loads")
               for n in plan.resolved.notes)
    large = _checkpoint(tmp_path / "large" / "checkpoints", monkeypatch, data_parallel_size=64)
    plan = build_plan(make_cfg([*EP2, f"train.load={large}"]), H200X2, None)  # no run directory: a tool's plan
    assert plan.argv[plan.argv.index("--ddp-bucket-size") + 1] == "64000000"
    # its own save directory (the save=load idiom, empty at a fresh start) has nothing to follow
    own = tmp_path / "own"
    plan = build_plan(make_cfg([*EP2, f"train.save={own}", f"train.load={own}"]), H200X2, tmp_path / "r")
    assert "--overlap-grad-reduce" in plan.argv

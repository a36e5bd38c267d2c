"""Run records: one machine-readable record.json (and a readable record.md) per run directory.

usage: python -m launcher.records.record RUN_DIR [RUN_DIR ...] [--warmup N] [--last N]

Everything in a record is computed from the run directory's own files, never typed by hand:
  plan.json      Megatron argv, environment, torchrun command, resolved facts, the moe-launch command,
                 the project's git commit (runs made before it was recorded: none)
  config.yaml    the composed config (model name, precision/recompute group names)
  train.log      Megatron's output on every rank: per-iteration series, memory, failure evidence
  versions.json  written on the compute node by rank 0 (recipes/runinfo.py): package versions, GPU model
                 and count, driver, NCCL, hosts, topology; older runs have versions.txt (three lines
                 printed on the GPU host), read too
  exit.json      return code and wall time (written by the executor)
  launch.txt     the moe-launch command, for runs made before plan.json kept it

The steady state is a declared window: the iterations after the first `--warmup` (allocator growth,
kernel autotuning, NCCL/dispatcher set-up) up to `--last` (default: the last logged), with iterations
Megatron counted as skipped or NaN left out. MFU is Megatron's TFLOP/s/GPU over the dense peak of the GPU
the run used, for the run's precision (BF16 peak for BF16/FP16, FP8 peak for FP8), taken from
conf/hardware/*.yaml whose `gpu` matches the GPU name the run recorded.
The executor writes the record when a run ends (success or failure); this command rebuilds it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Optional

import yaml

from launcher.records.failures import FailureInfo, classify
from launcher.records.error_file import with_error_file, without_launcher
from launcher.records.stops import classify_stop
from launcher.records.legacy_argv import legacy_facts
from launcher.records.logparse import LogSummary, parse_log
from launcher.records.provenance import describe
from launcher.records.record_md import headline, render_md
from launcher.records.saves import checkpoint_summary
from launcher.records.steady import DEFAULT_WARMUP, series_of, steady_state

SCHEMA = "moe-recipes/run-record/1"
CONF_DIR = Path(os.environ.get("MOE_CONF_DIR", Path(__file__).resolve().parents[2] / "conf"))

# ---------------------------------------------------------------------------------------------- inputs


def _int(value, default: Optional[int] = None) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _read_json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.exists() else None


def _read_yaml(path: Path) -> Optional[dict]:
    return yaml.safe_load(path.read_text()) if path.exists() else None


def _command(run_dir: Path, plan: dict) -> Optional[str]:
    """The moe-launch command: plan.json's, or launch.txt's for runs made before plan.json kept it."""
    if plan.get("moe_launch"):
        return " ".join(shlex.quote(t) for t in plan["moe_launch"])
    path = run_dir / "launch.txt"
    return path.read_text().strip() if path.exists() else None


def read_versions(run_dir: Path) -> dict:
    """versions.json (compute side, current) or versions.txt (three lines, older runs), normalised:
    torch, cuda, nccl, megatron_core, transformer_engine, deep_ep, gpu_name, gpus_visible, ..."""
    vj = run_dir / "versions.json"
    if vj.exists():
        out = json.loads(vj.read_text())
        out["source"] = "versions.json"
        if isinstance(out.get("topology"), str):  # nvidia-smi styles its header (ANSI) on some drivers
            out["topology"] = re.sub(r"\x1b\[[0-9;]*m", "", out["topology"])
        return out
    vt = run_dir / "versions.txt"
    if not vt.exists():
        return {"source": None}
    out: dict = {"source": "versions.txt"}
    for line in vt.read_text().splitlines():
        words = line.split()
        if words[:1] == ["gpus"] and len(words) >= 3:
            out["gpus_visible"] = _int(words[1])
            out["gpu_name"] = " ".join(words[2:])
            continue
        for key, value in zip(words[::2], words[1::2]):  # "torch 2.11 cuda 13.0 nccl 2.28.9"
            out[key.replace("-", "_")] = value
    return out


def hardware_catalog(conf_dir: Path = CONF_DIR) -> dict[str, dict]:
    """conf/hardware/<name>.yaml -> {name: fields}."""
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted((conf_dir / "hardware").glob("*.yaml"))}


def match_hardware(gpu_name: Optional[str], catalog: dict[str, dict]) -> Optional[str]:
    """The hardware entry whose `gpu` is this GPU name: exact, then one name a prefix of the other
    ("NVIDIA H100 80GB HBM3" vs "NVIDIA H100"); None when no entry fits."""
    if not gpu_name:
        return None
    name = gpu_name.strip().lower()
    for key, hw in catalog.items():
        if str(hw.get("gpu", "")).lower() == name:
            return key
    fits = [key for key, hw in catalog.items()
            if name.startswith(str(hw.get("gpu", "")).lower()) or str(hw.get("gpu", "")).lower().startswith(name)]
    return max(fits, key=lambda k: len(str(catalog[k]["gpu"]))) if fits else None


def _default_group(group: str, conf_dir: Path = CONF_DIR) -> Optional[str]:
    cfg = _read_yaml(conf_dir / "config.yaml") or {}
    for item in cfg.get("defaults", []):
        if isinstance(item, dict) and group in item:
            return item[group]
    return None


def _override(command: Optional[str], key: str) -> Optional[str]:
    if not command:
        return None
    for tok in shlex.split(command):
        if tok.startswith(key + "="):
            return tok.split("=", 1)[1]
    return None


# ------------------------------------------------------------------------------------------ derivation


def status_of(exit_info: Optional[dict], log: LogSummary, failure) -> str:
    if exit_info is not None:
        return "ok" if exit_info.get("returncode") == 0 else "failed"
    if failure is not None:
        return "failed"
    if log.done and log.done["iteration"] >= log.done["train_iters"]:
        return "ok"
    if log.train_iters and log.last_iteration >= log.train_iters:
        return "ok"
    return "incomplete"


def _logger_dirs(run_dir: Path, config: Optional[dict]) -> list[tuple[str, Path]]:
    """(field, directory) of every logger the config asked for, as recipes/pretrain.py resolves them: relative
    paths under the run directory, W&B's default <run_dir>/wandb."""
    train = (config or {}).get("train") or {}
    out = []
    if train.get("tensorboard_dir"):
        out.append(("train.tensorboard_dir", run_dir / train["tensorboard_dir"]))  # an absolute path stays
    if train.get("wandb_project"):
        out.append(("train.wandb_project", run_dir / (train.get("wandb_save_dir") or "wandb")))
    return out


def silent_logger(run_dir: Path, config: Optional[dict]):
    """A requested logger that wrote no file (tensorboard not installed makes Megatron only warn; W&B may be
    disabled): the run is not `ok`, its failure class is logger_wrote_nothing."""
    for field, path in _logger_dirs(run_dir, config):
        if not (path.is_dir() and any(p.is_file() and p.stat().st_size for p in path.rglob("*"))):
            return FailureInfo(cls="logger_wrote_nothing", summary=f"{field} was set but {path} holds no "
                               "file: the logger wrote nothing", evidence=[f"{field}: {path}"])
    return None


def build_record(run_dir: Path, warmup: int = DEFAULT_WARMUP, last: Optional[int] = None) -> dict:
    run_dir = Path(run_dir)
    plan = json.loads((run_dir / "plan.json").read_text())
    argv: list[str] = plan["argv"]
    facts = plan.get("facts") or legacy_facts(argv, plan)  # runs written before plan.json carried facts
    config = _read_yaml(run_dir / "config.yaml")
    command = _command(run_dir, plan)
    log_path = run_dir / "train.log"
    log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
    log = parse_log(log_text)
    versions = read_versions(run_dir)
    exit_info = _read_json(run_dir / "exit.json")
    layout = facts["parallel"]
    world = layout["world_size"]

    # model: the composed config's name, else the plan's facts (a run directory copied without config.yaml, a preset
    # command naming no model=), else the command's model= override, else the default group
    model_name = ((config or {}).get("model", {}).get("name") or facts["model"].get("name")
                  or _override(command, "model") or _default_group("model"))
    model_yaml = _read_yaml(CONF_DIR / "model" / f"{model_name}.yaml") if model_name else None

    # system: the GPU the run recorded -> conf/hardware; else the config's declared target
    catalog = hardware_catalog()
    device = plan["resolved"]["device"]
    gpu_name = versions.get("gpu_name")
    hw_key = match_hardware(gpu_name, catalog) if device == "cuda" else None
    hw_source = f"GPU name {gpu_name!r} ({versions.get('source')}) matches conf/hardware/{hw_key}.yaml" if hw_key \
        else None
    if device == "cuda" and not hw_key and config and config.get("hardware", {}).get("name") in catalog \
            and not gpu_name:
        hw_key = config["hardware"]["name"]
        hw_source = f"config.yaml hardware={hw_key} (declared target; the run recorded no GPU name)"
    hw = catalog.get(hw_key) if hw_key else None
    precision = facts["precision"]
    peak = hw.get(f"peak_tflops_{precision['peak']}") if hw and precision["peak"] else None

    seq = facts["batch"]["seq_length"]
    series = series_of(log.iterations, seq or 0, world, peak)
    memory = {**log.memory_mb, "by_rank": {str(k): v for k, v in log.memory_by_rank.items()},
              "theoretical_mb": log.theoretical_memory_mb}
    failure = classify(log_text, exit_info.get("returncode") if exit_info else None, layout)
    failure = classify_stop(log_text, exit_info, failure)  # interrupted, preempted, rank_died
    failure = with_error_file(failure, run_dir)  # torchrun's structured error file, where a rank raised
    failure = without_launcher(failure, run_dir, exit_info)  # ... and the only account where moe-launch was killed
    status = status_of(exit_info, log, failure)
    if status == "ok":
        failure = silent_logger(run_dir, config)
        status = "failed" if failure else "ok"
    plan_code = plan.get("code")
    steady = steady_state(series, warmup, last, log.memory_mb, start=log.start_iteration)
    ck = plan.get("checkpoint") or {}
    checkpoints = checkpoint_summary(log_text, ck.get("interval"), (steady.get("step_time_ms") or {}).get("median"),
                                     ck.get("save"))

    return {
        "schema": SCHEMA,
        "name": run_dir.name,
        "status": status,
        "returncode": exit_info.get("returncode") if exit_info else None,
        "wall_s": exit_info.get("wall_s") if exit_info else None,
        "failure": failure.as_dict() if failure else None,
        "command": command,
        "code": {**(plan_code or {}), "describe": describe(plan_code)} if plan_code else None,
        "model": {"name": model_name, "num_layers": facts["model"]["num_layers"],
                  "full_num_layers": (model_yaml or {}).get("num_layers"),
                  "full_num_experts": (model_yaml or {}).get("num_experts"),
                  **{k: facts["model"][k] for k in ("num_experts", "topk", "hidden_size")}},
        "system": {
            "device": device, "gpu_name": gpu_name, "hardware": hw_key, "hardware_source": hw_source,
            "peak_tflops": {"bf16": hw.get("peak_tflops_bf16"), "fp8": hw.get("peak_tflops_fp8")} if hw else None,
            "world_size": world, "nproc_per_node": plan["resolved"].get("nproc_per_node"),
            "nodes": versions.get("nodes") or facts["nodes"],
            "gpus_visible_per_node": versions.get("gpus_visible"),
            "hostname": versions.get("hostname"), "slurm_nodelist": versions.get("slurm_nodelist"),
            "driver": versions.get("driver"), "topology": versions.get("topology"),
            "nvlink_domain": hw.get("nvlink_domain") if hw else None,
        },
        "versions": {k: versions.get(k) for k in ("megatron_core", "transformer_engine", "torch", "cuda", "nccl",
                                                  "deep_ep", "apex", "python", "source", "triton", "fla_core",
                                                  "tilelang")},
        "parallel": layout,
        "batch": facts["batch"],
        "dispatcher": facts["dispatcher"],
        "routing": facts["routing"],
        "precision": precision,
        "recompute": facts["recompute"],
        "transformer_impl": plan["resolved"].get("transformer_impl"),
        "argv": argv,
        "env": {"plan": plan.get("env", {}), "runtime": versions.get("env")},
        "config": config,
        "iterations": {"logged": len(log.iterations), "last": log.last_iteration, "train_iters": log.train_iters},
        "series": series,
        "memory": memory,
        "steady_state": steady,
        "checkpoints": checkpoints,
        "mfu_basis": (f"Megatron's TFLOP/s/GPU / {peak} TFLOP/s ({hw_key} dense {precision['peak'].upper()} peak, "
                      f"conf/hardware/{hw_key}.yaml)") if peak else
                     ("none: no GPU hardware entry matched" if device == "cuda" else "none: CPU run"),
        "sources": sorted(p.name for p in run_dir.iterdir() if p.name not in ("record.json", "record.md")),
    }


def write_record(run_dir: Path, warmup: int = DEFAULT_WARMUP, last: Optional[int] = None) -> dict:
    r = build_record(run_dir, warmup, last)
    (run_dir / "record.json").write_text(json.dumps(r, indent=1, default=str) + "\n")
    (run_dir / "record.md").write_text(render_md(r))
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launcher.records.record", description=__doc__.split("\n")[0])
    ap.add_argument("run_dirs", nargs="+", type=Path)
    ap.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="iterations skipped before the steady state")
    ap.add_argument("--last", type=int, default=None, help="last iteration of the steady-state window")
    a = ap.parse_args(argv)
    rc = 0
    for run_dir in a.run_dirs:
        if not (run_dir / "plan.json").exists():
            print(f"record: error: {run_dir} has no plan.json (not a moe-launch run directory)", file=sys.stderr)
            rc = 2
            continue
        r = write_record(run_dir, a.warmup, a.last)
        print(f"record: {run_dir}/record.json: {headline(r)}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())

"""moe-convert: Hugging Face checkpoints in and out, through nvidia-modelopt (the `modelopt` extra).

usage: moe-convert import --hf DIR_OR_REPO --out DIR [group=option ...] [key.path=value ...]
       moe-convert export --ckpt RUN_OR_CKPT_DIR [--iteration N] --out DIR
                          [--quant fp8|nvfp4 --calib-data PREFIX [--calib-samples N]] [key.path=value ...]
       moe-convert compare --hf HF_DIR --ckpt RUN_OR_CKPT_DIR [--iteration N] --data PREFIX [--samples N]
                           [--json FILE]
  e.g. moe-convert import --hf /models/Qwen3-30B-A3B --out /ckpt/qwen3-30b model=qwen3_30b_a3b
       moe-launch model=qwen3_30b_a3b parallel=ep8 train.checkpoint.init_from=/ckpt/qwen3-30b ...
       moe-convert export --ckpt runs/qwen3_30b_a3b-20261130-120000 --out /models/mine-fp8 --quant fp8 \\
           --calib-data /data/corpus_text_document

import composes the config exactly as moe-launch does, checks the HF config.json against the model (one line per
field that differs, with the override that fixes it), builds the Megatron GPT model from the plan's own argv on
one process (TP = PP = EP = 1, local spec), loads the HF weights through modelopt and writes a Megatron
distributed checkpoint (torch_dist) into --out; a moe-launch run at any TP/PP/EP layout starts from it with
train.checkpoint.init_from=DIR (Megatron's --pretrained-checkpoint: used only while the run has no checkpoint of
its own, so a relaunch resumes the run, not the import).
export reads the run's plan.json (next to its checkpoints/), loads the newest complete checkpoint (or --iteration)
at one process whatever layout wrote it, optionally quantizes it (post-training quantization calibrated on
--calib-samples sequences of the indexed data at PREFIX, e.g. from moe-prepare-data) and writes a Hugging Face
checkpoint (BF16 safetensors + config.json; quantized: hf_quant_config.json too) into --out.
compare runs the same held-out token sequences through the Megatron checkpoint and through transformers with the
HF checkpoint (an FP8 export dequantized) and prints next-token accuracy and loss of both, their top-1 agreement
and the largest logit difference (recipes/convert_check.py; JSON in --json, default HF_DIR/compare.json).
Families: Qwen3-MoE and Mixtral (launcher/tools/convert_hf.py). Exit status: 0 done, 2 bad input, 3 refused on
the compute side, other: the conversion failed (its log: DIR/convert.log).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional

from launcher.errors import ConfigError, make_dir
from launcher.tools.usage import args_or_help

OPTIONS = {"import": ("--hf", "--out"),
           "export": ("--ckpt", "--iteration", "--out", "--quant", "--calib-data", "--calib-samples", "--plan"),
           "compare": ("--hf", "--ckpt", "--iteration", "--data", "--samples", "--json", "--plan")}
REQUIRED = {"import": ("--hf", "--out"), "export": ("--ckpt", "--out"), "compare": ("--hf", "--ckpt", "--data")}
NEEDS = ("modelopt", "requests", "huggingface_hub", "transformers", "safetensors")  # the `modelopt` extra


def parse(args: list[str]) -> tuple[str, dict, list[str]]:
    """(direction, options, Hydra overrides)."""
    if not args or args[0] not in OPTIONS:
        raise ConfigError("moe-convert", args[0] if args else None,
                          "needs a direction first: import, export or compare",
                          "moe-convert import --hf DIR --out DIR ... | moe-convert export --ckpt DIR --out DIR")
    direction, opts, rest = args[0], {}, []
    it = iter(args[1:])
    for a in it:
        key, eq, inline = a.partition("=")
        if key in OPTIONS[direction]:
            value = inline if eq else next(it, None)
            if value is None or value.startswith("--"):
                raise ConfigError(key, None, "needs a value", f"write {key} VALUE")
            opts[key] = value
        elif a.startswith("--"):
            raise ConfigError(a, None, f"is not an option of moe-convert {direction}",
                              f"use {', '.join(OPTIONS[direction])} or Hydra overrides (key=value)")
        else:
            rest.append(a)
    for key in REQUIRED[direction]:
        if key not in opts:
            raise ConfigError(key, None, f"is required by moe-convert {direction}", f"add {key} DIR")
    return direction, opts, rest


def check_extra() -> None:
    """The modelopt extra, before anything heavy: nvidia-modelopt 0.47.0 imports requests and huggingface_hub
    without declaring them, and a missing one fails only after Megatron has built the model."""
    missing = [m for m in NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError("moe-convert", "modelopt extra", f"needs {', '.join(missing)}, not installed here",
                          "pip install -e '.[modelopt]'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_recipe(entry: str, argv: list[str], env: dict, log: Path) -> int:
    """python -m <entry> as rank 0 of 1; its output goes to `log`, its own lines are shown."""
    env = {**os.environ, **env, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, "-m", entry, *argv], stdout=out, stderr=subprocess.STDOUT,
                              env=env, cwd=Path(__file__).resolve().parents[2])
    lines = log.read_text(errors="replace").splitlines()
    shown = [ln for ln in lines if ln.startswith(entry)]
    for line in shown:
        print(line, file=sys.stderr if ": error:" in line else sys.stdout)
    if proc.returncode not in (0, 3):
        print("\n".join(lines[-20:]), file=sys.stderr)
        print(f"moe-convert: failed (exit {proc.returncode}); log: {log}", file=sys.stderr)
    return proc.returncode


def main(argv: Optional[list[str]] = None) -> int:
    args = args_or_help(argv, __doc__.split("\n\n", 1)[1])
    if args is None:
        return 0
    from launcher.tools import convert_io

    try:
        direction, opts, overrides = parse(args)
        check_extra()
        prepare = {"import": convert_io.prepare_import, "export": convert_io.prepare_export,
                   "compare": convert_io.prepare_compare}[direction]
        job = prepare(opts, overrides)
        make_dir(job.out, "--out")
    except convert_io.Mismatches as e:
        for err in e.errors:
            print(f"moe-convert: error: {err}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"moe-convert: error: {e}", file=sys.stderr)
        return 2
    for line in job.lines:
        print(f"moe-convert: {line}")
    try:
        rc = run_recipe(job.entry, job.recipe_argv, job.env, job.out / job.log_name)
        if rc == 0:
            job.finish()
    finally:
        if job.scratch:
            shutil.rmtree(job.scratch, ignore_errors=True)
    if rc == 0:
        print(f"moe-convert: {job.done or f'wrote {job.out}'}{job.next_step}")
    return rc


if __name__ == "__main__":
    sys.exit(main())

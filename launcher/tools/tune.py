"""moe-tune: greedy tuning of a recipe on the GPUs at hand, with its log written from the runs.

usage: moe-tune STEPS.yaml --out DIR [--threshold 0.01] [--metric tokens_per_s_per_gpu] [OVERRIDE ...]

STEPS.yaml (e.g. perf_results/tuning/qwen3_30b_a3b_4l_1gpu.yaml):
  base: [model=qwen3_30b_a3b, model.num_layers=4, train=pretrain, ...]   # the starting recipe
  steps:                                                                  # tried in order
    - name: fused permute and router
      overrides: [dispatcher.permute_fusion=true, dispatcher.router_fusion=true]
    - name: micro batch size
      options: {mbs2: [train.micro_batch_size=2], mbs4: [train.micro_batch_size=4]}   # best of several
Each attempt is an ordinary moe-launch run (OUT/NN_name) on top of the settings kept so far; a step is
kept when its metric (median of the record's steady state) beats the best so far by more than
--threshold (relative), so noise does not pick settings. A failed attempt (OOM, a kernel that does not
run) is logged with its failure category and not kept. OUT/tune.json and OUT/tuning_log.md are
rewritten after every attempt, and a rerun with the same OUT resumes after the attempts already there.
Command-line overrides come last (e.g. cluster.master_port=29600 to run two chains on one host).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

from launcher.errors import ConfigError, make_dir
from launcher.run.console import guard
from launcher.records.steady import steady_medians
from launcher.records.record_md import failure_label

SCHEMA = "moe-recipes/tuning/1"


def key_of(override: str) -> str:
    """Hydra override -> the key it sets ('++cluster.env.X=1' -> 'cluster.env.X',
    'recompute=moe_act' -> 'recompute')."""
    return override.split("=", 1)[0].lstrip("+~")


def merge(*layers: list[str]) -> list[str]:
    """Later layers replace earlier overrides of the same key (Hydra refuses a key given twice)."""
    out: dict[str, str] = {}
    for layer in layers:
        for o in layer:
            out.pop(key_of(o), None)  # re-insert: keeps the latest position
            out[key_of(o)] = o
    return list(out.values())


def _read(path: Path, field: str, parse) -> Any:
    """A file the user named, parsed; one line when it is missing or does not parse (the parser's first line)."""
    try:
        return parse(path.read_text())
    except OSError as e:
        raise ConfigError(field, str(path), f"cannot be read ({e.strerror})", "give the path of an existing file")
    except (yaml.YAMLError, ValueError) as e:
        raise ConfigError(field, str(path), f"does not parse: {' '.join(str(e).split())}", "fix its syntax")


def load_steps(path: Path) -> dict:
    doc = _read(path, "steps", yaml.safe_load) or {}
    if not isinstance(doc, dict) or not isinstance(doc.get("base"), list) or not isinstance(doc.get("steps"), list):
        raise ConfigError("steps", str(path), "a tuning file has a 'base' list of overrides and a 'steps' list",
                          "see `moe-tune --help` for the format")
    for i, s in enumerate(doc["steps"]):
        if not isinstance(s, dict) or "name" not in s or ("overrides" in s) == ("options" in s):
            raise ConfigError(f"{path}: steps[{i}]", s, "each step has a name and either overrides (a list) or "
                              "options (name -> list)", "fix that step")
    return doc


def inherited(path: Path, skip: list[str]) -> list[str]:
    """The changes another chain kept (its kept overrides minus its base), minus shape-specific keys."""
    doc = _read(path, "--inherit", json.loads)
    if not isinstance(doc, dict) or not {"base", "kept_overrides"} <= set(doc):
        raise ConfigError("--inherit", str(path), "is not a moe-tune tune.json (no base / kept_overrides)",
                          "give the tune.json of an earlier moe-tune --out")
    base = set(doc["base"])
    return [o for o in doc["kept_overrides"] if o not in base and key_of(o) not in skip]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40]


def measure(run_dir: Path, metric: str) -> dict:
    """The attempt's outcome from its record.json (written by the executor when the run ends)."""
    rec_path = run_dir / "record.json"
    if not rec_path.exists():
        return {"status": "no record", "value": None}
    r = json.loads(rec_path.read_text())
    ss = r.get("steady_state") or {}
    medians = steady_medians(ss)
    mem = (ss.get("peak_memory_mb") or {}).get("max_allocated_mb")
    return {"status": r["status"], "failure": failure_label(r.get("failure")),
            "value": medians[metric] if r["status"] == "ok" else None, **medians,
            "cv_pct": (ss.get(metric) or {}).get("cv_pct"),
            "peak_allocated_gib": round(mem / 1024, 2) if mem else None}


class Tuner:
    def __init__(self, doc: dict, out: Path, cli: list[str], metric: str, threshold: float, launch=None):
        self.doc, self.out, self.cli, self.metric, self.threshold = doc, out, cli, metric, threshold
        self.launch = launch or self._launch
        state = out / "tune.json"
        self.log: list[dict] = json.loads(state.read_text())["attempts"] if state.exists() else []
        self.kept: list[str] = list(doc["base"])
        self.best: Optional[float] = None
        self.count = 0

    def _launch(self, overrides: list[str], run_dir: Path) -> int:
        with open(self.out / "attempts.out", "a") as fh:
            return subprocess.call([sys.executable, "-m", "launcher", *overrides, f"launch.run_dir={run_dir}"],
                                   stdout=fh, stderr=subprocess.STDOUT)

    def attempt(self, step: str, option: Optional[str], change: list[str]) -> dict:
        n, self.count = self.count, self.count + 1  # attempts come in a fixed order: names match on resume
        name = f"{n:02d}_{slug(step + ('_' + option if option else ''))}"
        done = next((a for a in self.log if a["name"] == name and a.get("done")), None)
        if done is None:  # resume: an attempt already measured is not run again
            overrides = merge(self.kept, change, self.cli, ["launch.megatron_validate=false"])
            if not any(key_of(o).startswith(("train.checkpoint", "train.save")) for o in overrides):
                overrides.insert(0, "train.checkpoint.enabled=false")  # a measurement, not a run to keep
            run_dir = self.out / name
            rc = self.launch(overrides, run_dir)
            done = {"name": name, "step": step, "option": option, "change": change, "overrides": overrides,
                    "returncode": rc, **measure(run_dir, self.metric), "done": True}
            self.log.append(done)
        return done

    def decide(self, a: dict, is_base: bool = False) -> bool:
        v = a.get("value")
        keep = v is not None and (is_base or self.best is None or v > self.best * (1 + self.threshold))
        a["kept"] = keep
        a["best_before"] = self.best
        if keep:
            self.best = v
        return keep

    def run(self) -> dict:
        base = self.attempt("baseline", None, [])
        self.decide(base, is_base=True)
        self._save()
        for s in self.doc["steps"]:
            options = s["options"] if "options" in s else {None: s["overrides"]}
            tried = [self.attempt(s["name"], opt, change) for opt, change in options.items()]
            best = max((a for a in tried if a.get("value") is not None), key=lambda a: a["value"], default=None)
            for a in tried:
                a["kept"] = False
                a["best_before"] = self.best
            if best is not None and self.decide(best):
                self.kept = merge(self.kept, best["change"])
            self._save()
        return self._save()

    def _save(self) -> dict:
        doc = {"schema": SCHEMA, "metric": self.metric, "threshold": self.threshold, "base": self.doc["base"],
               "cli": self.cli, "kept_overrides": self.kept, "best": self.best, "attempts": self.log}
        (self.out / "tune.json").write_text(json.dumps(doc, indent=1))
        (self.out / "tuning_log.md").write_text(render(doc))
        return doc


def render(doc: dict) -> str:
    def f(x, nd=1):
        return "-" if x is None else f"{x:,.{nd}f}"
    lines = ["| # | change | tokens/s/GPU | TFLOP/s/GPU | step ms | cv % | peak GiB | status | kept |",
             "|---|---|---|---|---|---|---|---|---|"]
    for a in doc["attempts"]:
        change = ", ".join(a["change"]) or "(baseline)"
        status = a["status"] + (f" ({a['failure']})" if a.get("failure") else "")
        lines.append(f"| {a['name']} | {a['step']}{': ' + a['option'] if a.get('option') else ''} — `{change}` | "
                     f"{f(a.get('tokens_per_s_per_gpu'))} | {f(a.get('tflops_per_gpu'))} | "
                     f"{f(a.get('step_time_ms'))} | "
                     f"{f(a.get('cv_pct'))} | {f(a.get('peak_allocated_gib'), 2)} | {status} | "
                     f"{'yes' if a.get('kept') else 'no'} |")
    lines += ["", f"metric: median {doc['metric']} of the steady state; kept when > best x (1 + {doc['threshold']})",
              "", "kept settings: `" + " ".join(doc["kept_overrides"]) + "`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the program itself: a long benchmark or chain outlives a reader that goes away
        guard()
    ap = argparse.ArgumentParser(prog="moe-tune", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("steps", help="tuning file (YAML)")
    ap.add_argument("overrides", nargs="*", help="overrides applied last to every attempt")
    ap.add_argument("--out", required=True)
    ap.add_argument("--metric", default="tokens_per_s_per_gpu", choices=["tokens_per_s_per_gpu", "tflops_per_gpu"])
    ap.add_argument("--threshold", type=float, default=0.01)
    ap.add_argument("--inherit", help="another chain's tune.json: start from the changes it kept")
    ap.add_argument("--inherit-skip", default="train.micro_batch_size,train.global_batch_size",
                    help="keys not inherited (shape-specific), comma separated")
    a = ap.parse_intermixed_args(sys.argv[1:] if argv is None else argv)  # overrides before or after --out
    try:
        doc = load_steps(Path(a.steps))
        if a.inherit:
            doc["base"] = merge(doc["base"], inherited(Path(a.inherit), a.inherit_skip.split(",")))
        out = make_dir(a.out, "--out")
    except ConfigError as e:
        print(f"moe-tune: error: {e}", file=sys.stderr)
        return 2
    result = Tuner(doc, out, a.overrides, a.metric, a.threshold).run()
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

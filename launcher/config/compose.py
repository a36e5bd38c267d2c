"""Compose conf/ with Hydra's compose API and turn its errors into one-line ConfigErrors."""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Optional

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from launcher.errors import ConfigError, closest
from launcher.config.cluster import CLUSTER_SCHEMAS
from launcher.config.schema import RunConfig, register_configs

CONF_DIR = Path(os.environ.get("MOE_CONF_DIR", Path(__file__).resolve().parents[2] / "conf"))


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def groups() -> list[str]:
    return sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())


def _schema_keys(path: str) -> list[str]:
    if path == "cluster":  # the error does not say which executor's schema: every cluster field
        return list(dict.fromkeys(f.name for s in CLUSTER_SCHEMAS.values() for f in dataclasses.fields(s)))
    node = OmegaConf.structured(RunConfig)
    for part in [p for p in path.split(".") if p]:
        node = node[part]
    return list(node.keys()) if isinstance(node, DictConfig) else []


def _chain(err: BaseException) -> str:
    """The error and its causes (Hydra wraps the OmegaConf error that names the key)."""
    parts = []
    while err is not None:
        parts.append(str(err))
        err = err.__cause__ or err.__context__
    return "\n".join(parts)


def _explain(err: Exception, overrides: tuple[str, ...] = ()) -> ConfigError:
    """Hydra/OmegaConf error -> field, value, rule, fix (with a did-you-mean)."""
    text = _chain(err)
    m = re.search(r"Could not find '([\w-]+)/([^']+)'", text)
    if m and m.group(1) in groups():
        group, option = m.groups()
        opts = group_options(group)
        near = closest(option, opts)
        fix = (f"did you mean {group}={near}? " if near else "") + f"options: {', '.join(opts)}"
        return ConfigError(group, option, f"no such option in conf/{group}/", fix)
    m = re.search(r"Key '([^']+)' not in '[^']*'\s+full_key: ([\w.\[\]]+)", text)
    if m:
        key, full = m.groups()
        parent = full.rsplit(".", 1)[0] if "." in full else ""
        return _unknown_key(full, key, _schema_keys(parent))
    m = re.search(r"Invalid value '([^']*)', expected one of \[([^\]]*)\]\s+full_key: ([\w.\[\]]+)", text)
    if m:  # a StrEnum choice (launcher/config/choices.py)
        value, options, full = m.group(1), m.group(2).split(", "), m.group(3)
        near = closest(value, options)
        return ConfigError(full, value, f"must be one of {', '.join(options)}",
                           (f"did you mean {near!r}? " if near else "") + f"set {full} to one of those")
    m = re.search(r"full_key: ([\w.\[\]]+)", text)
    if m:
        # the innermost cause says what is wrong with the value, e.g. "Value 'abc' of type 'str'
        # could not be converted to Integer"
        inner = [line.strip() for line in text.split("\n") if line.strip() and ":" not in line[:12]
                 and "$VALUE" not in line]  # OmegaConf chains its unformatted template too
        reason = next((line for line in reversed(inner) if line.startswith("Value")), inner[-1])
        value = re.search(r"Value '([^']*)'", reason)
        return ConfigError(m.group(1), value.group(1) if value else "?", reason.rstrip("."),
                           "give it a value of the type launcher/config/schema.py declares")
    first = " ".join(text.split("\n")[0].split())
    bad = _unparsable(overrides)
    if bad is not None:  # Hydra's grammar error quotes a fragment; name the whole override
        fix = (f"write it as key=value, e.g. {bad}=VALUE" if "=" not in bad else "quote a value that holds '=', "
               """spaces, quotes or brackets, e.g. 'cluster.sbatch_extra=["--gres=gpu:8"]'""")
        return ConfigError("override", bad, f"is not Hydra override syntax ({first.rstrip('.')})",
                           fix + " (see the command's --help)")
    return ConfigError("overrides", "?", first.rstrip("."), "see `moe-launch --help` for the override syntax")


def _unparsable(overrides: tuple[str, ...]) -> Optional[str]:
    """The first override Hydra's grammar does not parse, if any."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for ov in overrides:
        try:
            parser.parse_override(ov)
        except HydraException:
            return ov
    return None


def _yaml_error(err: yaml.YAMLError) -> ConfigError:
    """PyYAML's several-line report -> the file, line and column, and what the parser expected."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = Path(mark.name) if mark is not None else None
    try:
        shown = where.relative_to(CONF_DIR.parent) if where else "a conf/ file"
    except ValueError:
        shown = where
    at = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"
    problem = " ".join(str(getattr(err, "problem", None) or err).split())
    context = " ".join(str(getattr(err, "context", None) or "").split())
    return ConfigError(str(shown), at, f"is not valid YAML: {context + ', ' if context else ''}{problem}",
                       "fix that line (quote values holding ':' '[' '{' '#', close brackets, indent with spaces)")


def _unknown_key(full: str, value, valid: list[str]) -> ConfigError:
    """A key the schema lacks: the closest field, or the executor whose cluster schema has it."""
    parent, _, key = full.rpartition(".")
    near = closest(key, valid)
    owners = [str(k) for k, s in CLUSTER_SCHEMAS.items() if key in {f.name for f in dataclasses.fields(s)}]
    if parent == "cluster" and owners:
        fix = f"{full} belongs to {' or '.join(f'cluster={k}' for k in owners)}: choose that executor"
    elif near:
        fix = f"did you mean {parent + '.' if parent else ''}{near}?"
    else:
        fix = f"valid keys: {', '.join(valid)}"
    return ConfigError(full, value, "is not a field of the schema", fix)


def _reject_unknown_keys(node: DictConfig, schema: type, path: str = "") -> None:
    """`+key=value` appends keys Hydra does not check against the schema: refuse them here."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in node.keys():
        full = f"{path}{key}"
        if key not in fields:
            raise _unknown_key(full, node[key], list(fields))
        # the node's own type: the cluster group's schema depends on the executor (launcher/config/cluster.py)
        sub = OmegaConf.get_type(node[key]) if isinstance(node[key], DictConfig) else None
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            _reject_unknown_keys(node[key], sub, full + ".")


# Free-form dict fields: Hydra composes in struct mode, where `megatron.extra={a: 1}` cannot add key a.
FREE_DICTS = ("megatron.extra", "cluster.env")


def _free_dict_overrides(overrides: list[str]) -> list[str]:
    """Write a plain override of a free-form dict field as Hydra's add-or-override (`++`)."""
    out = []
    for ov in overrides:
        key = ov.split("=", 1)[0]
        free = not key.startswith(("+", "~")) and any(key == d or key.startswith(d + ".") for d in FREE_DICTS)
        out.append("++" + ov if free else ov)
    return out


def _name_after_preset(composed: DictConfig) -> None:
    """Drop Hydra's own node; an unset launch.name becomes the chosen preset (runs and Slurm jobs are
    named after it, so no preset file repeats its own name). `${hydra:runtime.choices.preset}` cannot
    say this in conf/: Hydra's compose API never calls HydraConfig.set_config (only a @hydra.main run
    does), so that resolver fails with "HydraConfig was not set". Without a preset the name stays None
    (runs/<model>-<timestamp>, job moe-<model>)."""
    choice = composed.hydra.runtime.choices.get("preset")
    with open_dict(composed):
        del composed["hydra"]
    if choice is not None and composed.launch.name is None:
        composed.launch.name = choice


def compose(overrides: list[str]) -> tuple[DictConfig, RunConfig]:
    """Compose conf/config.yaml with overrides; return the DictConfig and the typed RunConfig."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    option = next((o for o in overrides if o.startswith("-")), None)
    if option:  # Hydra's lexer would say "LexerNoViableAltException: --out", naming nothing
        raise ConfigError("option", option, "is neither an option of this command nor a key=value override",
                          "see the command's --help")
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            composed = hydra_compose(config_name="config", overrides=_free_dict_overrides(overrides),
                                     return_hydra_config=True)
        _name_after_preset(composed)
        _reject_unknown_keys(composed, RunConfig)
        typed = OmegaConf.to_object(composed)
    except (HydraException, OmegaConfBaseException) as e:
        raise _explain(e, tuple(overrides)) from None
    except yaml.YAMLError as e:  # a malformed file under conf/ (PyYAML's error, not wrapped by Hydra)
        raise _yaml_error(e) from None
    assert isinstance(typed, RunConfig)
    _check_executor_schema(typed)
    return composed, typed


def _check_executor_schema(cfg: RunConfig) -> None:
    """cluster.executor=slurm on the local group would lack Slurm's fields: the group picks the executor."""
    kind = cfg.cluster.executor
    if type(cfg.cluster) is not CLUSTER_SCHEMAS[kind]:
        raise ConfigError("cluster.executor", kind, "is chosen with the cluster group, which brings that "
                          "executor's fields", f"use cluster={kind} instead")

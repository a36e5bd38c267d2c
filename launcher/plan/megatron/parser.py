"""Megatron's own argument parser, imported lazily: the authority on flag names and values.

Used to turn `megatron.extra` entries (dest or flag -> value) into argv, to reject unknown flags with
the closest valid one, and to find flags set twice.
"""
from __future__ import annotations

import argparse
import functools
from typing import Any

from launcher.errors import ConfigError, closest


@functools.lru_cache(maxsize=1)
def parser() -> argparse.ArgumentParser:
    """Megatron-Core's full argparse parser (imports megatron.training, and so torch)."""
    import logging
    import warnings

    # a login node has no CUDA runtime; torch's cpp_extension says so on import, which is expected here
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from launcher.plan.megatron.training_import import load

        load()  # without modelopt's dead hooks (training_import.py: 4 s of every launch)
        from megatron.training.arguments import add_megatron_arguments

    p = argparse.ArgumentParser(allow_abbrev=False, add_help=False, exit_on_error=False)
    add_megatron_arguments(p)
    return p


def _options() -> dict[str, argparse.Action]:
    return parser()._option_string_actions  # noqa: SLF001 - argparse keeps no public index


def _by_dest() -> dict[str, list[argparse.Action]]:
    out: dict[str, list[argparse.Action]] = {}
    for action in parser()._actions:  # noqa: SLF001
        out.setdefault(action.dest, []).append(action)
    return out


def _suggest(flag: str) -> str:
    """did-you-mean for a Megatron flag; a flag a schema field emits is suggested as that field, since
    megatron.extra/raw may not set it (check_no_duplicates)."""
    from launcher.plan.megatron.table import field_of_flag

    owner = field_of_flag(flag)
    return f"did you mean {owner}? (the schema field that sets {flag})" if owner else f"did you mean {flag}?"


def unknown_flag_error(field: str, flag: str) -> ConfigError:
    near = closest(flag.split("=", 1)[0], _options().keys())
    fix = _suggest(near) if near else "see `moe-launch --megatron-flags` for the full list"
    return ConfigError(field, flag, "is not a Megatron-Core 0.19.2 flag", fix)


def field_of_dest(dest: str) -> str | None:
    """The schema field behind a Megatron dest (num_experts -> model.num_experts), through its flags."""
    from launcher.plan.megatron.table import field_of_flag

    for action in _by_dest().get(dest, []):
        for flag in action.option_strings:
            if field_of_flag(flag):
                return field_of_flag(flag)
    return None


def _action_for(key: str) -> argparse.Action:
    if key.startswith("-"):
        if key not in _options():
            raise unknown_flag_error(f"megatron.extra[{key}]", key)
        return _options()[key]
    actions = [a for a in _by_dest().get(key, []) if a.option_strings]
    if not actions:
        near = closest(key, [d for d in _by_dest() if d != "help"])
        owner = field_of_dest(near) if near else None
        fix = (f"did you mean {owner}? (the schema field that sets {near})" if owner else f"did you mean {near}?") \
            if near else "use a Megatron dest name or --flag"
        raise ConfigError(f"megatron.extra.{key}", key, "is not a Megatron-Core 0.19.2 argument", fix)
    return actions[0]


def extra_to_argv(extra: dict[str, Any]) -> list[str]:
    """{dest or --flag: value} -> argv. true -> the flag that sets it, false/None -> the flag that
    clears it (or nothing when false is Megatron's default), list -> nargs values."""
    argv: list[str] = []
    for key, value in extra.items():
        action = _action_for(key)
        if action.nargs == 0 and key.startswith("-"):  # a flag named as the key: true passes it
            if value is True:
                argv.append(key)
            elif value not in (False, None):
                raise ConfigError(f"megatron.extra[{key}]", value, "a bare flag takes true or false",
                                  f"write {key}: true")
        elif action.nargs == 0:  # a dest named as the key: pick the flag that sets that value
            siblings = [a for a in _by_dest()[action.dest] if a.nargs == 0 and a.option_strings]
            want = bool(value)
            match = [a for a in siblings if a.const is want]
            if match:
                argv.append(match[0].option_strings[0])
            elif want != action.default:
                raise ConfigError(f"megatron.extra.{key}", value, "Megatron has no flag for that value",
                                  f"drop it (Megatron's default is {action.default})")
        elif value is None:
            continue
        elif isinstance(value, (list, tuple)):
            argv += [action.option_strings[0], *map(str, value)]
        else:
            argv += [action.option_strings[0], str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def check_raw(raw: list[str]) -> None:
    """Every --flag in megatron.raw must be Megatron's."""
    for tok in raw:
        if tok.startswith("--") and tok.split("=", 1)[0] not in _options():
            raise unknown_flag_error("megatron.raw", tok)


def dests(argv: list[str]) -> list[str]:
    """Dest of each flag in argv, in order."""
    flags = [t.split("=", 1)[0] for t in argv if t.startswith("--")]
    return [_options()[f].dest for f in flags if f in _options()]


def extra_dests(extra: dict[str, Any]) -> list[str]:
    """Dest of each megatron.extra key, whether or not its value emits a flag."""
    return [_action_for(key).dest for key in extra]


def check_no_duplicates(owned: list[str], extra_dest_names: list[str], field: str) -> None:
    """A Megatron argument that a schema field owns (whether or not it is emitted for this config) must
    be changed through that field: set twice, argparse would silently keep one of them."""
    seen = set(dests(owned))
    for dest in extra_dest_names:
        if dest in seen:
            owner = field_of_dest(dest)
            raise ConfigError(field, dest, "is already set by a config field (argparse would keep the last one "
                              "silently)", f"set {owner} instead" if owner else
                              "change the schema field that maps to it instead")

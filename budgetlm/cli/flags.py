"""Flags generated from config field metadata: a verb names the field it exposes, and the flag's
spelling, help, type, bounds and choices come from the field (config.setting), so every verb spells
a knob the same way. Per-verb differences are limited to a default, nargs/const, or a short alias."""

from __future__ import annotations

import argparse
from typing import Any

from budgetlm import checks
from budgetlm.config import ModelConfig, TrainConfig, field_kind, flag_name, leaf_field, leaf_paths

# Long spellings users already have, shared by every verb that exposes the field.
ALIASES = {"total_batch_tokens": ("--total-batch",), "seq_len": ("--seq",), "batch_size": ("--micro-batch",)}


def config_class(name: str) -> type:
    """The config dataclass that owns the flat field `name`."""
    for cls in (ModelConfig, TrainConfig):
        if name in leaf_paths(cls):
            return cls
    raise KeyError(f"no config field {name!r}")


def field_flag(g: argparse._ActionsContainer, name: str, *short: str, **overrides: Any) -> argparse.Action:
    """Add the flag of config field `name` to a parser or group. `short`: verb-local one-dash aliases
    (llm.c's). `overrides`: default, nargs, const, help or metavar for this verb; the parsed value
    passes the field's own rules (bounds, choices), so a bad value fails at parse time, naming the flag."""
    f = leaf_field(config_class(name), name)
    kind, _ = field_kind(f)
    rules = f.metadata
    opts: dict[str, Any] = {"help": rules["help"], "dest": name, "default": None}
    if kind in ("int", "float"):
        opts["type"] = checks.number(int if kind == "int" else float, min=rules.get("min"), max=rules.get("max"),
                                     positive=bool(rules.get("positive")))
    if "choices" in rules:
        opts["choices"] = list(rules["choices"])
    if kind == "bool":  # --qk-norm / --no-qk-norm; unset stays None, so it is not an explicit choice
        opts["action"] = argparse.BooleanOptionalAction
    if overrides.get("default") is not None and "help" not in overrides:  # this verb's own default, said
        shown = " ".join(map(str, overrides["default"])) if isinstance(overrides["default"], list) else overrides["default"]
        opts["help"] = f"{rules['help']} (default here: {shown})"
    opts.update({k: v for k, v in overrides.items() if k != "help" or v})
    action = g.add_argument(flag_name(name), *ALIASES.get(name, ()), *short, **opts)
    action.config_field = name  # the test of flags reads it: every config flag is generated here
    return action


def field_flags(g: argparse._ActionsContainer, names: tuple[str, ...], short: dict[str, str] | None = None) -> None:
    for name in names:
        field_flag(g, name, *((short[name],) if short and name in short else ()))


def picked(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    """The fields among `names` given on the command line (None = not given)."""
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


class UsageError(SystemExit):
    """A flag argparse could not parse; main prints it as the one error line (exit code 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line `budgetlm VERB: error: ...` (no usage block), exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")

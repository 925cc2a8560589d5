"""The rules behind the config dataclasses, for any of them: fields declared with `setting` (their
help and checks in metadata), sub-config fields declared with `group`, values checked by those
rules, and the flat-name view of a tree (TrainConfig's "lr" is optim.lr) that flags, old files and
sweep grids use. budgetlm.config re-exports all of it."""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import field, fields
from pathlib import Path
from typing import Any, Iterator

from budgetlm.errors import BudgetLMError


def setting(default: Any, help: str = "", **rules: Any) -> Any:
    """A dataclass field whose rules (choices, min, max, positive, finite) live in its metadata, so
    check_field, the CLI's --help/choices and the TOML loader all read the same place."""
    return field(default=default, metadata=dict(help=help, **rules))


def group(cls: type, help: str) -> Any:
    """A TrainConfig field holding one sub-config (a fresh one per TrainConfig)."""
    return field(default_factory=cls, metadata=dict(help=help, group=True))


def group_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of `cls` that hold a sub-config."""
    return [f for f in fields(cls) if f.metadata.get("group")]


def leaf_paths(cls: type) -> dict[str, str]:
    """Each leaf field's flat name -> its path: {"budget": "budget", "lr": "optim.lr", ...}. Leaf names
    are unique across the groups, so the flat name is also the flag's and old files' name."""
    if cls not in _LEAF_PATHS:
        paths: dict[str, str] = {}
        for f in fields(cls):
            if f.metadata.get("group"):
                paths.update({g.name: f"{f.name}.{g.name}" for g in fields(f.default_factory)})
            else:
                paths[f.name] = f.name
        _LEAF_PATHS[cls] = paths
    return _LEAF_PATHS[cls]


def leaf_field(cls: type, name: str) -> dataclasses.Field:
    """The dataclass field (with its rules) behind a flat name such as "lr" or "n_layer"."""
    path = leaf_paths(cls)[name]
    owner = cls
    for part in path.split(".")[:-1]:
        owner = next(f for f in fields(owner) if f.name == part).default_factory
    return next(f for f in fields(owner) if f.name == name)


def get_value(cfg: Any, name: str) -> Any:
    """cfg's value of a leaf field by its flat name: get_value(tcfg, "lr") is tcfg.optim.lr."""
    owner, leaf = _owner(cfg, name)
    return getattr(owner, leaf)


def set_value(cfg: Any, name: str, value: Any) -> None:
    """Set a leaf field by its flat name (unchecked: rebuild or check_fields to check it)."""
    owner, leaf = _owner(cfg, name)
    setattr(owner, leaf, value)


def _owner(cfg: Any, name: str) -> tuple[Any, str]:
    path = leaf_paths(type(cfg))[name].split(".")
    owner = cfg
    for part in path[:-1]:
        owner = getattr(owner, part)
    return owner, path[-1]


def flat_dict(cfg: Any) -> dict[str, Any]:
    """{flat name: value} for every leaf: summary.json's "train" and metric sinks stay one level deep."""
    return {name: get_value(cfg, name) for name in leaf_paths(type(cfg))}


def nest_values(cls: type, values: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    """Flat keys ("lr") and nested tables ({"optim": {"lr": ...}}) -> {top field: value, group: {leaf: value}}.
    Unknown keys raise TypeError (a constructor) or, with `source`, BudgetLMError naming it."""
    groups = {f.name: {g.name for g in fields(f.default_factory)} for f in group_fields(cls)}
    paths = leaf_paths(cls)
    out: dict[str, Any] = {}
    unknown = []
    for key, value in values.items():
        if key in groups and isinstance(value, dict):
            bad = sorted(set(value) - groups[key])
            unknown += [f"{key}.{b}" for b in bad]
            out.setdefault(key, {}).update({k: v for k, v in value.items() if k in groups[key]})
        elif key in groups and (dataclasses.is_dataclass(value) or key not in paths):
            if source is not None and not dataclasses.is_dataclass(value):  # "schedule" is also a leaf: by type
                raise BudgetLMError(f"{key} in {source}: expected a table of {', '.join(sorted(groups[key]))}, "
                                    f"got {value!r}")
            out[key] = value if key not in out else _merged(out[key], value)
        elif key in paths and "." in paths[key]:
            group_name = paths[key].split(".")[0]
            slot = out.setdefault(group_name, {})
            if not isinstance(slot, dict):  # a sub-config object given too: the flat key wins
                out[group_name] = slot = dataclasses.asdict(slot)
            slot[key] = value
        elif key in paths:
            out[key] = value
        else:
            unknown.append(key)
    if unknown:
        if source is None:
            raise TypeError(f"{cls.__name__}() got unexpected keyword argument(s) {', '.join(sorted(unknown))}")
        raise BudgetLMError(f"{source}: unknown field(s) {', '.join(sorted(unknown))} for {cls.__name__}")
    return out


def flat_values(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Nested tables lifted to flat keys ({"optim": {"lr": 1}} -> {"lr": 1}), for readers keyed by the flat
    names (sweep grids, overrides); unknown keys are kept as written, for the caller's own error."""
    groups = {f.name for f in group_fields(cls)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in groups and isinstance(value, dict):
            out.update({k if k in leaf_paths(cls) else f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _merged(flat: dict[str, Any], given: Any) -> dict[str, Any]:
    """A sub-config given after some of its flat keys: its values under the flat ones."""
    base = dataclasses.asdict(given) if dataclasses.is_dataclass(given) else dict(given or {})
    return {**base, **flat}




def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_kind(f: dataclasses.Field) -> tuple[str, bool]:
    """The base type name of a field (annotations are strings here) and whether None is allowed."""
    parts = [p.strip() for p in str(f.type).split("|")]
    return parts[0], "None" in parts


def check_value(f: dataclasses.Field, value: Any, label: str | None = None) -> Any:
    """`value` for field `f` after its type and metadata rules; errors name `label` (default the flag).
    An int is accepted where a float is expected and returned as a float."""
    label = label or flag_name(f.name)
    kind, nullable = field_kind(f)
    rules = f.metadata
    if value is None:
        if nullable:
            return None
        raise BudgetLMError(f"{label}: a value is required")
    if kind == "bool":
        if not isinstance(value, bool):
            raise BudgetLMError(f"{label}: expected true or false, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise BudgetLMError(f"{label}: expected a whole number, got {value!r}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BudgetLMError(f"{label}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise BudgetLMError(f"{label} must be a finite number, got {value}")
    elif kind == "str" and not isinstance(value, str):
        raise BudgetLMError(f"{label}: expected a string, got {value!r}")
    if "choices" in rules and value not in rules["choices"]:
        allowed = ", ".join(str(c) for c in rules["choices"])
        raise BudgetLMError(f"{label} must be one of {allowed}, got {value!r}")
    if rules.get("positive") and not value > 0:
        raise BudgetLMError(f"{label} must be positive, got {value}")
    if "min" in rules and value < rules["min"]:
        raise BudgetLMError(f"{label} must be at least {rules['min']}, got {value}")
    if "max" in rules and value > rules["max"]:
        raise BudgetLMError(f"{label} must be at most {rules['max']}, got {value}")
    if rules.get("budget"):
        from budgetlm.train.budget import parse_budget
        try:
            parse_budget(value)
        except BudgetLMError as e:
            raise BudgetLMError(f"{label} {str(e).removeprefix('--budget ')}") from None
    return value


def check_fields(cfg: Any) -> None:
    """Every field of a config dataclass through check_value (floats normalized in place)."""
    for f in fields(cfg):
        setattr(cfg, f.name, check_value(f, getattr(cfg, f.name)))


def leaf_items(cls: type, values: dict[str, Any]) -> Iterator[tuple[str, dataclasses.Field | None, Any]]:
    """(key as written, its field or None when unknown, value) for each leaf of a flat or nested dict:
    {"lr": 1, "optim": {"beta1": 0.9}} gives ("lr", <lr>, 1) and ("optim.beta1", <beta1>, 0.9)."""
    paths, groups = leaf_paths(cls), {f.name: f.default_factory for f in group_fields(cls)}
    for key, value in values.items():
        if key in groups and isinstance(value, dict):
            known = {g.name: g for g in fields(groups[key])}
            for sub, v in value.items():
                yield f"{key}.{sub}", known.get(sub), v
        elif key in groups and (dataclasses.is_dataclass(value) or key not in paths):
            continue  # a sub-config object checked itself when it was built
        else:
            yield key, leaf_field(cls, key) if key in paths else None, value


def check_table(cls: type, values: dict[str, Any], where: str, table: str, extra: tuple[str, ...] = ()) -> None:
    """The keys of one TOML table, flat (lr = ...) or nested ([train.optim] lr = ...): unknown keys and
    bad values name `table.key in where`."""
    for key, f, value in leaf_items(cls, {k: v for k, v in values.items() if k not in extra}):
        if f is None:
            known = sorted(leaf_paths(cls)) + [g.name for g in group_fields(cls)]
            raise BudgetLMError(f"{table}.{key} in {where}: unknown key; known: {', '.join(known)}")
        check_value(f, value, f"{table}.{key} in {where}")


def check_toml_tables(file: dict[str, Any], where: str, allowed: dict[str, type | None]) -> None:
    """Top-level tables of a config file: only `allowed` (name -> dataclass or None for free-form)."""
    for name, value in file.items():
        if name not in allowed:
            raise BudgetLMError(f"{where}: unknown table [{name}]; expected {', '.join(f'[{a}]' for a in allowed)}")
        if not isinstance(value, dict):
            raise BudgetLMError(f"{name} in {where}: expected a table [{name}], got {value!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, values: dict[str, Any], source: str = "config") -> Any:
    """Build a config dataclass from a dict, naming any unknown field and where it came from. A
    TrainConfig takes nested dicts (to_dict's) and today's flat ones (old checkpoints, plan files)."""
    if group_fields(cls):
        split = nest_values(cls, values, source)
    else:
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise BudgetLMError(f"{source}: unknown field(s) {', '.join(unknown)} for {cls.__name__}")
        split = values
    if source != "flags":  # values from a file: errors name the key and the file, not a flag
        for key, f, value in leaf_items(cls, values):
            check_value(f, value, f"{key} in {source}")
    return cls(**split)


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise BudgetLMError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise BudgetLMError(f"{path}: not valid TOML ({e})") from None


def save_json(path: str | Path, data: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


_LEAF_PATHS: dict[type, dict[str, str]] = {}  # leaf_paths' cache: the classes never change

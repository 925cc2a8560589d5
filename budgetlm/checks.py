"""Checks at the CLI boundary that need no config dataclass: output paths that must be writable,
folders that must be folders, and numbers for the verbs' own flags (argparse `type=` factories)."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path
from typing import Callable

from budgetlm.errors import BudgetLMError


def _can_write_in(folder: Path) -> bool:
    """Whether a file can be created in `folder`: tried, not guessed from permission bits (root passes
    os.access everywhere, yet /proc or a read-only mount still refuse)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _writable_parent(path: Path, label: str) -> None:
    """The nearest existing ancestor of `path` must be a folder this process can write into."""
    parent = path.parent if str(path.parent) else Path(".")
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise BudgetLMError(f"{label} {path}: {parent} is a file, not a folder")
    if not _can_write_in(parent):
        raise BudgetLMError(f"{label} {path}: {parent} is not writable")


def out_dir(path: str | Path, label: str, empty: bool = False) -> Path:
    """An output folder: absent (its parent writable) or an existing writable folder; `empty`: with no files."""
    p = Path(path).expanduser()
    if not str(path).strip():
        raise BudgetLMError(f"{label}: empty path")
    if p.exists():
        if not p.is_dir():
            raise BudgetLMError(f"{label} {path}: exists and is a file, expected a folder")
        if not _can_write_in(p):
            raise BudgetLMError(f"{label} {path}: folder is not writable")
        if empty and any(p.iterdir()):
            raise BudgetLMError(f"{label} {path}: folder is not empty (add --force to overwrite its files)")
        return p
    _writable_parent(p, label)
    return p


def out_file(path: str | Path, label: str) -> Path:
    """An output file: not a folder, its folder writable (or creatable)."""
    p = Path(path).expanduser()
    if not str(path).strip() or str(path).endswith(("/", os.sep)):
        raise BudgetLMError(f"{label} {path!r}: expected a file name")
    if p.is_dir():
        raise BudgetLMError(f"{label} {path}: is a folder, expected a file")
    if p.exists():
        try:  # append mode changes nothing, but fails where writing would
            open(p, "ab").close()
        except OSError as e:
            raise BudgetLMError(f"{label} {path}: file is not writable ({e.strerror})") from None
    _writable_parent(p, label)
    return p


def data_dir(path: str | Path, label: str = "--data") -> Path:
    """A prepared data folder (from `budgetlm prepare`), not a file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise BudgetLMError(f"{label} {path}: no such folder; run 'budgetlm prepare --out {path}' first")
    if not p.is_dir():
        raise BudgetLMError(f"{label} {path}: is a file, expected a prepared data folder (from 'budgetlm prepare')")
    return p


def number(kind: type = float, *, min: float | None = None, max: float | None = None,
           positive: bool = False) -> Callable[[str], float]:
    """An argparse `type=` that parses int or (finite) float and applies the bounds; argparse
    reports a failure as one line naming the flag."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if positive and not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        if min is not None and value < min:
            raise argparse.ArgumentTypeError(f"must be at least {min}, got {text}")
        if max is not None and value > max:
            raise argparse.ArgumentTypeError(f"must be at most {max}, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse

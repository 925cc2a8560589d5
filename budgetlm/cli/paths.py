"""Output paths and data folders checked before any verb starts work, so a typo costs no training."""

from __future__ import annotations

import argparse

from budgetlm import checks

# Paths each verb writes: (attribute, "dir" | "file").
OUTPUTS = {"prepare": (("out", "dir"),), "train": (("out", "dir"),), "speedrun": (("out", "dir"),),
           "eval": (("out", "file"), ("judge_cache", "file")), "export": (("out", "dir"),),
           "ngram": (("out", "file"), ("json", "file")), "sweep": (("out", "dir"),),
           "plot": (("out", "file"), ("summary", "file")), "plan": (("out", "file"),)}
DATA_DIR_VERBS = ("eval", "sample", "ngram")  # --data is a prepared folder (train checks after its TOML)


def check_paths(args: argparse.Namespace) -> None:
    """Output paths writable and of the right kind, and --data a folder where one is expected."""
    for attr, kind in OUTPUTS.get(args.verb, ()):
        path = getattr(args, attr, None)
        if path is None:
            continue
        label = "--" + attr.replace("_", "-")
        if kind == "dir":
            checks.out_dir(path, label)
        else:
            checks.out_file(path, label)
    if args.verb == "bench" and not getattr(args, "no_record", True):
        checks.out_file(args.results, "--results")
    if args.verb in DATA_DIR_VERBS and getattr(args, "data", None):
        checks.data_dir(args.data)

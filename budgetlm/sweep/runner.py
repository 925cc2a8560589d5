"""`budgetlm sweep CONFIG.toml`: train every setting of a grid (or a random sample of it) under one
budget, several seeds each, and say which differences are real.

CONFIG:

    [sweep]
    budget = "2m"             # per run (time, tokens or steps)
    data = "data/synth-bpe"   # prepared folder
    mode = "grid"             # grid | random
    n = 8                     # random: settings to sample from the grid (seeded by sample_seed)
    seeds = [1, 2, 3]
    out = "runs/sweep"
    parallel = 1              # >1: that many worker processes, CPU threads split between them
    preset = "tiny"           # optional base size (as --model)
    [model]                   # optional fixed ModelConfig values
    [train]                   # optional fixed TrainConfig values
    [grid]                    # lists of values for any ModelConfig / TrainConfig field (or preset)
    n_layer = [2, 4]
    lr = [1e-3, 3e-3]

Each (setting, seed) trains into OUT/<setting>/seed<S>. Resumable: a run with summary.json is
read back, not retrained; a run interrupted with a checkpoint resumes from it (the newest intact
one); one without any is started again from scratch. A run whose checkpoints are all broken, or
hold no training state, is never deleted: it is reported as failed for a person to look at.
Results: OUT/results.jsonl and .csv (a row per run), the leaderboard (budgetlm/sweep/report.py)
in OUT/leaderboard.txt, OUT/bpb_vs_params.png and OUT/best_curves.png.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import re
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from budgetlm.config import ModelConfig, TrainConfig, flat_values, from_dict, leaf_paths, load_toml, model_config
from budgetlm.errors import BudgetLMError

SWEEP_KEYS = {"budget", "data", "mode", "n", "seeds", "out", "parallel", "preset", "sample_seed"}
RESERVED = {"seed", "out_dir", "progress"}  # set by the sweep for each run
MODEL_FIELDS = {f.name for f in fields(ModelConfig)} | {"preset"}
TRAIN_FIELDS = set(leaf_paths(TrainConfig))  # flat names, as in [train] and [grid]
METRICS = ("params", "steps", "tokens_seen", "tokens_per_s", "train_seconds", "val_loss", "val_ppl", "val_bpb",
           "flops_per_token", "epochs")


@dataclass
class SweepSpec:
    """A parsed sweep file; `source` names it in error messages."""

    data: str
    budget: str
    grid: dict[str, list[Any]]
    mode: str = "grid"
    n: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    out: str = "runs/sweep"
    parallel: int = 1
    preset: str | None = None
    sample_seed: int = 0
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    source: str = "sweep"


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a sweep TOML file; every problem names the file and the key."""
    file = load_toml(path)
    src = str(path)
    unknown = sorted(set(file) - {"sweep", "grid", "model", "train"})
    if unknown:
        raise BudgetLMError(f"{src}: unknown table(s) {', '.join(unknown)} (expected [sweep], [grid], [model], [train])")
    sw = dict(file.get("sweep", {}))
    bad = sorted(set(sw) - SWEEP_KEYS)
    if bad:
        raise BudgetLMError(f"{src}: unknown [sweep] key(s) {', '.join(bad)}; known: {', '.join(sorted(SWEEP_KEYS))}")
    train = flat_values(TrainConfig, dict(file.get("train", {})))  # [train.optim] tables as flat keys
    budget = sw.pop("budget", None) or train.pop("budget", None)
    if not sw.get("data"):
        raise BudgetLMError(f"{src}: [sweep] data = the prepared data folder is required")
    if not budget:
        raise BudgetLMError(f"{src}: [sweep] budget is required (e.g. \"2m\", \"1M-tokens\", \"200-steps\")")
    spec = SweepSpec(budget=str(budget), grid=dict(file.get("grid", {})), model=dict(file.get("model", {})),
                     train=train, source=src, **sw)
    check_spec(spec)
    return spec


def check_spec(spec: SweepSpec) -> None:
    src = spec.source
    if spec.mode not in ("grid", "random"):
        raise BudgetLMError(f"{src}: [sweep] mode must be grid or random, got {spec.mode!r}")
    if spec.mode == "random" and (not isinstance(spec.n, int) or spec.n < 1):
        raise BudgetLMError(f"{src}: [sweep] mode = \"random\" needs n = a positive number of settings")
    if not isinstance(spec.parallel, int) or spec.parallel < 1:
        raise BudgetLMError(f"{src}: [sweep] parallel must be a positive integer, got {spec.parallel!r}")
    if not spec.seeds or not all(isinstance(s, int) for s in spec.seeds) or len(set(spec.seeds)) != len(spec.seeds):
        raise BudgetLMError(f"{src}: [sweep] seeds must be a list of distinct integers, got {spec.seeds!r}")
    for table, known in (("grid", MODEL_FIELDS | TRAIN_FIELDS), ("model", MODEL_FIELDS), ("train", TRAIN_FIELDS)):
        keys = set(getattr(spec, table))
        if keys & RESERVED:
            raise BudgetLMError(f"{src}: [{table}] cannot set {', '.join(sorted(keys & RESERVED))} (the sweep sets it "
                                f"for each run: use [sweep] seeds / out)")
        if keys - known:
            raise BudgetLMError(f"{src}: [{table}] unknown field(s) {', '.join(sorted(keys - known))}")
    for k, v in spec.grid.items():
        if not isinstance(v, list) or not v:
            raise BudgetLMError(f"{src}: [grid] {k} must be a non-empty list of values, got {v!r}")


def settings(spec: SweepSpec) -> list[dict[str, Any]]:
    """The grid's settings in file order (grid), or n of them drawn without replacement (random)."""
    keys = list(spec.grid)
    sizes = [len(spec.grid[k]) for k in keys]
    total = math.prod(sizes)
    if spec.mode == "grid" or spec.n >= total:
        picks = range(total)
    else:  # decode mixed-radix indices, so a huge grid is never enumerated
        picks = sorted(random.Random(spec.sample_seed).sample(range(total), spec.n))
    out = []
    for index in picks:
        values, rest = {}, index
        for k, size in zip(reversed(keys), reversed(sizes)):
            values[k] = spec.grid[k][rest % size]
            rest //= size
        out.append({k: values[k] for k in keys})
    return out


def setting_name(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items()) or "base"


def setting_dir(values: dict[str, Any]) -> str:
    """A folder name readable for short settings; long ones are shortened with a hash."""
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", "_".join(f"{k}={v}" for k, v in values.items())) or "base"
    if len(slug) > 80:
        slug = slug[:60] + "-" + hashlib.sha256(slug.encode()).hexdigest()[:10]
    return slug


@dataclass
class Run:
    setting: dict[str, Any]
    seed: int
    run_dir: str  # relative to the sweep's out folder

    @property
    def name(self) -> str:
        return setting_name(self.setting)


def plan_runs(spec: SweepSpec) -> list[Run]:
    """Every (setting, seed), each config built once up front so a bad value fails before any training."""
    runs = []
    for values in settings(spec):
        for seed in spec.seeds:
            run = Run(values, seed, f"{setting_dir(values)}/seed{seed}")
            try:
                build_configs(spec, run, Path(spec.out))
            except (BudgetLMError, TypeError, ValueError) as e:
                raise BudgetLMError(f"{spec.source}: setting {run.name}: {e}") from None
            runs.append(run)
    return runs


def build_configs(spec: SweepSpec, run: Run, out: Path, threads: int | None = None) -> tuple[ModelConfig, TrainConfig]:
    mvals = {**spec.model, **{k: v for k, v in run.setting.items() if k in MODEL_FIELDS}}
    tvals = {**spec.train, **{k: v for k, v in run.setting.items() if k in TRAIN_FIELDS and k not in MODEL_FIELDS}}
    preset = mvals.pop("preset", None) or spec.preset
    mcfg = model_config(preset, **mvals)
    tvals.update(budget=tvals.get("budget", spec.budget), seed=run.seed, out_dir=str(out / run.run_dir),
                 progress=False)
    if threads is not None and tvals.get("threads") is None:
        tvals["threads"] = threads
    return mcfg, from_dict(TrainConfig, tvals, spec.source)


def row_from_summary(run: Run, summary: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"setting": run.name, "seed": run.seed, "status": "ok", "run_dir": run.run_dir,
                           "arch": summary.get("model", {}).get("arch", "gpt")}
    row.update({k: summary.get(k) for k in METRICS})
    row["bound"] = row["arch"] == "d3pm"  # diffusion BPB is an upper bound
    row.update(run.setting)
    return row


def execute(spec: SweepSpec, run: Run, threads: int | None = None) -> dict[str, Any]:
    """Train one run (resuming an interrupted one) and return its row; failures become a row too.
    Top-level so worker processes can run it."""
    from budgetlm.train.trainer import train
    out = Path(spec.out)
    run_path = out / run.run_dir
    mcfg, tcfg = build_configs(spec, run, out, threads)
    try:
        resume = resumable(run_path)
    except BudgetLMError as e:
        return failed_row(run, str(e))
    if resume is None and run_path.exists():  # nothing to continue from: start clean, not appending to old logs
        shutil.rmtree(run_path)
    run_path.mkdir(parents=True, exist_ok=True)
    with open(run_path / "train.log", "a") as logf:
        def log(msg: str) -> None:
            logf.write(msg + "\n")
            logf.flush()
        try:
            train(mcfg, tcfg, spec.data, resume=resume, log=log)
        except BudgetLMError as e:
            if str(e).startswith("interrupted"):
                raise
            log(f"error: {e}")
            return failed_row(run, str(e))
    return row_from_summary(run, json.loads((run_path / "summary.json").read_text()))


def failed_row(run: Run, error: str) -> dict[str, Any]:
    return {"setting": run.name, "seed": run.seed, "status": "failed", "error": error,
            "run_dir": run.run_dir, **{k: float("nan") for k in METRICS}, **run.setting}


def resumable(run_path: Path) -> str | None:
    """The run folder to resume from, or None when it holds no checkpoint at all (it may then be
    deleted). A folder whose checkpoints are all broken, or hold weights but no training state, is
    never deleted: BudgetLMError says why, and the run is left for a person to look at."""
    from budgetlm.train.checkpoint import NoCheckpointError, has_state, resolve_checkpoint
    if not run_path.exists():
        return None
    try:
        ckpt = resolve_checkpoint(run_path)
    except NoCheckpointError:
        return None
    except BudgetLMError as e:
        raise BudgetLMError(f"{run_path}: not retrained, its checkpoints are kept: {e}") from None
    if not has_state(ckpt):
        raise BudgetLMError(f"{run_path}: not retrained: {ckpt} holds weights but no training state to resume; "
                            "move the folder away to train this run again")
    return str(run_path)


def write_results(rows: list[dict[str, Any]], out: Path) -> None:
    """results.jsonl and results.csv, one row per run, rewritten whole (so they match the run folders)."""
    with open(out / "results.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r, default=str) + "\n")
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]
    ran: int
    skipped: int
    failed: int
    board: list[dict[str, Any]]
    table: str
    files: list[Path]


def run_sweep(spec: SweepSpec, log: Callable[[str], None] = print, dry_run: bool = False) -> SweepResult:
    """Train what is missing, then write results, leaderboard and plots for all runs."""
    from budgetlm.sweep.report import leaderboard, leaderboard_table, plot_best_curves, plot_bpb_vs_params
    runs = plan_runs(spec)
    out = Path(spec.out)
    done = {id(r): r for r in runs if (out / r.run_dir / "summary.json").is_file()}
    todo = [r for r in runs if id(r) not in done]
    log(f"sweep: {len(runs)} runs ({len(runs) // len(spec.seeds)} settings x {len(spec.seeds)} seeds), "
        f"{len(done)} already done, {len(todo)} to train under {spec.budget} each")
    if dry_run:
        for r in runs:
            log(f"  {'done ' if id(r) in done else 'todo '} {r.name} seed {r.seed} -> {out / r.run_dir}")
        return SweepResult([], 0, len(done), 0, [], "", [])
    out.mkdir(parents=True, exist_ok=True)
    results: dict[int, dict[str, Any]] = {}
    for r in done.values():
        results[id(r)] = row_from_summary(r, json.loads((out / r.run_dir / "summary.json").read_text()))

    def finished(i: int, r: Run, row: dict[str, Any]) -> None:
        results[id(r)] = row
        what = f"val_bpb {row['val_bpb']:.4f}" if row["status"] == "ok" else f"FAILED: {row.get('error')}"
        log(f"[{i}/{len(todo)}] {r.name} seed {r.seed}: {what}")
        write_results([results[id(x)] for x in runs if id(x) in results], out)

    if spec.parallel > 1 and len(todo) > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from multiprocessing import get_context
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // spec.parallel)
        with ProcessPoolExecutor(spec.parallel, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(execute, spec, r, threads): r for r in todo}
            for i, fut in enumerate(as_completed(futures), 1):
                finished(i, futures[fut], fut.result())
    else:
        for i, r in enumerate(todo, 1):
            finished(i, r, execute(spec, r))
    rows = [results[id(r)] for r in runs]
    write_results(rows, out)
    board = leaderboard(rows)
    table = leaderboard_table(board)
    (out / "leaderboard.txt").write_text(table)
    files = [out / "results.jsonl", out / "results.csv", out / "leaderboard.txt"]
    for p in (plot_bpb_vs_params(board, out / "bpb_vs_params.png"),
              plot_best_curves(rows, out, out / "best_curves.png")):
        if p:
            files.append(p)
    failed = sum(r["status"] != "ok" for r in rows)
    log(table)
    log("files: " + ", ".join(str(f) for f in files))
    return SweepResult(rows, len(todo), len(done), failed, board, table, files)

"""Issue-7 evidence: the 5-minute CPU study, run end to end by `budgetlm sweep`.

    python benchmarks/research_study.py            # train what is missing (resumable), then report
    python benchmarks/research_study.py --report   # only rebuild the report from finished runs

Phase 1: the size sweep in benchmarks/sweeps/size_5m.toml (5 transformer sizes x 3 seeds).
Phase 2: at the size with the lowest mean BPB, one factor at a time: RoPE instead of learned
positions, SwiGLU instead of GELU, an LSTM with about the same parameter count, and D3PM
(absorbing diffusion) with the same transformer shape as denoiser. The baseline arm is the
size sweep's own runs at that size (same config and seeds), not a re-run.
Report: benchmarks/research_study.md + PNGs in benchmarks/figures/, rows in results.jsonl.
Runs take the whole CPU: start nothing else while it trains (the rows record tokens/s, so a
disturbed run shows as a throughput outlier).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from budgetlm.config import model_config  # noqa: E402
from budgetlm.sweep.runner import SweepSpec, check_spec, load_sweep, run_sweep  # noqa: E402

SIZE_TOML = ROOT / "benchmarks/sweeps/size_5m.toml"
STUDY = ROOT / "runs/study"


def best_size(rows: list[dict]) -> str:
    from budgetlm.sweep.report import leaderboard
    board = leaderboard([r for r in rows if r["status"] == "ok"])
    return board[0]["setting"].split("=", 1)[1]


def lstm_width(target_params: int, vocab: int, layers: int = 2) -> int:
    """Hidden size (multiple of 16) whose tied LSTM LM has the parameter count nearest `target_params`."""
    from budgetlm.models import build_model
    best = None
    for h in range(32, 1025, 16):
        n = build_model(model_config(None, arch="lstm", n_layer=layers, n_embd=h, n_head=1, vocab_size=vocab,
                                     block_size=64)).num_params()
        if best is None or abs(n - target_params) < abs(best[1] - target_params):
            best = (h, n)
    return best[0]


def variant_specs(size_spec: SweepSpec, best: str, params: int, study: Path) -> dict[str, SweepSpec]:
    vocab = json.loads((ROOT / size_spec.data / "meta.json").read_text())["vocab_size"]
    grids = {
        "rope": {"preset": [best], "pos": ["rope"]},
        "swiglu": {"preset": [best], "mlp": ["swiglu"]},
        "lstm": {"arch": ["lstm"], "n_layer": [2], "n_embd": [lstm_width(params, vocab)], "n_head": [1]},
        "d3pm": {"preset": [best], "arch": ["d3pm"]},
    }
    specs = {}
    for name, grid in grids.items():
        spec = dataclasses.replace(size_spec, grid=grid, out=str(study / name), source=f"{SIZE_TOML.name}:{name}")
        check_spec(spec)
        specs[name] = spec
    return specs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", action="store_true", help="only write the report from finished runs")
    ap.add_argument("--budget", help="override the per-run budget (smoke tests: e.g. 3-steps)")
    ap.add_argument("--study-dir", type=Path, default=STUDY, help=f"where runs go (default {STUDY})")
    args = ap.parse_args()
    size_spec = load_sweep(SIZE_TOML)
    size_spec.data = str(ROOT / size_spec.data)
    size_spec.out = str(args.study_dir / "size")
    if args.budget:
        size_spec.budget = args.budget
    if not args.report:
        res = run_sweep(size_spec)
        rows = res.rows
    else:
        rows = [json.loads(x) for x in (Path(size_spec.out) / "results.jsonl").read_text().splitlines()]
    best = best_size(rows)
    params = next(r["params"] for r in rows if r["setting"] == f"preset={best}")
    print(f"best size: {best} ({params:,} params)", flush=True)
    specs = variant_specs(size_spec, best, params, args.study_dir)
    if not args.report:
        for name, spec in specs.items():
            print(f"== {name}: {spec.grid}", flush=True)
            run_sweep(spec)
    from benchmarks.research_report import write_report  # the report's own module: tables, samples, figures
    write_report(size_spec, best, specs)


if __name__ == "__main__":
    main()

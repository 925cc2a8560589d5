"""Validation-loss curves of two or more runs against tokens and seconds (one PNG, two panels), and
the tokens and seconds each run needed to reach the first run's final validation loss (linear
interpolation between its evals; None where it never got there). Reads each run's metrics.jsonl.

  python benchmarks/recipe_curves.py OUT.png RUN_DIR[=LABEL] RUN_DIR[=LABEL] ... [--json OUT.json]
      [--curve val|train]
The first run is the reference (plain). `--curve train` uses the logged training loss (a trailing
mean over SMOOTH log rows) where the runs have too few evals: both arms read the same batches in the
same order, so equal tokens mean equal data; each run's final validation loss is reported either way.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def metric_rows(run: Path) -> list[dict]:
    """The dict rows of a run's metrics.jsonl (a torn last line is skipped)."""
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict):
            rows.append(r)
    return rows


def eval_curve(run: Path) -> list[dict]:
    """(tokens, elapsed seconds, val_loss) of every eval row, final included, in step order."""
    return [{"tokens": r["tokens"], "seconds": r["elapsed"], "val_loss": r["val_loss"]}
            for r in metric_rows(run) if r.get("val_loss") is not None]


SMOOTH = 3


def train_curve(run: Path) -> list[dict]:
    """(tokens, elapsed seconds, trailing-mean training loss) of every logged step."""
    rows, window = [], []
    for r in metric_rows(run):
        if r.get("loss") is not None and r.get("step", 0) > 1:
            window = (window + [r["loss"]])[-SMOOTH:]
            rows.append({"tokens": r["tokens"], "seconds": r["elapsed"], "val_loss": sum(window) / len(window)})
    return rows


def reach(curve: list[dict], target: float) -> dict | None:
    """Tokens and seconds where the curve first comes down to `target`, interpolated between evals."""
    prev = None
    for r in curve:
        if r["val_loss"] <= target:
            if prev is None:
                return {"tokens": r["tokens"], "seconds": r["seconds"]}
            f = (prev["val_loss"] - target) / max(prev["val_loss"] - r["val_loss"], 1e-12)
            return {k: prev[k] + f * (r[k] - prev[k]) for k in ("tokens", "seconds")}
        prev = r
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("png")
    ap.add_argument("runs", nargs="+", help="RUN_DIR or RUN_DIR=LABEL; the first is the reference")
    ap.add_argument("--json", help="also write the numbers here")
    ap.add_argument("--curve", choices=("val", "train"), default="val")
    a = ap.parse_args()
    runs = [(Path(r.split("=", 1)[0]), r.split("=", 1)[1] if "=" in r else Path(r).name) for r in a.runs]
    finals = {label: eval_curve(path)[-1] for path, label in runs}
    curves = {label: (eval_curve if a.curve == "val" else train_curve)(path) for path, label in runs}
    ref_label = runs[0][1]
    target = curves[ref_label][-1]["val_loss"]
    ref = reach(curves[ref_label], target)
    out = {"curve": a.curve, "target_loss": target, "reference": ref_label, "runs": {}}
    for label, curve in curves.items():
        got = reach(curve, target)
        out["runs"][label] = {"final_val_loss": finals[label]["val_loss"], "final_curve_loss": curve[-1]["val_loss"],
                              "final_tokens": curve[-1]["tokens"],
                              "final_seconds": curve[-1]["seconds"], "reach_target": got,
                              "time_frac_of_reference": got["seconds"] / ref["seconds"] if got and ref else None,
                              "token_frac_of_reference": got["tokens"] / ref["tokens"] if got and ref else None}
    print(json.dumps(out, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, curve in curves.items():
        ax_t.plot([r["tokens"] / 1e6 for r in curve], [r["val_loss"] for r in curve], marker="o" if a.curve == "val" else None, label=label)
        ax_s.plot([r["seconds"] for r in curve], [r["val_loss"] for r in curve], marker="o" if a.curve == "val" else None, label=label)
    for ax, xl in ((ax_t, "training tokens (M)"), (ax_s, "wall-clock seconds (run budget)")):
        ax.axhline(target, color="grey", ls="--", lw=0.8, label=f"{ref_label} final {target:.3f}")
        ax.set_xlabel(xl)
        ax.set_ylabel("validation loss" if a.curve == "val" else f"training loss (mean of {SMOOTH} log rows)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{a.curve} loss: " + " vs ".join(f"{k} (final val {finals[k]['val_loss']:.3f})" for k in curves))
    fig.tight_layout()
    fig.savefig(a.png, dpi=120)
    print(f"wrote {a.png}")


if __name__ == "__main__":
    main()

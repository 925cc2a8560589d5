"""`budgetlm plot RUN_DIR... --out PNG`: validation loss and HellaSwag against steps and tokens
for one or more runs, on the same axes as llm.c / build-nanogpt plots (their GPT-2/GPT-3
reference lines), plus a one-page summary table PNG beside it.

Reads only the files a run writes (metrics.jsonl, summary.json), so it works on a run in
progress and on runs copied from another machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from budgetlm.errors import BudgetLMError
from budgetlm.eval.hellaswag import GPT2_124M_FINEWEB_EDU_VAL_LOSS, REFERENCES

HS_REFS = ("GPT-2 124M", "GPT-3 125M", "GPT-2 1.5B", "GPT-3 1.3B")  # drawn on the HellaSwag panels


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """{name, val: [(step, tokens, loss)], hs: [(step, tokens, acc_norm)], summary}."""
    run = Path(run_dir)
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        raise BudgetLMError(f"{run}: no metrics.jsonl (not a budgetlm run folder?)")
    rows = []
    for lineno, line in enumerate(metrics.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise BudgetLMError(f"{metrics}:{lineno}: not valid JSON") from None
    summary = {}
    if (run / "summary.json").is_file():
        summary = json.loads((run / "summary.json").read_text())
    val = [(r["step"], r["tokens"], r["val_loss"]) for r in rows if "val_loss" in r]
    hs = [(r["step"], r["tokens"], r["hellaswag_acc_norm"]) for r in rows if "hellaswag_acc_norm" in r]
    train = [(r["step"], r["tokens"], r["loss"]) for r in rows if "loss" in r]
    return {"name": run.name or str(run), "dir": str(run), "val": val, "hs": hs, "train": train, "summary": summary}


def _fineweb_gpt2(run: dict[str, Any]) -> bool:
    data = run["summary"].get("data") or {}
    return data.get("tokenizer") == "gpt2" and "fineweb" in str(data.get("source", ""))


def plot_runs(run_dirs: list[str | Path], out: str | Path, summary_png: str | Path | None = None,
              refs: bool = True) -> tuple[Path, Path]:
    """Write the 2x2 curves PNG and the summary PNG; returns both paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [load_run(d) for d in run_dirs]
    out = Path(out)
    summary_png = Path(summary_png) if summary_png else out.with_name(out.stem + "_summary" + out.suffix)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for col, (xi, xlabel) in enumerate(((0, "step"), (1, "tokens seen"))):
        ax_loss, ax_hs = axes[0][col], axes[1][col]
        for i, run in enumerate(runs):
            color = f"C{i}"
            if run["train"]:
                ax_loss.plot([r[xi] for r in run["train"]], [r[2] for r in run["train"]], color=color, lw=0.6,
                             alpha=0.3)
            if run["val"]:
                ax_loss.plot([r[xi] for r in run["val"]], [r[2] for r in run["val"]], "o-", color=color, ms=3,
                             label=f"{run['name']} val")
            if run["hs"]:
                ax_hs.plot([r[xi] for r in run["hs"]], [r[2] for r in run["hs"]], "o-", color=color, ms=3,
                           label=run["name"])
        if refs and any(_fineweb_gpt2(r) for r in runs):
            ax_loss.axhline(GPT2_124M_FINEWEB_EDU_VAL_LOSS, color="red", ls="--", lw=1,
                            label=f"OpenAI GPT-2 124M ({GPT2_124M_FINEWEB_EDU_VAL_LOSS})")
        if refs:
            for j, name in enumerate(HS_REFS):
                ax_hs.axhline(REFERENCES[name], color=f"C{9 - j}", ls="--", lw=1, label=f"{name} ({REFERENCES[name]:.1%})")
            ax_hs.axhline(0.25, color="gray", ls=":", lw=1, label="chance (25%)")
        if not any(r["hs"] for r in runs):
            ax_hs.text(0.5, 0.5, "no HellaSwag evals in these runs\n(train with --hellaswag-every N)",
                       transform=ax_hs.transAxes, ha="center", va="center", color="gray")
        ax_loss.set_title(f"validation loss vs {xlabel}")
        ax_hs.set_title(f"HellaSwag acc_norm vs {xlabel}")
        ax_loss.set_ylabel("loss (nats/token)")
        ax_hs.set_ylabel("acc_norm")
        for ax in (ax_loss, ax_hs):
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    _summary_page(runs, summary_png, plt)
    return out, summary_png


def _final(run: dict[str, Any], key: str, series: str) -> float | None:
    s = run["summary"]
    if key in s and s[key] is not None:
        return s[key]
    return run[series][-1][2] if run[series] else None


def _summary_page(runs: list[dict[str, Any]], path: Path, plt) -> None:
    """One page: a row per run with the numbers a reader compares first, and the reference lines."""
    header = ["run", "params", "steps", "tokens", "ranks", "val loss", "val bpb", "HellaSwag", "tok/s", "train s"]
    cells = []
    for run in runs:
        s = run["summary"]
        loss, hs = _final(run, "val_loss", "val"), _final(run, "hellaswag_acc_norm", "hs")
        last = (run["val"] or run["train"] or [(None, None, None)])[-1]
        cells.append([run["name"][:28], f"{s['params']:,}" if "params" in s else "-",
                      f"{s.get('steps', last[0]) or 0:,}", f"{s.get('tokens_seen', last[1]) or 0:,}",
                      str(s.get("world", 1)), f"{loss:.4f}" if loss is not None else "-",
                      f"{s['val_bpb']:.4f}" if "val_bpb" in s else "-", f"{hs:.2%}" if hs is not None else "-",
                      f"{s['tokens_per_s']:,.0f}" if "tokens_per_s" in s else "-",
                      f"{s['train_seconds']:.0f}" if "train_seconds" in s else "-"])
    fig = plt.figure(figsize=(11, 8.5))  # one letter-size page
    fig.suptitle("budgetlm runs", fontsize=14, y=0.97)
    ax = fig.add_axes([0.03, 0.66, 0.94, 0.26])
    ax.axis("off")
    table = ax.table(cellText=cells or [["-"] * len(header)], colLabels=header, loc="upper center",
                     cellLoc="right", colLoc="right")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.4)
    for k, (series, title) in enumerate((("val", "val loss vs tokens"), ("hs", "HellaSwag acc_norm vs tokens"))):
        sub = fig.add_axes([0.07 + 0.48 * k, 0.36, 0.4, 0.26])
        for i, run in enumerate(runs):
            if run[series]:
                sub.plot([r[1] for r in run[series]], [r[2] for r in run[series]], "o-", ms=2, color=f"C{i}",
                         label=run["name"])
        if series == "hs":
            sub.axhline(REFERENCES["GPT-2 124M"], color="gray", ls="--", lw=1, label="GPT-2 124M")
        sub.set_title(title, fontsize=9)
        sub.tick_params(labelsize=7)
        sub.grid(alpha=0.3)
        if sub.get_legend_handles_labels()[0]:
            sub.legend(fontsize=6)
    notes = ["HellaSwag acc_norm references (10,042 val items, zero-shot):"]
    notes += [f"  {name}: {REFERENCES[name]:.1%}" for name in REFERENCES]
    notes += ["  GPT-2 numbers: OpenAI checkpoints scored by build-nanogpt / llm.c; GPT-3: Brown et al. 2020.",
              f"Val-loss reference (FineWeb-Edu val, GPT-2 tokenizer only): OpenAI GPT-2 124M = "
              f"{GPT2_124M_FINEWEB_EDU_VAL_LOSS} (build-nanogpt).",
              "Runs: " + "; ".join(r["dir"] for r in runs)]
    fig.text(0.05, 0.04, "\n".join(notes), fontsize=8, family="monospace", va="bottom")
    fig.savefig(path, dpi=110)
    plt.close(fig)

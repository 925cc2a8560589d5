"""What a sweep shows a person: a leaderboard that says which differences are beyond seed noise,
and two plots (BPB vs parameters, loss curves of the best runs).

Why a significance flag: at small budgets two settings often differ by less than two seeds of
the same setting do; ranking them by the mean alone invites chasing noise.

The rule (documented in `compare`): Welch's two-sided t-test on the per-seed val_bpb of a
setting against the best setting; p > 0.05 reads "within noise". It needs >= 2 seeds on
both sides; with one seed there is no spread to compare against, and the verdict says so.
No scipy: the t distribution's tail comes from the regularized incomplete beta function.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

ALPHA = 0.05


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for the incomplete beta function (Numerical Recipes, modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances, Welch-Satterthwaite df)."""
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    va, vb = sa * sa / len(a), sb * sb / len(b)
    if va + vb == 0.0:
        return 1.0 if ma == mb else 0.0
    t = (ma - mb) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def compare(best: Sequence[float], other: Sequence[float], alpha: float = ALPHA) -> tuple[str, float | None]:
    """Verdict on `other` (per-seed val_bpb) against the best setting: ("within noise" | "worse" |
    "1 seed", p). Welch's two-sided t-test; "within noise" when p > alpha. With fewer than two
    seeds on either side no test is possible: "1 seed", p None."""
    if len(best) < 2 or len(other) < 2:
        return "1 seed", None
    p = welch_p(best, other)
    return ("within noise" if p > alpha else "worse"), p


def leaderboard(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per setting from the finished runs, best mean val_bpb first, with the verdict."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("status") == "ok" and math.isfinite(r.get("val_bpb", float("nan"))):
            groups.setdefault(r["setting"], []).append(r)
    board = []
    for name, rs in groups.items():
        bpbs = [r["val_bpb"] for r in rs]
        m, s = mean_std(bpbs)
        board.append({"setting": name, "n": len(rs), "bpb_mean": m, "bpb_std": s, "bpbs": bpbs,
                      "params": rs[0]["params"], "tokens_seen": sum(r["tokens_seen"] for r in rs) / len(rs),
                      "tokens_per_s": sum(r["tokens_per_s"] for r in rs) / len(rs),
                      "bound": any(r.get("bound") for r in rs)})
    board.sort(key=lambda e: e["bpb_mean"])
    for i, e in enumerate(board):
        if i == 0:
            e["verdict"], e["p"] = "best", None
        else:
            e["verdict"], e["p"] = compare(board[0]["bpbs"], e["bpbs"])
        e["delta"] = e["bpb_mean"] - board[0]["bpb_mean"]
    return board


def leaderboard_table(board: list[dict[str, Any]], title: str = "sweep leaderboard (val bits/byte)") -> str:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for col, just in (("#", "right"), ("setting", "left"), ("seeds", "right"), ("val_bpb", "right"),
                      ("vs best", "right"), ("p (Welch)", "right"), ("verdict", "left"), ("params", "right"),
                      ("tokens", "right"), ("tok/s", "right")):
        t.add_column(col, justify=just)
    for i, e in enumerate(board, 1):
        bpb = f"{e['bpb_mean']:.4f} ± {e['bpb_std']:.4f}" + (" (bound)" if e["bound"] else "")
        t.add_row(str(i), e["setting"], str(e["n"]), bpb, "" if i == 1 else f"+{e['delta']:.4f}",
                  "" if e["p"] is None else f"{e['p']:.3f}", e["verdict"], f"{e['params']:,}",
                  f"{e['tokens_seen']:,.0f}", f"{e['tokens_per_s']:,.0f}")
    console = Console(file=io.StringIO(), width=160)
    console.print(t)
    note = (f"verdict: Welch's two-sided t-test of each setting's per-seed val_bpb against the best; "
            f"p > {ALPHA} = within noise. (bound) = diffusion upper bound, not an exact BPB.")
    return console.file.getvalue() + note + "\n"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_bpb_vs_params(board: list[dict[str, Any]], png: str | Path) -> Path | None:
    """Mean val_bpb +- std per setting against parameters (log x); a vertical line at
    mean tokens seen / 20, the Chinchilla-optimal size for that many tokens."""
    if not board:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    xs = [e["params"] for e in board]
    ax.errorbar(xs, [e["bpb_mean"] for e in board], yerr=[e["bpb_std"] for e in board], fmt="o", capsize=3)
    for e in board:
        ax.annotate(e["setting"], (e["params"], e["bpb_mean"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    tokens = sum(e["tokens_seen"] * e["n"] for e in board) / sum(e["n"] for e in board)
    ax.axvline(tokens / 20, color="gray", ls="--", lw=1, label=f"tokens seen / 20 = {tokens / 20:,.0f}")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("val bits/byte (mean ± std over seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return Path(png)


def plot_best_curves(rows: list[dict[str, Any]], out: str | Path, png: str | Path, k: int = 3) -> Path | None:
    """Train loss (line) and eval loss (dots) against tokens for the k runs with the lowest val_bpb."""
    ok = sorted((r for r in rows if r.get("status") == "ok" and math.isfinite(r["val_bpb"])),
                key=lambda r: r["val_bpb"])[:k]
    curves = []
    for r in ok:
        f = Path(out) / r["run_dir"] / "metrics.jsonl"
        if f.is_file():
            recs = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
            curves.append((r, [(x["tokens"], x["loss"]) for x in recs if "loss" in x],
                           [(x["tokens"], x["val_loss"]) for x in recs if "val_loss" in x]))
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for r, train, val in curves:
        label = f"{r['setting']} seed {r['seed']} (bpb {r['val_bpb']:.3f})"
        line, = ax.plot(*zip(*train), lw=1, label=label) if train else ax.plot([], [], label=label)
        if val:
            ax.plot(*zip(*val), "o", color=line.get_color(), ms=4)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"best {len(curves)} runs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return Path(png)

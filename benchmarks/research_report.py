"""The issue-7 study's report: tables, figures, story metrics and samples from finished sweep runs.

Called by benchmarks/research_study.py (also as `research_study.py --report`). Writes
benchmarks/research_study.md, benchmarks/figures/study_*.png and appends one row per
setting to benchmarks/results.jsonl.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from benchmarks.common import commit, machine, record
from budgetlm.sweep.runner import SweepSpec
from budgetlm.sweep.report import compare, mean_std

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "benchmarks" / "research_study.md"
FIGURES = ROOT / "benchmarks" / "figures"
N_STORIES = int(os.environ.get("BUDGETLM_STUDY_STORIES", "12"))  # smaller for smoke tests


def _rows(out: str | Path) -> list[dict]:
    path = Path(out) / "results.jsonl"
    if not path.is_file():
        return []
    return [r for r in (json.loads(x) for x in path.read_text().splitlines() if x.strip()) if r["status"] == "ok"]


def _groups(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["setting"], []).append(r)
    return out


def _ms(xs: list[float], digits: int = 4) -> str:
    m, s = mean_std(xs)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def size_table(groups: dict[str, list[dict]]) -> tuple[list[str], list[dict]]:
    """One line per size: BPB, throughput, tokens seen and where it sits against tokens/20."""
    best = min(groups, key=lambda k: statistics.mean(r["val_bpb"] for r in groups[k]))
    lines = ["| size | params | val BPB (3 seeds) | vs best | Welch p | verdict | tok/s | tokens seen | tokens/param "
             "| Chinchilla N* = tokens/20 | params / N* | epochs |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    summary = []
    for name, rs in sorted(groups.items(), key=lambda kv: kv[1][0]["params"]):
        bpb = [r["val_bpb"] for r in rs]
        tok = statistics.mean(r["tokens_seen"] for r in rs)
        params = rs[0]["params"]
        verdict, p = ("best", None) if name == best else compare([r["val_bpb"] for r in groups[best]], bpb)
        delta = statistics.mean(bpb) - statistics.mean(r["val_bpb"] for r in groups[best])
        lines.append(f"| {name.split('=', 1)[1]} | {params:,} | {_ms(bpb)} | {'' if name == best else f'{delta:+.4f}'} | "
                     f"{'' if p is None else f'{p:.3f}'} | {verdict} | {statistics.mean(r['tokens_per_s'] for r in rs):,.0f} "
                     f"| {tok / 1e6:.2f}M | {tok / params:.1f} | {tok / 20:,.0f} | {params / (tok / 20):.2f} | "
                     f"{statistics.mean(r['epochs'] for r in rs):.1f} |")
        summary.append({"setting": name, "params": params, "bpb": bpb, "tokens": tok, "verdict": verdict})
    return lines, summary


def size_figure(summary: list[dict], png: Path) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [s["params"] for s in summary]
    a.errorbar(xs, [statistics.mean(s["bpb"]) for s in summary], yerr=[mean_std(s["bpb"])[1] for s in summary],
               marker="o", capsize=3)
    for s in summary:
        a.scatter([s["params"]] * len(s["bpb"]), s["bpb"], s=8, color="gray", zorder=3)
        a.annotate(s["setting"].split("=", 1)[1], (s["params"], statistics.mean(s["bpb"])), textcoords="offset points",
                   xytext=(4, 6), fontsize=8)
    a.set(xscale="log", xlabel="parameters", ylabel="val bits/byte (mean ± std, 3 seeds)",
          title="5-minute budget, 2-core CPU: BPB vs size")
    b.plot(xs, [s["tokens"] / s["params"] for s in summary], marker="o")
    b.axhline(20, color="red", ls="--", label="Chinchilla: 20 tokens/param")
    b.set(xscale="log", yscale="log", xlabel="parameters", ylabel="tokens seen / parameter",
          title="tokens seen per parameter in 5 minutes")
    b.legend()
    from matplotlib.ticker import NullFormatter
    for ax in (a, b):  # minor log-axis labels overlap at these ranges
        ax.xaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def arm_stats(name: str, rs: list[dict], base: list[float]) -> dict:
    bpb = [r["val_bpb"] for r in rs]
    if bpb == base:
        verdict, p = "baseline", None
    else:  # compare() assumes the other arm is the worse one; here it may be better
        verdict, p = compare(base, bpb)
        if verdict == "worse" and statistics.mean(bpb) < statistics.mean(base):
            verdict = "better"
    return {"arm": name, "params": rs[0]["params"], "bpb": bpb, "delta": statistics.mean(bpb) - statistics.mean(base),
            "p": p, "verdict": verdict, "tok_s": statistics.mean(r["tokens_per_s"] for r in rs),
            "tokens": statistics.mean(r["tokens_seen"] for r in rs), "bound": any(r.get("bound") for r in rs),
            "run_dirs": [r["run_dir"] for r in rs]}


def stories_for(run_dir: Path, data_dir: Path, seed: int) -> dict:
    from budgetlm.data.prepare import load_meta
    from budgetlm.eval.story_eval import story_eval
    from budgetlm.report.summary import load_model
    model, tok, _ = load_model(run_dir, "cpu")
    st = story_eval(model, tok, N_STORIES, seed=seed, lowercase_prompts=bool(load_meta(data_dir).get("lowercase")))
    return {"metrics": st["story_metrics"], "stories": [s["text"] for s in st["stories"][:2]]}


def write_report(size_spec: SweepSpec, best: str, specs: dict[str, SweepSpec]) -> Path:
    size_rows = _rows(size_spec.out)
    groups = _groups(size_rows)
    lines_size, summary = size_table(groups)
    fig = size_figure(summary, FIGURES / "study_size_sweep.png")
    base_rows = groups[f"preset={best}"]
    base = [r["val_bpb"] for r in base_rows]
    arms = [arm_stats(f"transformer {best} (learned pos, GELU)", base_rows, base)]
    for name, spec in specs.items():
        rs = _rows(spec.out)
        if rs:
            arms.append(arm_stats({"rope": f"transformer {best}, RoPE", "swiglu": f"transformer {best}, SwiGLU",
                                   "lstm": f"LSTM {rs[0]['setting'].replace('arch=lstm ', '')}",
                                   "d3pm": f"D3PM (denoiser {best})"}[name], rs, base) | {"key": name, "out": spec.out})
    arms[0].update(key="transformer", out=size_spec.out)
    # story metrics and samples: every seed of the baseline and of the two other architectures
    story = {}
    for arm in arms:
        if arm["key"] not in ("transformer", "lstm", "d3pm"):
            continue
        per_seed = [stories_for(Path(arm["out"]) / d, Path(size_spec.data), seed)
                    for seed, d in enumerate(arm["run_dirs"], 1)]
        keys = per_seed[0]["metrics"].keys()
        story[arm["key"]] = {"metrics": {k: statistics.mean(p["metrics"][k] for p in per_seed) for k in keys},
                             "stories": per_seed[0]["stories"]}
    import datetime as dt
    mach = machine()
    md = ["# Issue 7: the 5-minute CPU study\n",
          f"Machine: {mach['cpu']} ({mach['cores']} cores), torch {mach['torch']}; commit {commit()}; "
          f"report written {dt.date.today().isoformat()}.",
          f"Data: {os.path.relpath(size_spec.data, ROOT)} (../shared TinyStories, lower-cased; bpe:1024; last 10% of stories held out). "
          f"Every run: budget {size_spec.budget} wall clock (final eval inside it), seq 64, batch 64, lr 3e-3, cosine, "
          f"AdamW wd 0.1, 2 threads, nothing else running. Seeds 1, 2, 3. Produced by "
          f"`python benchmarks/research_study.py` (resumable; runs in runs/study/).\n",
          "## 1. Size sweep (transformer, learned positions, GELU)\n", *lines_size, "",
          f"![size sweep](figures/{fig.name})\n" if fig else "",
          "## 2-3. Architectures and components at the best size\n",
          "| arm | params | val BPB (3 seeds) | Δ vs baseline | Welch p | verdict | tok/s | tokens seen |",
          "|---|---:|---:|---:|---:|---|---:|---:|"]
    for a in arms:
        delta = "" if a["verdict"] == "baseline" else f"{a['delta']:+.4f}"
        p = "" if a["p"] is None else f"{a['p']:.3f}"
        md.append(f"| {a['arm']} | {a['params']:,} | {_ms(a['bpb'])}{' (upper bound)' if a['bound'] else ''} | "
                  f"{delta} | {p} | {a['verdict']} | {a['tok_s']:,.0f} | {a['tokens'] / 1e6:.2f}M |")
    md += ["", "Verdict: Welch's two-sided t-test of the arm's per-seed BPB against the baseline's; p > 0.05 = "
           "within noise. D3PM's number is its ELBO, an upper bound on its BPB.\n"]
    if story:
        keys = list(next(iter(story.values()))["metrics"])
        md += [f"### Story metrics ({N_STORIES} stories per seed, mean over 3 seeds; definitions in "
               "budgetlm/eval/story_metrics.py; the name metrics are vacuous on lower-cased data)\n", "| arm | " + " | ".join(keys) + " |",
               "|---|" + "---:|" * len(keys)]
        for k, v in story.items():
            md.append(f"| {k} | " + " | ".join(f"{v['metrics'][m]:.3f}" for m in keys) + " |")
        md += ["", "### Samples (seed 1, temperature 0.8, top-p 0.95)\n"]
        for k, v in story.items():
            md.append(f"**{k}**\n")
            md += [f"> {s.strip().replace(chr(10), ' ')}\n" for s in v["stories"]]
    REPORT.write_text("\n".join(md) + "\n")
    rows = [{"study": "size", "setting": s["setting"], "params": s["params"], "val_bpb_mean": statistics.mean(s["bpb"]),
             "val_bpb_std": mean_std(s["bpb"])[1], "seeds": len(s["bpb"]), "tokens_seen": s["tokens"]}
            for s in summary]
    rows += [{"study": "arms", "setting": a["arm"], "params": a["params"], "val_bpb_mean": statistics.mean(a["bpb"]),
              "val_bpb_std": mean_std(a["bpb"])[1], "seeds": len(a["bpb"]), "p_vs_baseline": a["p"],
              "verdict": a["verdict"], "tokens_per_s": a["tok_s"],
              **({"story_" + m: v for m, v in story[a["key"]]["metrics"].items()} if a["key"] in story else {})}
             for a in arms]
    record("research_study", rows, budget=size_spec.budget)
    print(f"wrote {REPORT}" + (f" and {fig}" if fig else ""))
    return REPORT

"""Issue 21 on CPU: the plain recipe against Muon, each model switch alone and the modern bundle.

Every arm is a full speedrun (the same sizing, tokenizer and budget as the default run) on the
shared TinyStories text with its last 10% of stories held out (speedrun_e2e.split_stories); each
checkpoint is then scored on the held-out stories with `budgetlm eval --text`, so every arm is
measured on the same text by the same code. N seeds per arm, Welch's t-test of each arm's held-out
BPB against plain's; per-arm tokens/s. Rows go to benchmarks/results.jsonl.

  python benchmarks/recipe_arms.py [--budget 5m] [--seeds 1337 1338 1339] [--arms plain muon modern]
      [--data TEXT_FILE] [--max-mb 4] [--work DIR] [--stories N]
Finished arms are kept in WORK/rows.jsonl, so the same --work resumes a cut-short run.
A 5-minute budget x 12 arms x 3 seeds is three hours: run it on a machine nobody else is timing on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import SHARED_STORIES, print_table, record  # noqa: E402
from benchmarks.speedrun_e2e import _cli, split_stories  # noqa: E402
from budgetlm.speedrun.pipeline import speedrun  # noqa: E402
from budgetlm.sweep.report import welch_p  # noqa: E402

ALPHA = 0.05
# Overrides on top of the speedrun's own sizing; each switch alone, then the bundle (train/recipe.py).
# Every arm but modern starts from recipe plain: the default (auto) is the bundle for this shape.
ARMS: dict[str, dict] = {
    "plain": {},
    "muon": dict(optimizer="muon"),
    "qk_norm": dict(qk_norm=True),
    "relu2": dict(mlp="relu2"),
    "zero_init_proj": dict(zero_init_proj=True),
    "untied": dict(tie_embeddings=False),
    "softcap15": dict(logit_softcap=15.0),
    "value_embeds": dict(value_embeds=1),
    "embed_skip": dict(embed_skip=True),
    "window32": dict(window=32),  # half the CPU default seq len (64)
    "wsd": dict(schedule="wsd", decay_frac=0.4),
    "modern": dict(recipe="modern"),
    # the part of modern that Hugging Face's Llama class computes (so `budgetlm export` takes it):
    # no qk-norm, soft-cap, value embeddings, embedding skips; SwiGLU in place of ReLU²
    "llama_muon": dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False,
                       zero_init_proj=True, optimizer="muon", schedule="wsd", decay_frac=0.4),
}


def arm_overrides(name: str) -> dict:
    """The arm's flags: its switches on the plain recipe (modern names its own)."""
    return {"recipe": "plain", **ARMS[name]}


def run_arm(name: str, budget: str, seed: int, train_txt: Path, heldout: Path, work: Path) -> dict:
    out = work / f"{name}-s{seed}"
    overrides = arm_overrides(name)
    info, _ = speedrun(budget, str(train_txt), out_dir=str(out), seed=seed, cache_root=str(work / "data"),
                       overrides={**overrides, "progress": False}, log=lambda *_: None)
    m, t = info.extra["model"], info.extra["train"]
    row = {"arm": name, "seed": seed, "budget": budget, "params": info.params, "tokens_seen": info.tokens_seen,
           "tok_per_s": info.tokens_per_s, "steady_tok_per_s": info.extra.get("steady_tokens_per_s"),
           "own_val_bpb": info.val_bpb, "overrides": overrides,
           "shape": f"{m['n_layer']}x{m['n_embd']} v{m['vocab_size']} seq{t['seq_len']} b{t['batch_size']}"}
    ev = work / f"{name}-s{seed}-heldout.json"
    rc, _ = _cli(ROOT, ["eval", str(out), "--text", str(heldout), "--out", str(ev)], ev.with_suffix(".log"), 1800)
    if rc == 0:
        r = json.loads(ev.read_text())
        row.update(heldout_bpb=r["val_bpb"], heldout_loss=r["val_loss"], heldout_tokens=r["val_tokens"])
    else:
        row["heldout_error"] = ev.with_suffix(".log").read_text()[-500:]
    return row


def story_rows(summary: list[dict], rows: list[dict], work: Path, n: int, best: int = 2) -> list[dict]:
    """Story metrics (eval --stories N) of every seed's run of the `best` arms by held-out BPB."""
    out = []
    for arm in [r["arm"] for r in summary[:best]]:
        for r in rows:
            if r["arm"] != arm:
                continue
            run = work / f"{arm}-s{r['seed']}"
            data = json.loads((run / "summary.json").read_text())["data_dir"]
            ev = work / f"{arm}-s{r['seed']}-stories.json"
            rc = 0 if ev.exists() else _cli(ROOT, ["eval", str(run), "--data", data, "--stories", str(n), "--max-tokens",
                                                  "8192", "--out", str(ev)], ev.with_suffix(".log"), 1800)[0]
            if rc == 0:
                out.append({"arm": arm, "seed": r["seed"], **json.loads(ev.read_text())["stories"]["story_metrics"]})
    return out


def verdicts(rows: list[dict]) -> list[dict]:
    """Per arm: mean/stdev of held-out BPB and tokens/s, Welch's p against plain, and the verdict."""
    by_arm: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("heldout_bpb") is not None:
            by_arm.setdefault(r["arm"], []).append(r)
    base = [r["heldout_bpb"] for r in by_arm.get("plain", [])]
    out = []
    for arm, rs in by_arm.items():
        bpb = [r["heldout_bpb"] for r in rs]
        row = {"arm": arm, "n": len(bpb), "bpb_mean": statistics.fmean(bpb),
               "bpb_std": statistics.stdev(bpb) if len(bpb) > 1 else 0.0,
               "tok_per_s": statistics.fmean(r["tok_per_s"] for r in rs)}
        if arm != "plain" and len(bpb) > 1 and len(base) > 1:
            p = welch_p(bpb, base)
            better = row["bpb_mean"] < statistics.fmean(base)
            row.update(p_vs_plain=p, bpb_vs_plain=row["bpb_mean"] / statistics.fmean(base),
                       verdict=("better" if better else "worse") if p < ALPHA else "no difference")
        out.append(row)
    return sorted(out, key=lambda r: r["bpb_mean"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", default="5m")
    ap.add_argument("--seeds", nargs="*", type=int, default=[1337, 1338, 1339])
    ap.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--data", default=str(SHARED_STORIES),
                    help="stories text or a Gutenberg part (.txt.xz); its last 10%% of documents is held out")
    ap.add_argument("--max-mb", type=float, help="keep whole documents up to this many MB of text first")
    ap.add_argument("--work", help="folder for the split, runs and evals (default: a temporary one)")
    ap.add_argument("--stories", type=int, default=0, help="story metrics of N stories for the best two arms")
    ap.add_argument("--report-only", action="store_true", help="run nothing: verdicts over WORK/rows.jsonl as it is")
    ap.add_argument("--no-record", action="store_true", help="print only; append nothing to results.jsonl")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work or tmp).resolve()
        if not (work / "split/heldout.txt").exists():
            split_stories(a.data, str(work / "split"), max_chars=int(a.max_mb * 1e6) if a.max_mb else None)
        done_file = work / "rows.jsonl"
        done = [json.loads(line) for line in done_file.open()] if done_file.exists() else []
        rows = [r for r in done if r["arm"] in a.arms and r["seed"] in a.seeds]
        for seed in a.seeds:  # seeds outermost: a cut-short run still has every arm for the first seeds
            for name in a.arms:
                if a.report_only or any(r["arm"] == name and r["seed"] == seed for r in rows):
                    continue
                rows.append(run_arm(name, a.budget, seed, work / "split/train.txt", work / "split/heldout.txt", work))
                with done_file.open("a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
                print(json.dumps(rows[-1]), flush=True)
        summary = verdicts(rows)
        print_table(summary, ["arm", "n", "bpb_mean", "bpb_std", "bpb_vs_plain", "p_vs_plain", "verdict", "tok_per_s"])
        stories = story_rows(summary, rows, work, a.stories) if a.stories else []
        if stories:
            print_table(stories, ["arm", "seed", *[k for k in stories[0] if k not in ("arm", "seed")]])
    if not a.no_record:
        # a row that carries a date is in results.jsonl already (WORK/rows.jsonl seeded from it)
        record("recipe_arms", [r for r in rows if "date" not in r], budget=a.budget, data=Path(a.data).name)
        record("recipe_arms_summary", summary, budget=a.budget, data=Path(a.data).name, seeds=a.seeds)
        if stories:
            record("recipe_arms_stories", stories, budget=a.budget, data=Path(a.data).name)


if __name__ == "__main__":
    main()

"""Issue-3 evidence on this CPU: the n-gram alone (orders 2-5), and at a 5-minute budget over
several seeds: plain training vs n-gram distillation vs plain + shallow fusion — BPB and the
story-quality metrics, with sample stories. Fusion reuses the plain arm's checkpoint (fusion
is inference-only), so plain and plain+fusion differ only in the head mix.

Usage: python benchmarks/ngram_distill_fusion.py [--budget 5m] [--seeds 1 2 3] [--stories 12]
Writes rows to benchmarks/results.jsonl and a report to benchmarks/ngram_distill_fusion.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import SHARED_STORIES, commit, machine, record  # noqa: E402
from budgetlm.data.prepare import load_meta, prepare  # noqa: E402
from budgetlm.data.shards import load_split  # noqa: E402
from budgetlm.eval.perplexity import evaluate  # noqa: E402
from budgetlm.eval.story_eval import story_eval  # noqa: E402
from budgetlm.sample.fusion import Fuser  # noqa: E402
from budgetlm.models.ngram_build import build_and_score  # noqa: E402
from budgetlm.report.summary import load_model  # noqa: E402
from budgetlm.speedrun.pipeline import choose_setup, speedrun  # noqa: E402

REPORT = Path(__file__).resolve().parent / "ngram_distill_fusion.md"


def arm_row(name: str, seed: int, run_dir: Path, data_dir: Path, n_stories: int, fuse: str | None) -> dict:
    model, tok, _ = load_model(run_dir, "cpu")
    val = load_split(data_dir, "val")
    seq = model.cfg.block_size
    hook, fn = None, None
    if fuse:
        fuser = Fuser.build(model, data_dir, fuse, tok)
        hook, fn = fuser.logits_hook, fuser.logits_fn
    ev = evaluate(model, val, tok.token_bytes(), seq, 16, next(model.parameters()).device, logits_fn=fn)
    st = story_eval(model, tok, n_stories, seed=seed, lowercase_prompts=bool(load_meta(data_dir).get("lowercase")),
                    logits_hook=hook)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"arm": name, "seed": seed, "val_bpb": ev["val_bpb"], "val_loss": ev["val_loss"], "val_ppl": ev["val_ppl"],
            "tokens_seen": summary["tokens_seen"], "tok_per_s": summary["tokens_per_s"], "fuse": fuse,
            **{f"story_{k}": v for k, v in st["story_metrics"].items()},
            "stories": [s["text"] for s in st["stories"][:3]]}


def mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs) if len(xs) > 1 else 0:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", default="5m")
    ap.add_argument("--seeds", nargs="*", type=int, default=[1, 2, 3])
    ap.add_argument("--stories", type=int, default=12)
    ap.add_argument("--fuse", default="ngram:0.2,cache:0.05,knn:0.05")
    ap.add_argument("--teacher", default="ngram:4")
    ap.add_argument("--distill-steps", type=int, default=200)
    ap.add_argument("--distill-alpha", type=float, default=0.5)
    ap.add_argument("--data", default=str(SHARED_STORIES))
    args = ap.parse_args()
    if not Path(args.data).is_file():
        sys.exit(f"shared TinyStories text not found at {args.data}; nothing to benchmark")
    setup = choose_setup(args.budget, "cpu")
    work = Path(tempfile.mkdtemp(prefix="ndf-"))
    data_dir = work / "data"
    prepare(args.data, setup.tokenizer, data_dir, log=lambda *_: None)

    ngram_rows = []
    for order in (2, 3, 4, 5):
        _, res = build_and_score(data_dir, order)
        ngram_rows.append(res)
        print(f"n-gram order {order}: build {res['build_seconds']:.2f}s, val bpb {res['val_bpb']:.4f}", flush=True)
    record("ngram_orders", ngram_rows, tokenizer=setup.tokenizer)

    rows = []
    distill = {"teacher": args.teacher, "distill_steps": args.distill_steps, "distill_alpha": args.distill_alpha}
    for seed in args.seeds:
        for name, extra in (("plain", {}), ("distill", distill)):
            run = work / f"{name}-{seed}"
            speedrun(args.budget, args.data, setup.tokenizer, str(run), "cpu", cache_root=str(work / "cache"),
                     seed=seed, n_samples=0, overrides={**extra, "progress": False}, log=lambda *_: None)
            rows.append(arm_row(name, seed, run, data_dir, args.stories, None))
            print(f"{name} seed {seed}: bpb {rows[-1]['val_bpb']:.4f}", flush=True)
            if name == "plain":
                rows.append(arm_row("plain+fusion", seed, run, data_dir, args.stories, args.fuse))
                print(f"plain+fusion seed {seed}: bpb {rows[-1]['val_bpb']:.4f}", flush=True)
    record("ngram_distill_fusion", [{k: v for k, v in r.items() if k != "stories"} for r in rows],
           budget=args.budget, tokenizer=setup.tokenizer)

    metrics = ["val_bpb", "story_rep_ngram_3", "story_doubled_tokens", "story_distinct_2", "story_ends_properly",
               "story_name_consistency", "story_new_names_midstory", "story_length_words"]
    lines = [f"# n-gram, distillation and fusion on the {args.budget} CPU speedrun", "",
             f"commit {commit()}, machine {machine()}, data: {args.data} (last 10% of stories held out), "
             f"tokenizer {setup.tokenizer}, seeds {args.seeds}, {args.stories} stories per run, fusion `{args.fuse}`, "
             f"distillation {distill}.", "", "## n-gram alone", "", "| order | build s | val loss | ppl | bpb |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['order']} | {r['build_seconds']:.2f} | {r['val_loss']:.4f} | {r['val_ppl']:.2f} | {r['val_bpb']:.4f} |"
              for r in ngram_rows]
    lines += ["", "## Arms (mean ± std over seeds)", "", "| arm | " + " | ".join(metrics) + " |",
              "|---" * (len(metrics) + 1) + "|"]
    for arm in ("plain", "distill", "plain+fusion"):
        rs = [r for r in rows if r["arm"] == arm]
        lines.append(f"| {arm} | " + " | ".join(mean_std([r[m] for r in rs]) for m in metrics) + " |")
    lines += ["", "## Sample stories (first seed)", ""]
    for arm in ("plain", "distill", "plain+fusion"):
        r = next(r for r in rows if r["arm"] == arm)
        lines += [f"### {arm}", ""] + [f"> {s.replace(chr(10), ' ')}\n" for s in r["stories"]]
    REPORT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""The 5-minute speedrun on this machine's CPU, on the shared TinyStories text (last 10% of
stories held out), against the plain nanoGPT-style anchor run in the same invocation.

Each arm is a full `budgetlm speedrun` (data prep, tokenizer, training, final eval, samples,
all inside the budget). Rows go to benchmarks/results.jsonl; a table prints at the end.
Usage: python benchmarks/speedrun_cpu.py [--budget 5m] [--arms anchor tuned ...] [--seeds 1337]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import SHARED_STORIES, print_table, record  # noqa: E402
from budgetlm.speedrun.pipeline import speedrun  # noqa: E402

# The anchor: nanoGPT-style 1.4M params, 4096 BPE, seq 256, batch 32, AdamW lr 2e-3, cosine.
ARMS = {
    "anchor": dict(tokenizer="bpe:4096", n_layer=4, n_head=4, n_embd=128, seq_len=256, batch_size=32, lr=2e-3),
    # budgetlm's CPU default (speedrun.choose_setup) as it stands
    "default": dict(),
    "v2048-s128-4x128": dict(tokenizer="bpe:2048", n_layer=4, n_head=4, n_embd=128, seq_len=128, batch_size=32,
                             lr=3e-3),
    "v1024-s128-4x128": dict(tokenizer="bpe:1024", n_layer=4, n_head=4, n_embd=128, seq_len=128, batch_size=32,
                             lr=3e-3),
    "v1024-s128-4x128-lr5e-3": dict(tokenizer="bpe:1024", n_layer=4, n_head=4, n_embd=128, seq_len=128,
                                    batch_size=32, lr=5e-3),
    "v1024-s64-b64-4x128": dict(tokenizer="bpe:1024", n_layer=4, n_head=4, n_embd=128, seq_len=64, batch_size=64,
                                lr=3e-3),
    "v2048-s128-3x128": dict(tokenizer="bpe:2048", n_layer=3, n_head=4, n_embd=128, seq_len=128, batch_size=32,
                             lr=3e-3),
    "v2048-s128-4x128-distill": dict(tokenizer="bpe:2048", n_layer=4, n_head=4, n_embd=128, seq_len=128,
                                     batch_size=32, lr=3e-3, teacher="ngram:4", distill_steps=200,
                                     distill_alpha=0.5),
}


def run_arm(name: str, budget: str, seed: int, data: str, extra: dict | None = None) -> dict:
    arm = dict(ARMS[name], **(extra or {}))
    tokenizer = arm.pop("tokenizer", None)
    with tempfile.TemporaryDirectory() as tmp:
        info, samples = speedrun(budget, data, tokenizer, out_dir=f"{tmp}/run", seed=seed, cache_root=f"{tmp}/data",
                                 overrides={**arm, "progress": False}, log=lambda *_: None)
    m = info.extra["model"]
    return {"arm": name, "seed": seed, "budget": budget, "params": info.params, "tokens_seen": info.tokens_seen,
            "tok_per_s": info.tokens_per_s, "val_loss": info.val_loss, "val_ppl": info.val_ppl,
            "val_bpb": info.val_bpb, "epochs": info.extra["epochs"], "total_s": info.extra["total_seconds"],
            "prep_s": info.extra["prep_seconds"], "eval_s": info.extra["eval_seconds"],
            "shape": f"{m['n_layer']}x{m['n_embd']} v{m['vocab_size']} seq{info.extra['train']['seq_len']} "
                     f"b{info.extra['train']['batch_size']} lr{info.extra['train']['lr']}",
            "sample": samples[0].text[:400] if samples else ""}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", default="5m")
    ap.add_argument("--arms", nargs="*", default=["anchor", "default"])
    ap.add_argument("--seeds", nargs="*", type=int, default=[1337])
    ap.add_argument("--data", default=str(SHARED_STORIES))
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    if not Path(args.data).is_file():
        sys.exit(f"shared TinyStories text not found at {args.data}; nothing to benchmark")
    rows = []
    for seed in args.seeds:
        for name in args.arms:
            row = run_arm(name, args.budget, seed, args.data)
            rows.append(row)
            print(f"{name} seed {seed}: {row['val_bpb']:.4f} bpb, {row['tok_per_s']:,.0f} tok/s, {row['shape']}",
                  flush=True)
            if not args.no_record:
                record("speedrun_cpu", [row])
    anchor = [r for r in rows if r["arm"] == "anchor"]
    for r in rows:
        if anchor:
            r["tok_s_vs_anchor"] = r["tok_per_s"] / anchor[0]["tok_per_s"]
    print_table(rows, ["arm", "seed", "params", "tokens_seen", "tok_per_s", "tok_s_vs_anchor", "val_loss",
                       "val_ppl", "val_bpb", "epochs", "total_s"])


if __name__ == "__main__":
    main()

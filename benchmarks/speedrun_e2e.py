"""The main job end to end, as a user runs it: `budgetlm speedrun --budget B --data SRC` in a
fresh process, then its checkpoint scored on a held-out text file with `budgetlm eval --text`.

Reports what the user waits for and gets: seconds to the first optimizer step, compile time,
data-wait share of training, training tokens/s, the model the budget bought, val BPB on the
held-out text, samples. `--baseline PATH` runs another checkout's speedrun (e.g. the previous
commit's, in a git worktree) on the same data and budget in the same invocation, scored on the
same held-out text with this checkout's eval, so the ratio is a same-run comparison.

  python benchmarks/speedrun_e2e.py --data TRAIN.txt --heldout HELDOUT.txt --budgets 30s 5m \
      [--baseline /path/to/old/checkout] [--label tinystories]
  python benchmarks/speedrun_e2e.py --split-stories ../shared/data/tinystories-lower/stories.txt OUTDIR
      (writes OUTDIR/train.txt and OUTDIR/heldout.txt: the last 10% of stories held out)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import print_table, record  # noqa: E402


def split_stories(path: str, out: str, held_frac: float = 0.1, max_chars: int | None = None) -> None:
    """Hold out the last `held_frac` of the documents (stories, or whole books where the file
    separates them with <|endoftext|>), after keeping whole documents up to `max_chars`."""
    from budgetlm.data.sources import EOT, open_bytes, split_text
    with open_bytes(Path(path)) as f:  # .xz Gutenberg parts are read as a stream
        text = f.read().decode("utf-8")
    docs = split_text(text)
    if max_chars:
        kept, n = [], 0
        for d in docs:
            if n + len(d) > max_chars and kept:
                break
            kept.append(d)
            n += len(d)
        docs = kept
    cut = int(len(docs) * (1 - held_frac))
    if cut in (0, len(docs)):
        raise SystemExit(f"{path}: {len(docs)} documents cannot be split {1 - held_frac:.0%}/{held_frac:.0%}")
    # Stories keep the shared file's layout (one per line block); books keep their separator.
    sep = f"\n{EOT}\n" if EOT in text else "\n"
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, "train.txt").write_text(sep.join(docs[:cut]) + "\n", encoding="utf-8")
    Path(out, "heldout.txt").write_text(sep.join(docs[cut:]) + "\n", encoding="utf-8")
    print(f"{cut} train / {len(docs) - cut} held-out documents of {path} -> {out}")


def _cli(tree: Path, args: list[str], log: Path, timeout: float) -> tuple[int, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, "-m", "budgetlm", *args], cwd=tree, env=env, stdout=f,
                            stderr=subprocess.STDOUT, timeout=timeout).returncode
    return rc, time.perf_counter() - t0


def run_one(tree: Path, arm: str, budget: str, data: str, heldout: str | None, work: Path,
            extra: list[str]) -> dict:
    out = work / f"{arm}-{budget}"
    rc, wall = _cli(tree, ["speedrun", "--budget", budget, "--data", str(Path(data).resolve()), "--out", str(out),
                           "--no-progress", *extra], out.with_suffix(".log"), timeout=3 * 3600)
    row: dict = {"arm": arm, "budget": budget, "data": Path(data).name, "rc": rc, "wall_s": wall}
    if rc != 0:
        row["error"] = out.with_suffix(".log").read_text()[-800:]
        return row
    s = json.loads((out / "summary.json").read_text())
    m = s.get("model", {})
    train_s = s.get("train_seconds") or 0.0
    row.update({"params": s.get("params"), "shape": f"{m.get('n_layer')}x{m.get('n_embd')} v{m.get('vocab_size')}",
                "tokens_seen": s.get("tokens_seen"), "tok_per_s": s.get("tokens_per_s"),
                "train_s": train_s, "first_step_s": s.get("first_step_s"), "compile_s": s.get("compile_s"),
                "data_wait_s": s.get("data_wait_s"),
                "data_wait_share": (s["data_wait_s"] / train_s) if s.get("data_wait_s") is not None and train_s else None,
                "own_val_bpb": s.get("val_bpb"), "total_s": s.get("total_seconds") or s.get("elapsed"),
                "sizing": s.get("sizing", {}).get("why") if isinstance(s.get("sizing"), dict) else s.get("sizing")})
    if heldout:  # this checkout's eval on the common held-out text, for every arm alike
        ev = work / f"{arm}-{budget}-heldout.json"
        rc2, _ = _cli(ROOT, ["eval", str(out), "--text", str(Path(heldout).resolve()), "--out", str(ev)],
                      ev.with_suffix(".log"), timeout=1800)
        if rc2 == 0:
            r = json.loads(ev.read_text())
            row.update({"heldout_bpb": r["val_bpb"], "heldout_loss": r["val_loss"], "heldout_tokens": r["val_tokens"]})
        else:
            row["heldout_error"] = ev.with_suffix(".log").read_text()[-500:]
    samples = out / "samples.json"
    if samples.is_file():
        row["sample"] = str(json.loads(samples.read_text())[0])[:300]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split-stories", nargs=2, metavar=("STORIES", "OUTDIR"))
    ap.add_argument("--data")
    ap.add_argument("--heldout", help="text file scored with `budgetlm eval --text` for every arm")
    ap.add_argument("--budgets", nargs="+", default=["5m"])
    ap.add_argument("--baseline", help="another checkout whose speedrun runs on the same data and budgets")
    ap.add_argument("--baseline-budgets", nargs="*", help="budgets for the baseline (default: --budgets)")
    ap.add_argument("--label", default="", help="a name for the data in the results rows")
    ap.add_argument("--work", default="runs/e2e")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more speedrun flags (last)")
    a = ap.parse_args()
    if a.split_stories:
        split_stories(*a.split_stories)
        return
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for budget in a.budgets:
        rows.append(run_one(ROOT, "budgetlm", budget, a.data, a.heldout, work, a.extra))
        print(json.dumps(rows[-1]), flush=True)
    if a.baseline:
        for budget in a.baseline_budgets or a.budgets:
            rows.append(run_one(Path(a.baseline).resolve(), "baseline", budget, a.data, a.heldout, work, []))
            print(json.dumps(rows[-1]), flush=True)
    for r in rows:
        base = next((b for b in rows if b["arm"] == "baseline" and b["budget"] == r["budget"]), None)
        if base and r.get("heldout_bpb") and base.get("heldout_bpb"):
            r["bpb_vs_baseline"] = r["heldout_bpb"] / base["heldout_bpb"]
    print_table(rows, ["arm", "budget", "params", "shape", "tok_per_s", "first_step_s", "compile_s",
                       "data_wait_share", "own_val_bpb", "heldout_bpb", "bpb_vs_baseline", "total_s"])
    record("speedrun_e2e", rows, label=a.label, baseline=a.baseline and Path(a.baseline).name)


if __name__ == "__main__":
    main()

"""What a finished run shows a person: sample stories, a summary table, a loss-curve PNG —
and the same numbers in machine-readable files beside them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from budgetlm.config import RunInfo
from budgetlm.sample.generate import Sample, sample_text
from budgetlm.models import build_model
from budgetlm.train.checkpoint import check_finite, load_checkpoint, load_weights


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, tokenizer, checkpoint folder) from a run or checkpoint folder.
    A run's newest intact checkpoint is used; weights holding NaN/inf (a diverged run) are refused."""
    from budgetlm.device import pick_device
    ckpt, cfg, weights, tok, _ = load_checkpoint(path, with_state=False)
    check_finite(weights, str(ckpt))
    model = build_model(cfg)
    load_weights(model, weights, str(ckpt))
    dev = pick_device(device) if isinstance(device, str) else device
    return model.to(dev).eval(), tok, ckpt


def plot_losses(metrics_file: str | Path, png: str | Path) -> Path | None:
    """Train loss (and val loss where measured) against tokens seen."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    train = [(r["tokens"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train), label="train loss", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return Path(png)


def summary_table(info: RunInfo, title: str = "budgetlm run") -> str:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    rows = [("params", f"{info.params:,}"), ("steps", f"{info.steps:,}"), ("tokens seen", f"{info.tokens_seen:,}"),
            ("epochs", f"{info.extra.get('epochs', 0):.2f}"), ("tokens/s", f"{info.tokens_per_s:,.0f}"),
            ("train seconds", f"{info.train_seconds:.1f}"), ("val loss", f"{info.val_loss:.4f}"),
            ("val perplexity", f"{info.val_ppl:.3f}"), ("val bits/byte", f"{info.val_bpb:.4f}")]
    if "data_wait_s" in info.extra:
        rows.insert(6, ("data wait", f"{info.extra['data_wait_s']:.1f}s ({info.extra.get('data_wait_frac', 0):.1%})"))
    for k, v in rows:
        t.add_row(k, v)
    console = Console(file=io.StringIO(), width=60)
    console.print(t)
    return console.file.getvalue()


def finish_run(out_dir: str | Path, info: RunInfo, prompts: tuple[str, ...], sample_tokens: int, seed: int,
               log=print) -> list[Sample]:
    """Samples, summary table and loss curve for a trained run; writes samples.json and loss.png."""
    out = Path(out_dir)
    device = info.extra.get("device", "cpu")
    model, tok, _ = load_model(out, device)
    samples = [sample_text(model, tok, p, sample_tokens, temperature=0.8, top_p=0.95, seed=seed + i)
               for i, p in enumerate(prompts)]
    for i, s in enumerate(samples, 1):
        log(f"\n--- sample {i} ({len(s.tokens)} tokens, {s.tokens_per_s:,.0f} tok/s) ---\n{s.text}")
    gen_tps = sum(len(s.tokens) for s in samples) / max(sum(s.seconds for s in samples), 1e-9)
    info.extra["generation_tokens_per_s"] = gen_tps
    (out / "samples.json").write_text(json.dumps(
        [{"prompt": p, "text": s.text, "tokens": len(s.tokens), "tokens_per_s": s.tokens_per_s}
         for p, s in zip(prompts, samples)], indent=2) + "\n")
    png = plot_losses(out / "metrics.jsonl", out / "loss.png")
    log("\n" + summary_table(info))
    log(f"files: {out / 'summary.json'}, {out / 'metrics.jsonl'}, {out / 'samples.json'}"
        + (f", {png}" if png else ""))
    return samples

"""HellaSwag (Zellers et al. 2019) scored the way llm.c and build-nanogpt score it, so our
numbers sit on the same axis as their GPT-2 reproductions.

Each item is a context and four endings. A row is `ctx + " " + ending` (the ending tokenized
with its leading space); the model's per-token cross-entropy over the ending tokens only is
summed (acc) or averaged (acc_norm, the number llm.c and build-nanogpt report), and the
lowest-loss ending is the prediction. Items are strided over ranks; counts are all-reduced.

Files: the original hellaswag_val.jsonl (downloaded once, the default), or a local copy named by
--hellaswag-file / BUDGETLM_HELLASWAG_FILE, plain or .xz/.gz-compressed, in the original form or
the converted one ({ind, activity_label, ctx, label, endings}, no ctx_a/ctx_b): only ctx, endings
and label are read.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from budgetlm.errors import BudgetLMError

HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
FILE_NAME = "hellaswag_val.jsonl"
FILE_ENV = "BUDGETLM_HELLASWAG_FILE"  # a local validation file instead of the download
VAL_ITEMS = 10042

# acc_norm references (fractions), zero-shot, on the 10,042-item validation split:
# - GPT-2 (OpenAI checkpoints) as measured by build-nanogpt's hellaswag.py / play.ipynb
#   (https://github.com/karpathy/build-nanogpt) and llm.c's dev/vislog.ipynb: 124M 0.294463,
#   350M 0.375224, 774M 0.431986, 1558M 0.488946. llm.c's own 124M reproduction reaches ~0.29-0.30.
# - GPT-3 paper (Brown et al. 2020, Table 3.3 / appendix H, HellaSwag zero-shot): Small 125M 0.337,
#   Medium 350M 0.436, Large 760M 0.510, XL 1.3B 0.547.
REFERENCES: dict[str, float] = {
    "GPT-2 124M": 0.294463,
    "GPT-2 350M": 0.375224,
    "GPT-2 774M": 0.431986,
    "GPT-2 1.5B": 0.488946,
    "GPT-3 125M": 0.337,
    "GPT-3 350M": 0.436,
    "GPT-3 760M": 0.510,
    "GPT-3 1.3B": 0.547,
}
# Validation loss of OpenAI's GPT-2 124M on the FineWeb-Edu val shard with the GPT-2 tokenizer
# (build-nanogpt play.ipynb `val_loss_baseline`); only comparable on that data and tokenizer.
GPT2_124M_FINEWEB_EDU_VAL_LOSS = 3.2924


def default_cache_dir() -> Path:
    return Path(os.environ.get("BUDGETLM_CACHE", Path.home() / ".cache" / "budgetlm")) / "hellaswag"


def download(url: str = HELLASWAG_URL, cache_dir: str | Path | None = None, timeout: float = 30.0) -> Path:
    """The validation file, from the cache or fetched once (atomically, so a cut download never
    looks complete)."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    path = cache / FILE_NAME
    if path.is_file() and path.stat().st_size > 0:
        return path
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise BudgetLMError(f"HellaSwag: could not download {url} ({reason}); put {FILE_NAME} in {cache} "
                            f"(or set BUDGETLM_CACHE) to run offline") from None
    os.replace(tmp, path)
    return path


def locate(path: str | Path | None = None) -> Path:
    """The file to score: `path`, else $BUDGETLM_HELLASWAG_FILE, else the cached or downloaded original."""
    local = path or os.environ.get(FILE_ENV)
    if not local:
        return download()
    local = Path(local)
    if not local.is_file():
        source = "--hellaswag-file" if path else FILE_ENV
        raise BudgetLMError(f"{source} {local}: file not found")
    return local


def _open_text(path: Path):
    """The file as text, through lzma/gzip when its name ends in .xz/.gz."""
    import gzip
    import lzma
    opener = {".xz": lzma.open, ".gz": gzip.open}.get(path.suffix, open)
    return opener(path, "rt", encoding="utf-8")


def load_examples(path: str | Path, limit: int = 0) -> list[dict[str, Any]]:
    """Items with ctx, endings (4) and label; the first `limit` when limit > 0."""
    import gzip
    import lzma
    try:
        with _open_text(Path(path)) as f:
            return _read_items(f, path, limit)
    except (lzma.LZMAError, gzip.BadGzipFile, EOFError, UnicodeDecodeError) as e:
        raise BudgetLMError(f"{path}: cannot be read as HellaSwag jsonl ({e})") from None
    except FileNotFoundError:
        raise BudgetLMError(f"{path}: file not found") from None


def _read_items(lines, path: str | Path, limit: int) -> list[dict[str, Any]]:
    out = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            ex = json.loads(line)
            ok = isinstance(ex["ctx"], str) and len(ex["endings"]) == 4 and 0 <= int(ex["label"]) < 4
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise BudgetLMError(f"{path}:{lineno}: not a HellaSwag item (needs ctx, 4 endings, label 0-3)")
        out.append(ex)
        if limit and len(out) >= limit:
            break
    return out


def render_example(example: dict[str, Any], tokenizer: Any, max_len: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(tokens (4, L), completion mask (4, L), label), right-padded with zeros as build-nanogpt does.
    Rows longer than max_len keep their last max_len tokens (the ending is what gets scored)."""
    ctx = tokenizer.encode(example["ctx"])
    rows, masks = [], []
    for ending in example["endings"]:
        end = tokenizer.encode(" " + ending)
        row, mask = ctx + end, [0] * len(ctx) + [1] * len(end)
        if max_len and len(row) > max_len:
            row, mask = row[-max_len:], mask[-max_len:]
        rows.append(row)
        masks.append(mask)
    width = max(len(r) for r in rows)
    tokens = torch.zeros((4, width), dtype=torch.long)
    mask = torch.zeros((4, width), dtype=torch.long)
    for i, (r, m) in enumerate(zip(rows, masks)):
        tokens[i, :len(r)] = torch.tensor(r)
        mask[i, :len(m)] = torch.tensor(m)
    return tokens, mask, int(example["label"])


@torch.no_grad()
def score_rows(model: torch.nn.Module, tokens: torch.Tensor, mask: torch.Tensor, autocast=None
               ) -> tuple[int, int]:
    """(prediction by summed loss, prediction by mean loss) over the completion tokens."""
    with autocast or nullcontext():
        out = model(tokens)
    logits = (out[0] if isinstance(out, tuple) else out).float()
    losses = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1),
                             reduction="none").view(tokens.size(0), -1)
    m = mask[:, 1:].to(losses.dtype)  # the loss at t predicts token t+1
    total = (losses * m).sum(1)
    mean = total / m.sum(1).clamp_min(1)
    return int(total.argmin()), int(mean.argmin())


def evaluate_hellaswag(model: torch.nn.Module, tokenizer: Any, examples: Sequence[dict[str, Any]],
                       device: torch.device | str = "cpu", rank: int = 0, world: int = 1, autocast=None,
                       reduce: Callable[[list[float]], list[float]] | None = None) -> dict[str, float]:
    """acc, acc_norm and n over `examples`; rank r scores items r, r+world, ...

    Every rank runs the same number of forward passes (a rank past the end scores item 0 and
    does not count it), because FSDP-sharded models need all ranks in each forward.
    `reduce` sums [n, correct, correct_norm] over ranks (default: torch.distributed all_reduce).
    """
    was_training = model.training
    model.eval()
    max_len = getattr(getattr(model, "cfg", None), "block_size", None)
    n = correct = correct_norm = 0
    rounds = (len(examples) + world - 1) // world
    for k in range(rounds):
        i = k * world + rank
        counted = i < len(examples)
        tokens, mask, label = render_example(examples[i if counted else 0], tokenizer, max_len)
        pred, pred_norm = score_rows(model, tokens.to(device), mask.to(device), autocast)
        if counted:
            n += 1
            correct += int(pred == label)
            correct_norm += int(pred_norm == label)
    model.train(was_training)
    sums = [float(n), float(correct), float(correct_norm)]
    if world > 1:
        if reduce is None:
            t = torch.tensor(sums, dtype=torch.float64, device=device)
            torch.distributed.all_reduce(t)
            sums = t.tolist()
        else:
            sums = reduce(sums)
    n, correct, correct_norm = (int(round(v)) for v in sums)
    return {"acc": correct / max(n, 1), "acc_norm": correct_norm / max(n, 1), "n": n}


def score_file(model: torch.nn.Module, tokenizer: Any, path: str | Path | None = None, limit: int = 0,
               device: torch.device | str = "cpu", autocast=None) -> dict[str, Any]:
    """acc, acc_norm and n on the first `limit` items (0 = all) of the file locate(path) finds."""
    file = locate(path)
    result = evaluate_hellaswag(model, tokenizer, load_examples(file, limit), device, autocast=autocast)
    return {**result, "file": str(file)}

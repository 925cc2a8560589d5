"""FineWeb-Edu (HuggingFaceFW/fineweb-edu, `sample/10BT` by default) -> GPT-2 token shards laid
out exactly as llm.c's dev/data/fineweb.py writes them, so llm.c and budgetlm read each other's data.

Shard 0 is validation (`fineweb_val_000000.bin`), then `fineweb_train_000001.bin`, ... of
`shard_tokens` tokens each (100M in llm.c); every document starts with <|endoftext|>, and documents
run on across shard boundaries as in llm.c. Parquet files are fetched one at a time (the next one
downloads while the current one is tokenized), so a capped run reads only the files it needs.
Tokenizing is spread over worker processes, in order, with a bounded read-ahead: Pool.imap would
read the whole dataset into its task queue while the workers lag behind.
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from budgetlm.data.shards import ShardWriter, llmc_names
from budgetlm.data.sources import hub_reachable
from budgetlm.data.tokenizers import TOKENIZER_FILE, load_gpt2
from budgetlm.errors import BudgetLMError

REPO = "HuggingFaceFW/fineweb-edu"
SAMPLES = ("10BT", "100BT", "350BT")
CHUNK_DOCS = 256  # documents per task sent to a worker


def list_hub_files(sample: str = "10BT", repo: str = REPO) -> list[str]:
    """The sample's parquet files in the dataset repo, in order (e.g. sample/10BT/000_00000.parquet)."""
    if not hub_reachable():
        raise BudgetLMError(f"--data fineweb-edu: the Hugging Face hub cannot be reached (offline, or "
                            f"HF_HUB_OFFLINE=1); {repo} sample/{sample} must be downloaded")
    from huggingface_hub import HfApi
    try:
        files = HfApi().list_repo_files(repo, repo_type="dataset")
    except Exception as e:
        raise BudgetLMError(f"--data fineweb-edu: could not list {repo} on the hub ({type(e).__name__})") from None
    chosen = sorted(f for f in files if f.startswith(f"sample/{sample}/") and f.endswith(".parquet"))
    if not chosen:
        raise BudgetLMError(f"--sample {sample}: no parquet files under sample/{sample}/ in {repo} "
                            f"(known samples: {', '.join(SAMPLES)})")
    return chosen


def fetch_hub_file(name: str, repo: str = REPO) -> Path:
    """One parquet file, from the hub cache or downloaded into it."""
    from huggingface_hub import hf_hub_download
    try:
        return Path(hf_hub_download(repo, name, repo_type="dataset"))
    except Exception as e:
        raise BudgetLMError(f"--data fineweb-edu: could not download {name} ({type(e).__name__})") from None


def iter_texts(path: Path) -> Iterator[str]:
    """The `text` column as stored: unlike sources.iter_parquet no stripping, so the tokens are
    exactly the ones llm.c's fineweb.py writes for the same document."""
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise BudgetLMError(f"{path}: not a readable parquet file ({e})") from None
    if "text" not in pf.schema_arrow.names:
        raise BudgetLMError(f"{path}: parquet has no 'text' column (columns: {', '.join(pf.schema_arrow.names)})")
    for batch in pf.iter_batches(columns=["text"], batch_size=1024):
        yield from (t for t in batch.column(0).to_pylist() if t is not None)


def iter_documents(names: list[str], fetch: Callable[[str], Path], prefetch: bool = True) -> Iterator[str]:
    """Documents file by file; with prefetch the next file downloads while this one is read
    (off for capped runs, which should not start a download they may never use)."""
    if not prefetch:
        for name in names:
            yield from iter_texts(fetch(name))
        return
    with ThreadPoolExecutor(1) as ex:
        nxt = ex.submit(fetch, names[0]) if names else None
        for i in range(len(names)):
            path = nxt.result()
            if i + 1 < len(names):
                nxt = ex.submit(fetch, names[i + 1])
            yield from iter_texts(path)


_TOKENIZER = None


def _init_worker() -> None:
    global _TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    _TOKENIZER = load_gpt2()


def _encode_chunk(docs: list[str]) -> np.ndarray:
    """[eot, doc tokens..., eot, doc tokens...] as uint16 (GPT-2's 50,257 ids fit)."""
    tok = _TOKENIZER
    out: list[int] = []
    for ids in tok.encode_batch(docs):
        out.append(tok.eot_id)
        out.extend(ids)
    return np.asarray(out, dtype=np.uint16)


def _chunks(docs: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for d in docs:
        chunk.append(d)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def encode_stream(docs: Iterable[str], workers: int) -> Iterator[np.ndarray]:
    """Token arrays in document order; `workers` processes (spawned) when > 1, else this process."""
    if workers <= 1:
        _init_worker()
        for chunk in _chunks(docs, CHUNK_DOCS):
            yield _encode_chunk(chunk)
        return
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        pending: collections.deque = collections.deque()
        for chunk in _chunks(docs, CHUNK_DOCS):
            pending.append(pool.apply_async(_encode_chunk, (chunk,)))
            if len(pending) >= 4 * workers:  # bounded read-ahead keeps memory flat
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def prepare_fineweb(out_dir: str | Path, sample: str = "10BT", shard_tokens: int = 100_000_000,
                    max_tokens: int | None = None, val_tokens: int | None = None, workers: int | None = None,
                    repo: str = REPO, prefix: str = "fineweb",
                    list_files: Callable[[str, str], list[str]] | None = None,
                    fetch: Callable[[str, str], Path] | None = None, log: Callable[[str], None] = print) -> dict:
    """Tokenize the sample into llm.c shards in out_dir; returns (and writes) meta.json.

    max_tokens caps the train tokens (None = the whole sample). val_tokens (default: one shard, as
    llm.c; with a cap, a tenth of it, at least 100k) fills shard 0. list_files(sample, repo) and
    fetch(name, repo) default to the hub (this module's list_hub_files / fetch_hub_file, looked up
    at call time); tests and mirrors pass their own to serve local parquet files.
    """
    list_files = list_files or list_hub_files
    fetch = fetch or fetch_hub_file
    t0 = time.perf_counter()
    if shard_tokens < 1 or (max_tokens is not None and max_tokens < 1):
        raise BudgetLMError("--shard-tokens and --max-tokens must be positive")
    if val_tokens is None:
        val_tokens = shard_tokens if max_tokens is None else min(shard_tokens, max(100_000, max_tokens // 10))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = load_gpt2()
    names = list_files(sample, repo)
    workers = workers if workers is not None else max(1, (os.cpu_count() or 2) - 1)
    writer = ShardWriter(out, tok.vocab_size, shard_tokens, name=llmc_names(prefix), first_tokens=val_tokens, min_shards=0)
    want = None if max_tokens is None else val_tokens + max_tokens
    total = docs = 0
    stream = encode_stream(iter_documents(names, lambda n: fetch(n, repo), prefetch=max_tokens is None), workers)
    for arr in stream:
        if want is not None:
            arr = arr[: want - total]
        docs += int((arr == tok.eot_id).sum())
        writer.add(arr)
        total += arr.size
        if want is not None and total >= want:
            break
    stream.close()  # stops the worker pool now, not at garbage collection
    writer.close()
    if total <= val_tokens:
        raise BudgetLMError(f"--data fineweb-edu: only {total:,} tokens read, not enough for the "
                            f"{val_tokens:,}-token validation shard and any training tokens")
    tok.save(out / TOKENIZER_FILE)
    meta = {"source": f"fineweb-edu:{sample}", "tokenizer": tok.spec, "vocab_size": tok.vocab_size,
            "eot_id": tok.eot_id, "train_tokens": total - val_tokens, "val_tokens": val_tokens,
            "train_shards": len(writer.written) - 1, "shards": writer.written, "docs_read": docs,
            "lowercase": False, "val_split": f"shard 0: the first {val_tokens:,} tokens (as llm.c)",
            "max_tokens": max_tokens, "shard_tokens": shard_tokens, "repo": repo, "files": names,
            "seconds": round(time.perf_counter() - t0, 2)}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    log(f"prepared {meta['train_tokens']:,} train + {val_tokens:,} val tokens from {repo} sample/{sample} "
        f"(gpt2, {len(writer.written)} shards, {workers} worker(s)) in {meta['seconds']:.1f}s -> {out}")
    return meta

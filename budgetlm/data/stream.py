"""Tokenizing beside training: a producer process turns a source into llm.c token shards in a
cache folder while the trainer already reads them (stream_loader.StreamLoader).

Folder layout (written in this order, each file atomically): tokenizer.json, val_000000.bin,
meta.json, then train_000000.bin, train_000001.bin, ... of `shard_tokens` tokens each, with
stream_state.json saying how many shards are final and whether the source has ended.

What lands in the shards depends only on the source and the spec, never on timing: documents
are cut into paragraph-aligned pieces, mixed in a seeded buffer (so a shard holds many books,
not two), and encoded in that order. A killed run's folder is continued by replaying that
order without encoding (cheap) up to the last saved shard.

The producer is bounded: it keeps at most max(ahead_shards, ahead_seconds x the consumer's
rate) of tokens ahead of what the trainer reported consuming (consumed.json).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from budgetlm.data.prepare import _take_chars
from budgetlm.data.shards import ShardWriter, read_shard, write_shard
from budgetlm.errors import BudgetLMError

STATE_FILE = "stream_state.json"
CONSUMED_FILE = "consumed.json"
ERROR_FILE = "producer_error.txt"
PID_FILE = "producer.pid"
LAYOUT = "stream-v1"
# tokens after the last full shard, for continuing a killed run; named by the shard count that the
# state file gives, so a kill between writing it and the state never pairs a state with a wrong carry
CARRY_FILE = "carry_{:06d}.bin"
# Uncompressed/compressed size of English prose, for estimating a compressed source's tokens.
COMPRESSION_RATIO = {"": 1.0, ".xz": 3.2, ".zst": 3.0, ".gz": 2.7}


PACING = ("max_tokens", "ahead_shards", "ahead_seconds", "expected_rate", "threads", "batch_chars")  # not part of the cache key


@dataclass
class StreamSpec:
    """Everything that decides the shards' content (the cache key) plus the producer's pacing."""

    src: str
    tokenizer: str
    shard_tokens: int = 1 << 20
    val_every: int = 10  # every k-th document of the first `sample_chars` goes to validation
    val_max_tokens: int = 1_000_000
    sample_chars: int = 12_000_000  # BPE learns from this much text; validation is drawn from it too
    piece_chars: int = 65_536  # long documents are encoded as paragraph-aligned pieces of about this size
    mix_chars: int = 8_000_000  # pieces are mixed in a seeded buffer of this much text (0: source order)
    seed: int = 0
    # pacing only (not part of the key)
    max_tokens: int | None = None  # stop after this many train tokens (token budgets)
    ahead_shards: int = 4
    ahead_seconds: float = 60.0
    # tokens/s the run is expected to train at (the speedrun's sizing prediction): the lead before the
    # consumer has reported a rate, and a floor under its early reports, which include compile time.
    # Without it the producer idled at ahead_shards through the calibration and compile of a 2-minute
    # H200 run, then the model waited 14% of its training time for shards.
    expected_rate: float = 0.0
    threads: int | None = None
    batch_chars: int | None = None  # text per encode_batch call; None: 128 KB per thread, at least 1 MB

    def key(self) -> str:
        content = {k: v for k, v in asdict(self).items() if k not in PACING}
        return hashlib.sha256(json.dumps([content, source_identity(self.src)], sort_keys=True).encode()).hexdigest()[:12]

    @property
    def val_rule(self) -> str:
        return (f"every {self.val_every}th document of the first {self.sample_chars / 1e6:g}M characters, "
                f"at most {self.val_max_tokens:,} tokens")


def source_identity(src: str) -> list:
    """A local source's files with size and mtime (an edited file is a new cache); others by name."""
    from budgetlm.data.sources import data_files
    p = Path(src).expanduser()
    if not p.exists():
        return [src]
    return [[str(f.resolve()), f.stat().st_size, int(f.stat().st_mtime)] for f in data_files(p)]


def cache_dir(root: str | Path, spec: StreamSpec) -> Path:
    p = Path(spec.src)
    name = p.name.split(".")[0] if p.exists() else spec.src.replace(":", "_").replace("/", "_")
    return Path(root) / f"{name}-{spec.tokenizer.replace(':', '')}-{spec.key()}"


def estimate_source_tokens(src: str, bytes_per_token: float) -> int | None:
    """Tokens a local source can provide, from its size on disk (compressed parts scaled by a typical
    ratio for prose) and the tokenizer's measured bytes per token; None for non-local sources."""
    from budgetlm.data.sources import data_files, data_suffix
    p = Path(src).expanduser()
    if not p.exists():
        return None
    text_bytes = sum(f.stat().st_size * COMPRESSION_RATIO.get(data_suffix(f)[1], 1.0) for f in data_files(p))
    return int(text_bytes / max(bytes_per_token, 1e-9))


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def pieces(doc: str, piece_chars: int) -> list[str]:
    """`doc` cut into pieces of about piece_chars, each cut just before a blank line that follows
    a non-space character: byte-level BPE splits text there anyway, so the pieces' tokens
    concatenated equal the whole document's tokens."""
    out, start = [], 0
    while len(doc) - start > piece_chars:
        cut = doc.rfind("\n\n", start + piece_chars // 2, start + piece_chars)
        while cut > start and doc[cut - 1].isspace():
            cut = doc.rfind("\n\n", start + piece_chars // 2, cut)
        if cut <= start:
            cut = doc.find("\n\n", start + piece_chars)
            while cut != -1 and doc[cut - 1].isspace():
                cut = doc.find("\n\n", cut + 1)
            if cut == -1:
                break
        out.append(doc[start:cut])
        start = cut
    out.append(doc[start:])
    return out


def _title(doc: str) -> str:
    """A document's title for the log: its first upper-case line (Gutenberg books open with credits
    such as 'Produced by ...', then the title in capitals), else its first line."""
    lines = [line.strip() for line in doc[:5000].splitlines() if line.strip()]
    caps = [line for line in lines[:40] if sum(c.isalpha() for c in line) >= 3 and line == line.upper()]
    return (caps[0] if caps else lines[0] if lines else "")[:80]


class Plan:
    """The deterministic order of (is_document_start, text) pieces for the train split."""

    def __init__(self, spec: StreamSpec, docs: Iterator[str], val_ids: set[int]) -> None:
        self.spec, self.docs, self.val_ids = spec, docs, val_ids
        self.rng = np.random.default_rng([spec.seed, 7919])

    def __iter__(self) -> Iterator[tuple[bool, str]]:
        buf: list[tuple[bool, str]] = []
        chars = 0
        for i, doc in enumerate(self.docs):
            if i in self.val_ids:
                continue
            for j, p in enumerate(pieces(doc, self.spec.piece_chars)):
                buf.append((j == 0, p))
                chars += len(p)
            while buf and chars >= self.spec.mix_chars:
                first, p = buf.pop(int(self.rng.integers(len(buf))) if self.spec.mix_chars else 0)
                chars -= len(p)
                yield first, p
        while buf:
            first, p = buf.pop(int(self.rng.integers(len(buf))) if self.spec.mix_chars else 0)
            yield first, p


def encode_pieces(tok, batch: list[tuple[bool, str]]) -> np.ndarray:
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    out = []
    for (first, _), ids in zip(batch, tok.encode_batch([p for _, p in batch])):
        out.append(np.array(([tok.eot_id] if first else []) + ids, dtype=dtype))
    return np.concatenate(out) if out else np.zeros(0, dtype=dtype)




def _choose_val(spec: StreamSpec, sample: list[str], has_val: bool) -> list[int]:
    """Indices (in the source's document order) of the validation candidates."""
    if has_val:
        return []
    k = max(2, spec.val_every)
    cands = [i for i in range(len(sample)) if i % k == k - 1] or [len(sample) - 1]
    if len(sample) < 2:
        raise BudgetLMError(f"--data {spec.src}: only {len(sample)} document(s); too few to hold out a validation split")
    return cands


def _fresh_start(spec: StreamSpec, out: Path, source, log) -> tuple[object, set[int], Iterator[str]]:
    """Tokenizer (from a bounded sample), validation shard and meta.json; returns what the train plan needs."""
    from budgetlm.data.tokenizers import TOKENIZER_FILE, build_tokenizer
    t0 = time.perf_counter()
    for stale in [*out.glob("train_*.bin"), *out.glob("val_*.bin"), *out.glob("carry_*.bin"), out / ERROR_FILE, out / "meta.json"]:
        stale.unlink(missing_ok=True)
    docs = source.train()
    sample = _take_chars(docs, spec.sample_chars)
    if not sample:
        raise BudgetLMError(f"--data {spec.src}: no text found")
    cands = _choose_val(spec, sample, source.val is not None)
    held = set(cands)
    tok = build_tokenizer(spec.tokenizer, (d for i, d in enumerate(sample) if i not in held))
    t_tok = time.perf_counter() - t0
    cap = spec.val_max_tokens
    if source.val is None:  # whole documents, in order, until the cap
        val_ids, parts, n = [], [], 0
        for i in cands:
            enc = encode_pieces(tok, [(j == 0, p) for j, p in enumerate(pieces(sample[i], spec.piece_chars))])
            val_ids.append(i)
            parts.append(enc)
            n += enc.size
            if n >= cap:
                break
        val = np.concatenate(parts)[:cap]
        split = f"whole documents held out: {spec.val_rule}"
    else:
        val_ids = []
        val = encode_pieces(tok, [(True, d) for d in _take_chars(source.val(), cap * 6)])[:cap]
        split = "the source's validation split"
    tok.save(out / TOKENIZER_FILE)
    write_shard(out / "val_000000.bin", val, tok.vocab_size)
    sample_bytes = sum(len(d.encode()) for i, d in enumerate(sample) if i not in held)
    # bytes per token measured on validation text (free: it is encoded anyway), else on a little train text
    probe = [sample[i] for i in val_ids] if val_ids else sample[:20]
    probe_tokens = val.size if val_ids and val.size < cap else encode_pieces(tok, [(True, d[:200_000]) for d in probe]).size
    bytes_per_token = sum(len(d.encode() if val_ids and val.size < cap else d[:200_000].encode()) for d in probe) / max(probe_tokens, 1)
    meta = {
        "source": spec.src, "tokenizer": tok.spec, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id,
        "layout": LAYOUT, "train_tokens": None, "val_tokens": int(val.size), "val_docs": len(val_ids),
        "val_doc_indices": val_ids, "val_doc_titles": [_title(sample[i]) for i in val_ids],
        "val_split": split, "lowercase": all(d == d.lower() for d in sample[:1000]),
        "tokenizer_sample_bytes": sample_bytes, "bytes_per_token": round(bytes_per_token, 4),
        "est_source_tokens": estimate_source_tokens(spec.src, bytes_per_token),
        "shard_tokens": spec.shard_tokens, "seed": spec.seed, "spec": asdict(spec),
        "tokenizer_seconds": round(t_tok, 2), "val_seconds": round(time.perf_counter() - t0 - t_tok, 2),
    }
    write_json(out / "meta.json", meta)
    if val_ids:
        log(f"validation: {len(val_ids)} whole document(s) held out ({val.size:,} tokens): "
            + "; ".join(f"#{i} {t!r}" for i, t in zip(val_ids, meta["val_doc_titles"][:5]))
            + (" ..." if len(val_ids) > 5 else ""))
    from itertools import chain
    return tok, set(val_ids), chain(sample, docs)


def _throttle(spec: StreamSpec, out: Path, produced: int, parent: int | None) -> None:
    """Wait while more than max(ahead_shards, ahead_seconds x rate) tokens are ahead of the consumer
    (rate: its reported one, at least the expected one)."""
    while True:
        if parent is not None and os.getppid() != parent:
            raise SystemExit(0)  # the training process is gone: stop, do not linger as an orphan
        c = read_json(out / CONSUMED_FILE) or {}
        rate = max(c.get("rate", 0.0), spec.expected_rate)
        ahead = max(spec.ahead_shards * spec.shard_tokens, rate * spec.ahead_seconds)
        if produced - c.get("tokens", 0) <= ahead:
            return
        time.sleep(0.05)


def produce(spec: StreamSpec, out: str | Path, parent: int | None = None, log=print, paced: bool = False) -> dict:
    """Fill `out` with the stream's shards (continuing a partial folder); returns the final state.
    paced: keep only a bounded lead over the consumer's reports (the background producer)."""
    from budgetlm.data.sources import open_source
    from budgetlm.data.tokenizers import load_tokenizer
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = read_json(out / STATE_FILE)
    if state is not None and state.get("key") != spec.key():
        state = None
    meta = read_json(out / "meta.json")
    source = open_source(spec.src, seed=spec.seed, stream=True)
    if state is None or meta is None:
        (out / STATE_FILE).unlink(missing_ok=True)
        tok, val_ids, docs = _fresh_start(spec, out, source, log)
        state = {"key": spec.key(), "shards": 0, "pieces": 0, "carry": 0, "complete": False, "train_tokens": 0}
        write_json(out / STATE_FILE, state)
    else:
        if state["complete"] and not state.get("capped"):
            return state
        if state["complete"] and spec.max_tokens is not None and state["train_tokens"] >= _cap(spec):
            return state
        tok, val_ids, docs = load_tokenizer(out), set(meta["val_doc_indices"]), source.train()
        if state["complete"]:  # a capped stream grows: readers must not take it as ended meanwhile
            state = {**state, "complete": False, "capped": False}
            write_json(out / STATE_FILE, state)
    carry = read_shard(out / CARRY_FILE.format(state["shards"])).copy() if state["carry"] else np.zeros(0, dtype=np.uint16)
    plan = iter(Plan(spec, docs, val_ids))
    for _ in range(state["pieces"]):  # replay the order without encoding, up to the last saved shard
        next(plan)
    threads = spec.threads or max(2, (os.cpu_count() or 2) - 1)
    batch_chars = spec.batch_chars or max(1 << 20, (128 << 10) * threads)
    shards, pieces_done = state["shards"], state["pieces"]
    writer = ShardWriter(out, tok.vocab_size, spec.shard_tokens, start=shards, carry=carry)
    batch, chars = [], 0
    done = False
    flushed = time.perf_counter()
    while not done:
        piece = next(plan, None)
        if piece is not None:
            batch.append(piece)
            chars += len(piece[1])
            # a slow source still delivers every quarter second; batches never change the shards' content
            if chars < batch_chars and time.perf_counter() - flushed < 0.25:
                continue
        done = piece is None
        n_full = writer.add(encode_pieces(tok, batch))
        pieces_done += len(batch)
        batch, chars, flushed = [], 0, time.perf_counter()
        capped = spec.max_tokens is not None and writer.index * spec.shard_tokens >= _cap(spec)
        if done:
            writer.close()
        shards = writer.index
        if n_full or done or capped:
            carry = writer.pending()
            old_carry = out / CARRY_FILE.format(state["shards"])
            write_shard(out / CARRY_FILE.format(shards), carry, tok.vocab_size)
            state = {**state, "shards": shards, "pieces": pieces_done, "carry": int(carry.size),
                     "complete": done or capped, "capped": capped and not done,
                     "train_tokens": shards * spec.shard_tokens if not done else state_tokens(out, shards)}
            write_json(out / STATE_FILE, state)
            if old_carry.name != CARRY_FILE.format(shards):
                old_carry.unlink(missing_ok=True)
            if done:
                write_json(out / "meta.json", {**read_json(out / "meta.json"), "train_tokens": state["train_tokens"],
                                               "train_shards": shards})
        if capped:
            break
        if paced and not done:
            _throttle(spec, out, shards * spec.shard_tokens, parent)
    return state


def _cap(spec: StreamSpec) -> int:
    """Train tokens a token budget of max_tokens needs: a little more, as each shard's last partial window is skipped."""
    return int(spec.max_tokens * 1.02) + spec.shard_tokens


def state_tokens(out: Path, shards: int) -> int:
    from budgetlm.data.shards import read_header
    return sum(read_header(out / f"train_{i:06d}.bin")[1] for i in range(shards))


def _producer_main(spec: dict, out: str, parent: int) -> None:
    """The producer process: errors end as one line in ERROR_FILE, which the trainer raises."""
    import signal
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # stopped by the trainer: nothing to clean up
    try:  # the trainer comes first: on a CPU its busy-waiting threads would otherwise fight this process
        os.nice(10)
    except OSError:
        pass
    spec = StreamSpec(**spec)
    try:
        produce(spec, out, parent, log=lambda msg: print(msg, flush=True), paced=True)
    except BudgetLMError as e:
        write_error(Path(out), str(e))
        raise SystemExit(1)
    except Exception as e:
        write_error(Path(out), f"data producer failed: {type(e).__name__}: {e}")
        raise


def write_error(out: Path, msg: str) -> None:
    tmp = out / (ERROR_FILE + ".tmp")
    tmp.write_text(msg)
    os.replace(tmp, out / ERROR_FILE)


_ACTIVE: dict[str, "Producer"] = {}  # folder -> the producer this process started for it


def producer_for(data_dir: str | Path) -> "Producer | None":
    return _ACTIVE.get(str(Path(data_dir).resolve()))


def continue_stream(data_dir: str | Path) -> "Producer | None":
    """Start a producer for an unfinished stream folder that none is filling (train() stops it)."""
    meta = read_json(Path(data_dir) / "meta.json")
    if stream_complete(data_dir) or producer_for(data_dir) is not None or not meta or "spec" not in meta:
        return None
    owner = read_json(Path(data_dir) / PID_FILE)
    if owner and _pid_alive(owner["pid"]):
        return None
    return Producer(StreamSpec(**meta["spec"]), data_dir).start()


class paused:
    """Suspend the producer of `data_dir` (if this process runs one) for a timing-sensitive stretch,
    e.g. throughput probes on a CPU that the producer's threads would share."""

    def __init__(self, data_dir: str | Path) -> None:
        self.prod = producer_for(data_dir)

    def __enter__(self) -> None:
        import signal
        if self.prod is not None and self.prod.alive():
            os.kill(self.prod.proc.pid, signal.SIGSTOP)

    def __exit__(self, *exc) -> None:
        import signal
        if self.prod is not None and self.prod.alive():
            os.kill(self.prod.proc.pid, signal.SIGCONT)


def stop_producer(data_dir: str | Path) -> None:
    """Stop the producer this process runs for `data_dir`, if any."""
    prod = producer_for(data_dir)
    if prod is not None:
        prod.stop()


class Producer:
    """The background producer of a stream folder, as a context manager that always stops it."""

    def __init__(self, spec: StreamSpec, out: str | Path) -> None:
        self.spec, self.out = spec, Path(out)
        self.proc = None

    def start(self) -> "Producer":
        import subprocess
        import sys
        self.out.mkdir(parents=True, exist_ok=True)
        other = read_json(self.out / PID_FILE)
        if other and other.get("pid") != os.getpid() and _pid_alive(other["pid"]):
            raise BudgetLMError(f"{self.out}: being filled by another budgetlm process (pid {other['pid']}); "
                                f"wait for it or use another --cache folder")
        (self.out / ERROR_FILE).unlink(missing_ok=True)
        (self.out / CONSUMED_FILE).unlink(missing_ok=True)
        state = read_json(self.out / STATE_FILE)
        if state is None or state.get("key") != self.spec.key():  # a fresh start: no stale file may look ready
            for stale in [*self.out.glob("train_*.bin"), self.out / "meta.json", self.out / STATE_FILE]:
                stale.unlink(missing_ok=True)
        # A fresh interpreter, not fork (the trainer holds torch and thread pools) nor multiprocessing's
        # spawn (it re-runs the caller's main script); its own tokenizer thread pool.
        env = dict(os.environ, RAYON_NUM_THREADS=str(self.threads()))
        pkg_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([pkg_root, *filter(None, [os.environ.get("PYTHONPATH")])])
        self.proc = subprocess.Popen([sys.executable, "-m", "budgetlm.data.stream", json.dumps(asdict(self.spec)),
                                      str(self.out), str(os.getpid())], env=env, stdin=subprocess.DEVNULL)
        write_json(self.out / PID_FILE, {"pid": os.getpid(), "producer": self.proc.pid})
        _ACTIVE[str(self.out.resolve())] = self
        import atexit
        atexit.register(self.stop)  # also when the caller fails before training starts
        return self

    def threads(self) -> int:
        return self.spec.threads or max(2, (os.cpu_count() or 2) - 1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        """Raise the producer's error if it failed."""
        err = self.out / ERROR_FILE
        if err.is_file():
            raise BudgetLMError(err.read_text().strip())
        if self.proc is not None and self.proc.poll() not in (0, None):
            raise BudgetLMError(f"{self.out}: the data producer stopped with exit code {self.proc.returncode}")

    def wait_ready(self, timeout: float = 3600.0) -> float:
        """Block until tokenizer, validation, meta and the first train shard exist; returns seconds waited."""
        t0 = time.perf_counter()
        while not ((self.out / "meta.json").is_file() and (self.out / "train_000000.bin").is_file()):
            try:
                self.check()
            except BudgetLMError:
                self.stop()
                raise
            if self.proc is not None and not self.alive():
                raise BudgetLMError(f"{self.out}: the data producer ended without writing a train shard")
            if time.perf_counter() - t0 > timeout:
                raise BudgetLMError(f"{self.out}: no train shard after {timeout:.0f}s")
            time.sleep(0.02)
        return time.perf_counter() - t0

    def stop(self) -> None:
        import subprocess
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        _ACTIVE.pop(str(self.out.resolve()), None)
        pid = read_json(self.out / PID_FILE)
        if pid and pid.get("pid") == os.getpid():
            (self.out / PID_FILE).unlink(missing_ok=True)

    def __enter__(self) -> "Producer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def needs_producer(data_dir: str | Path, spec: StreamSpec) -> bool:
    """Whether the folder still lacks shards this spec wants (missing, partial, or capped below max_tokens)."""
    state = read_json(Path(data_dir) / STATE_FILE)
    if not state or state.get("key") != spec.key() or not (Path(data_dir) / "meta.json").is_file():
        return True
    if not state.get("complete"):
        return True
    if state.get("capped"):
        return spec.max_tokens is None or state["train_tokens"] < _cap(spec)
    return False


def is_stream_folder(data_dir: str | Path) -> bool:
    meta = read_json(Path(data_dir) / "meta.json")
    return bool(meta and meta.get("layout") == LAYOUT)


def stream_complete(data_dir: str | Path) -> bool:
    state = read_json(Path(data_dir) / STATE_FILE)
    return bool(state and state.get("complete"))


if __name__ == "__main__":
    import sys
    _producer_main(json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]))

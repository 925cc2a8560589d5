"""Background tokenizing (data/stream.py) and the streaming loader: same batches as the synchronous
path, no stall beyond the source's own speed, exact resume, compressed sources, no orphan producer."""

import gzip
import json
import lzma
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from budgetlm.data import stream
from budgetlm.data.shards import load_split
from budgetlm.data.sources import Source, iter_path
from budgetlm.data.stream import PID_FILE, Producer, StreamSpec, pieces, produce, write_json
from budgetlm.data.stream_loader import StreamLoader
from budgetlm.data.tokenizers import build_tokenizer, load_tokenizer
from budgetlm.errors import BudgetLMError

QUIET = lambda *_: None  # noqa: E731
WORDS = "the cat sat on a mat and then ran to see her big red dog who was very happy today".split()


def _book(i: int, paragraphs: int = 12) -> str:
    rng = np.random.default_rng(i)
    paras = [" ".join(rng.choice(WORDS, size=int(rng.integers(20, 60)))) + "." for _ in range(paragraphs)]
    return f"BOOK NUMBER {i}\n\n" + "\n\n".join(paras)


@pytest.fixture
def corpus(tmp_path) -> Path:
    p = tmp_path / "books.txt"
    p.write_text("\n<|endoftext|>\n".join(_book(i) for i in range(60)) + "\n")
    return p


def _spec(src, **kw) -> StreamSpec:
    base = dict(tokenizer="char", shard_tokens=3000, val_every=10, val_max_tokens=4000, sample_chars=20_000,
                piece_chars=600, mix_chars=5000, ahead_shards=3, threads=1, batch_chars=3000)
    base.update(kw)
    return StreamSpec(str(src), **base)


def _batches(loader, n):
    return [tuple(t.numpy().copy() for t in loader.next_batch()) for _ in range(n)]


def test_pieces_encode_like_the_whole_document():
    doc = _book(1, paragraphs=40) + "\n\n  indented para.\n\n\nthree newlines. end"
    tok = build_tokenizer("bpe:300", iter([_book(i) for i in range(5)]))
    parts = pieces(doc, 300)
    assert len(parts) > 5 and "".join(parts) == doc
    assert sum((tok.encode(p) for p in parts), []) == tok.encode(doc)


def test_compressed_sources_read_the_same_documents(tmp_path, corpus):
    import zstandard
    raw = corpus.read_bytes()
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "a.txt.xz").write_bytes(lzma.compress(raw))
    (folder / "b.txt.gz").write_bytes(gzip.compress(raw))
    (folder / "c.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    docs = list(iter_path(corpus))
    assert len(docs) == 60 and docs[3].startswith("BOOK NUMBER 3")
    for name in ("a.txt.xz", "b.txt.gz", "c.txt.zst"):
        assert list(iter_path(folder / name)) == docs, name
    assert list(iter_path(folder)) == docs * 3  # a folder of parts, in name order
    jl = tmp_path / "d.jsonl.gz"
    jl.write_bytes(gzip.compress("".join(json.dumps({"text": d}) + "\n" for d in docs).encode()))
    assert list(iter_path(jl)) == docs
    # and the same tokens end up in the shards
    produce(_spec(corpus), tmp_path / "plain", log=QUIET)
    produce(_spec(folder / "a.txt.xz"), tmp_path / "xz", log=QUIET)
    assert np.array_equal(np.asarray(load_split(tmp_path / "plain", "train")), np.asarray(load_split(tmp_path / "xz", "train")))


def test_corrupt_archive_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.txt.xz"
    bad.write_bytes(b"this is not xz data at all" * 10)
    with pytest.raises(BudgetLMError, match="bad.txt.xz: not a valid .xz file"):
        list(iter_path(bad))


def test_validation_holds_out_whole_documents(tmp_path, corpus):
    out = tmp_path / "d"
    produce(_spec(corpus, tokenizer="bpe:300", val_max_tokens=100_000, sample_chars=10**9), out, log=QUIET)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["val_doc_indices"] == list(range(9, 60, 10))
    assert meta["val_doc_titles"][0] == "BOOK NUMBER 9"
    tok = load_tokenizer(out)
    val_text = tok.decode(np.asarray(load_split(out, "val")).tolist())
    train_text = tok.decode(np.asarray(load_split(out, "train")).tolist())
    for i in range(60):
        assert (f"BOOK NUMBER {i}\n" in val_text) == (i % 10 == 9)
        assert (f"BOOK NUMBER {i}\n" in train_text) == (i % 10 != 9)


def test_background_stream_gives_the_synchronous_batches(tmp_path, corpus):
    """The producer runs in its own process and is paced by the loader, which waits for shards;
    the batches equal those over the finished folder, through epoch 0 and into epoch 1."""
    sync = tmp_path / "sync"
    produce(_spec(corpus), sync, log=QUIET)
    ref = StreamLoader(sync, 16, 8, seed=3)
    n_windows = sum((a.size - 1) // 16 for a in [np.asarray(x) for x in [load_split(sync, "train")]])
    n = n_windows // 8 + 20  # past the end of epoch 0
    expected = _batches(ref, n)
    assert ref.epoch > 1.0
    bg = tmp_path / "bg"
    with Producer(_spec(corpus), bg) as prod:
        prod.wait_ready()
        loader = StreamLoader(bg, 16, 8, seed=3)
        got = _batches(loader, n)
        assert not (bg / "train_000009.bin").exists() or loader.wait_s > 0  # it really streamed
    for (x0, y0), (x1, y1) in zip(expected, got):
        assert np.array_equal(x0, x1) and np.array_equal(y0, y1)
    assert prod.proc.poll() is not None


def test_resume_continues_the_stream_exactly(tmp_path, corpus):
    d = tmp_path / "d"
    produce(_spec(corpus), d, log=QUIET)
    a = StreamLoader(d, 16, 4, seed=1)
    first = _batches(a, 50)
    state = a.state_dict()
    rest = _batches(a, 300)
    b = StreamLoader(d, 16, 4, seed=1)
    b.load_state_dict(json.loads(json.dumps(state)))  # a plain integer position survives JSON
    again = _batches(b, 300)
    assert all(np.array_equal(p[0], q[0]) for p, q in zip(rest, again))
    assert not np.array_equal(first[0][0], rest[0][0])


def test_killed_producer_is_continued_to_the_same_shards(tmp_path, corpus):
    full = tmp_path / "full"
    produce(_spec(corpus), full, log=QUIET)
    part = tmp_path / "part"
    # stop after 3 shards, as a run that ended (and killed its producer) would leave it
    produce(_spec(corpus, max_tokens=3000 * 2), part, log=QUIET)
    state = json.loads((part / "stream_state.json").read_text())
    assert state["capped"] and state["shards"] < json.loads((full / "stream_state.json").read_text())["shards"]
    produce(_spec(corpus), part, log=QUIET)  # continues (replays the order without encoding)
    assert np.array_equal(np.asarray(load_split(full, "train")), np.asarray(load_split(part, "train")))
    assert (full / "tokenizer.json").read_text() == (part / "tokenizer.json").read_text()


def test_slow_source_does_not_stall_beyond_its_own_speed(tmp_path, corpus, monkeypatch):
    """A source yielding a document every 30 ms: the loader waits about as long as the source takes,
    not more, and gets its last batch right after the producer's last shard."""
    import budgetlm.data.sources as sources
    docs = list(iter_path(corpus))

    def slow():
        for d in docs:
            time.sleep(0.03)
            yield d
    monkeypatch.setattr(sources, "open_source", lambda src, **kw: Source(src, slow))
    out = tmp_path / "slow"
    spec = _spec(corpus, sample_chars=3000, mix_chars=0, ahead_shards=1000)
    out.mkdir()
    write_json(out / PID_FILE, {"pid": os.getpid()})  # "a live process fills this folder": the loader waits
    finished = {}

    def run():
        produce(spec, out, log=QUIET)
        finished["t"] = time.perf_counter()
    th = threading.Thread(target=run)
    th.start()
    while not (out / "train_000000.bin").exists():
        time.sleep(0.005)
    t_first = time.perf_counter()
    loader = StreamLoader(out, 16, 8, seed=0, poll_s=0.002)
    while loader.epoch < 1.0:
        loader.next_batch()
    t_end = time.perf_counter()
    th.join()
    production = finished["t"] - t_first
    assert production > 0.8  # the source really was slow
    assert loader.wait_s <= production + 0.1
    assert loader.wait_s >= 0.5 * production  # the time was measured as data wait
    assert t_end - finished["t"] < 0.3  # no stall after the source's last shard


def test_train_stops_the_producer_when_it_ends_or_fails(tmp_path, corpus):
    from budgetlm.config import ModelConfig, TrainConfig
    from budgetlm.train.trainer import train
    d = tmp_path / "d"
    prod = Producer(_spec(corpus, ahead_shards=1), d).start()
    prod.wait_ready()
    cfg = TrainConfig(budget="3-steps", batch_size=4, seq_len=16, out_dir=str(tmp_path / "run"), progress=False)
    info = train(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), cfg, d, log=QUIET)
    assert prod.proc.poll() is not None and stream.producer_for(d) is None
    assert info.extra["data_wait_s"] >= 0 and 0 <= info.extra["data_wait_frac"] < 1
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "data_wait_s" in rows[0] and "data_wait_s" in json.loads((tmp_path / "run" / "summary.json").read_text())
    prod = Producer(_spec(corpus, ahead_shards=1), tmp_path / "d2").start()
    prod.wait_ready()
    bad = TrainConfig(budget="3-steps", batch_size=4, seq_len=16, out_dir=str(tmp_path / "run2"), progress=False)
    bad.optim.lr = float("nan")  # past the config's own checks, so the run fails inside train() (AdamW refuses it)
    with pytest.raises(ValueError, match="learning rate"):
        train(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), bad, tmp_path / "d2", log=QUIET)
    assert prod.proc.poll() is not None


def test_producer_error_reaches_the_trainer_as_one_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    prod = Producer(_spec(empty), tmp_path / "d").start()
    with pytest.raises(BudgetLMError, match="empty.txt: file is empty"):
        prod.wait_ready(timeout=60)
    assert prod.proc.poll() is not None


def test_speedrun_reuses_the_cache(tmp_path, corpus):
    from budgetlm.speedrun.pipeline import speedrun
    logs = []
    kw = dict(data=str(corpus), tokenizer="char", device="cpu", cache_root=str(tmp_path / "cache"), n_samples=1,
              sample_tokens=5, overrides={"n_layer": 1, "n_embd": 16, "n_head": 2, "seq_len": 16, "batch_size": 4,
                                          "progress": False}, log=logs.append)
    info, _ = speedrun("4-steps", out_dir=str(tmp_path / "r1"), **kw)
    assert any("in the background" in m for m in logs) and info.extra["data"]["layout"] == stream.LAYOUT
    ddir = next((tmp_path / "cache").iterdir())
    produce(StreamSpec(**info.extra["data"]["spec"]), ddir, log=QUIET)  # finish it: a complete cache
    mtimes = {p.name: p.stat().st_mtime_ns for p in ddir.glob("*.bin")}
    logs.clear()
    speedrun("4-steps", out_dir=str(tmp_path / "r2"), **kw)
    assert any("using prepared data" in m for m in logs) and not any("in the background" in m for m in logs)
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in ddir.glob("*.bin")}


def test_train_continues_an_unfinished_stream(tmp_path, corpus):
    """A stream folder left partial (its run ended) is finished by a later train() on it, e.g. a --resume."""
    from budgetlm.config import ModelConfig, TrainConfig
    from budgetlm.train.trainer import train
    d = tmp_path / "d"
    with Producer(_spec(corpus, ahead_shards=1), d) as prod:
        prod.wait_ready()
    before = len(list(d.glob("train_*.bin")))
    assert not stream.stream_complete(d)
    steps = before * 3000 // (8 * 16) + 10  # more batches than the shards there hold
    cfg = TrainConfig(budget=f"{steps}-steps", batch_size=8, seq_len=16, out_dir=str(tmp_path / "run"), progress=False)
    info = train(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), cfg, d, log=QUIET)
    assert info.steps == steps and len(list(d.glob("train_*.bin"))) > before
    assert stream.producer_for(d) is None and not (d / PID_FILE).exists()


def test_expected_rate_sets_the_lead_before_the_consumer_reports(tmp_path, corpus):
    """Before training reports a rate (sizing, compile), the producer keeps only ahead_shards unless
    told the rate to expect; told it, it runs ahead by ahead_seconds of that rate (here: to the end)."""
    with Producer(_spec(corpus, ahead_shards=1), tmp_path / "idle") as prod:
        prod.wait_ready()
        time.sleep(1.0)
        held = len(list((tmp_path / "idle").glob("train_*.bin")))
        assert not stream.stream_complete(tmp_path / "idle")
    with Producer(_spec(corpus, ahead_shards=1, expected_rate=1e9), tmp_path / "ahead") as prod:
        prod.wait_ready()
        deadline = time.time() + 60
        while not stream.stream_complete(tmp_path / "ahead") and time.time() < deadline:
            time.sleep(0.1)
    assert stream.stream_complete(tmp_path / "ahead")
    assert len(list((tmp_path / "ahead").glob("train_*.bin"))) > held


def test_batches_gather_the_windows_the_loader_names(tmp_path, corpus):
    """next_batch gathers whole runs of windows at once; it must equal stacking _window() one by
    one, across shard boundaries (epoch 0) and epoch boundaries (later epochs, several ranks)."""
    d = tmp_path / "d"
    produce(_spec(corpus), d, log=QUIET)
    for rank, world, batch in ((0, 1, 7), (1, 2, 5)):
        fast = StreamLoader(d, 16, batch, seed=5, rank=rank, world=world)
        ref = StreamLoader(d, 16, batch, seed=5, rank=rank, world=world)
        n = 3 * sum(1 for _ in d.glob("train_*.bin")) * 3000 // (16 * batch * world) + 5  # past epoch 2
        for _ in range(n):
            x, y = fast.next_batch()
            base = ref.position + ref.rank * ref.batch_size
            rows = np.stack([ref._window(base + i) for i in range(batch)]).astype(np.int64)
            ref.position += batch * world
            assert np.array_equal(x.numpy(), rows[:, :-1]) and np.array_equal(y.numpy(), rows[:, 1:])
        assert fast.epoch > 2.0

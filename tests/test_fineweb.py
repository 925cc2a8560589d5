"""FineWeb-Edu preparation against local parquet files standing in for the hub: llm.c shard
names and headers, exact GPT-2 ids, the token cap, and the same bytes from 1 or 2 workers."""

import json

import numpy as np
import pytest

from budgetlm.data import fineweb
from budgetlm.data.shards import read_header, read_shard
from budgetlm.errors import BudgetLMError


@pytest.fixture(scope="module")
def gpt2():
    from budgetlm.data.tokenizers import load_gpt2
    try:
        return load_gpt2()
    except BudgetLMError as e:
        pytest.skip(f"GPT-2 tokenizer files unavailable (looked in ../shared and the hub): {e}")


@pytest.fixture
def hub(tmp_path):
    """Two parquet files laid out like sample/10BT/ with fineweb-edu's columns; list/fetch fakes."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    docs = [[f"Lesson {f}.{i}: the water cycle moves water between the ocean, the air and the land. " * (1 + i % 3)
             for i in range(40)] for f in range(2)]
    names = []
    for f, texts in enumerate(docs):
        name = f"sample/10BT/{f:03d}_00000.parquet"
        path = tmp_path / "hub" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": texts, "id": [f"<urn:{f}:{i}>" for i in range(len(texts))],
                                 "score": [3.1] * len(texts), "int_score": [3] * len(texts)}), path)
        names.append(name)
    calls = []

    def list_files(sample, repo):
        calls.append(("list", sample, repo))
        return [n for n in names if n.startswith(f"sample/{sample}/")]

    def fetch(name, repo):
        calls.append(("fetch", name))
        return tmp_path / "hub" / name
    return {"docs": [d for texts in docs for d in texts], "list_files": list_files, "fetch": fetch, "calls": calls}


def expected_tokens(tok, docs):
    return np.array([t for d in docs for t in [tok.eot_id, *tok.encode(d)]], dtype=np.uint16)


def test_llmc_shards_with_val_first(gpt2, hub, tmp_path):
    out = tmp_path / "fw"
    meta = fineweb.prepare_fineweb(out, "10BT", shard_tokens=2000, val_tokens=1500, workers=1,
                                   list_files=hub["list_files"], fetch=hub["fetch"], log=lambda *_: None)
    want = expected_tokens(gpt2, hub["docs"])
    names = sorted((p.name for p in out.glob("*.bin")), key=lambda n: n[-10:])  # by shard index
    n_train = -(-(want.size - 1500) // 2000)
    assert names == ["fineweb_val_000000.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(1, n_train + 1)]
    counts = [read_header(out / n) for n in names]
    assert all(v == 1 for v, _ in counts)  # uint16 shards (llm.c version 1)
    assert [c for _, c in counts[:-1]] == [1500] + [2000] * (n_train - 1) and counts[-1][1] > 0
    got = np.concatenate([read_shard(out / n) for n in names])
    assert np.array_equal(got, want)  # exact GPT-2 ids, <|endoftext|> (50256) before every document
    assert got[0] == 50256 == gpt2.eot_id
    assert meta["val_tokens"] == 1500 and meta["train_tokens"] == want.size - 1500
    assert json.loads((out / "meta.json").read_text())["tokenizer"] == "gpt2"
    assert ("fetch", "sample/10BT/001_00000.parquet") in hub["calls"]


def test_token_cap_reads_only_what_it_needs(gpt2, hub, tmp_path, monkeypatch):
    monkeypatch.setattr(fineweb, "CHUNK_DOCS", 8)  # over-read is at most one chunk of documents
    out = tmp_path / "fw"
    meta = fineweb.prepare_fineweb(out, "10BT", shard_tokens=800, val_tokens=500, max_tokens=1000, workers=1,
                                   list_files=hub["list_files"], fetch=hub["fetch"], log=lambda *_: None)
    assert meta["train_tokens"] == 1000 and meta["train_shards"] == 2
    assert [read_header(out / n)[1] for n in ("fineweb_val_000000.bin", "fineweb_train_000001.bin",
                                              "fineweb_train_000002.bin")] == [500, 800, 200]
    assert [c for c in hub["calls"] if c[0] == "fetch"] == [("fetch", "sample/10BT/000_00000.parquet")]
    # the trainer reads these shards as a prepared data folder
    from budgetlm.data.shards import load_split
    assert load_split(out, "train").size == 1000 and load_split(out, "val").size == 500


def test_worker_processes_write_the_same_shards(gpt2, hub, tmp_path):
    kw = dict(shard_tokens=3000, val_tokens=1000, list_files=hub["list_files"], fetch=hub["fetch"],
              log=lambda *_: None)
    fineweb.prepare_fineweb(tmp_path / "one", workers=1, **kw)
    fineweb.prepare_fineweb(tmp_path / "two", workers=2, **kw)
    for p in sorted((tmp_path / "one").glob("*.bin")):
        assert p.read_bytes() == (tmp_path / "two" / p.name).read_bytes()


def test_prepare_entry_point_dispatches(gpt2, hub, tmp_path, monkeypatch):
    """`budgetlm prepare --data fineweb-edu --sample 10BT` reaches prepare_fineweb with the hub functions."""
    from budgetlm.data.prepare import prepare
    monkeypatch.setattr(fineweb, "list_hub_files", hub["list_files"])
    monkeypatch.setattr(fineweb, "fetch_hub_file", hub["fetch"])
    meta = prepare("fineweb-edu", None, tmp_path / "fw", max_tokens=2000, shard_tokens=1000, sample="10BT",
                   log=lambda *_: None)
    assert meta["source"] == "fineweb-edu:10BT" and meta["train_tokens"] == 2000 and meta["val_tokens"] == 1000
    assert sorted(p.name for p in (tmp_path / "fw").glob("*.bin")) == [
        "fineweb_train_000001.bin", "fineweb_train_000002.bin", "fineweb_val_000000.bin"]
    with pytest.raises(BudgetLMError, match="GPT-2"):
        prepare("fineweb-edu", "bpe:4096", tmp_path / "x", sample="10BT")
    with pytest.raises(BudgetLMError, match="--sample is for --data fineweb-edu"):
        prepare("synth", None, tmp_path / "y", sample="10BT")


def test_hub_listing_keeps_the_sample_folder(monkeypatch):
    import huggingface_hub
    files = ["README.md", "data/CC-MAIN-2024-10/000_00000.parquet", "sample/10BT/001_00000.parquet",
             "sample/10BT/000_00000.parquet", "sample/100BT/000_00000.parquet"]
    monkeypatch.setattr(fineweb, "hub_reachable", lambda: True)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo, repo_type=None: files)
    assert fineweb.list_hub_files("10BT") == ["sample/10BT/000_00000.parquet", "sample/10BT/001_00000.parquet"]
    with pytest.raises(BudgetLMError, match="no parquet files under sample/350BT"):
        fineweb.list_hub_files("350BT")
    monkeypatch.setattr(fineweb, "hub_reachable", lambda: False)
    with pytest.raises(BudgetLMError, match="cannot be reached"):
        fineweb.list_hub_files("10BT")

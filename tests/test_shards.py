import numpy as np
import pytest
import torch

from budgetlm.data.shards import HEADER_BYTES, MAGIC, list_shards, read_header, read_shard, write_shard
from budgetlm.errors import BudgetLMError


def test_round_trip_uint16(tmp_path):
    toks = np.random.default_rng(0).integers(0, 50257, size=10_001)
    write_shard(tmp_path / "train_000000.bin", toks, 50257)
    back = read_shard(tmp_path / "train_000000.bin")
    assert back.dtype == np.uint16 and np.array_equal(back, toks)
    header = np.fromfile(tmp_path / "train_000000.bin", dtype="<i4", count=256)
    assert list(header[:3]) == [MAGIC, 1, 10_001]
    assert (tmp_path / "train_000000.bin").stat().st_size == HEADER_BYTES + 2 * 10_001


def test_round_trip_uint32_for_large_vocab(tmp_path):
    toks = np.array([0, 70_000, 128_255, 5])
    write_shard(tmp_path / "s.bin", toks, 128_256)
    assert read_header(tmp_path / "s.bin") == (2, 4)
    assert np.array_equal(read_shard(tmp_path / "s.bin"), toks)


def test_bad_magic(tmp_path):
    p = tmp_path / "bad.bin"
    p.write_bytes(b"\x01" * 2000)
    with pytest.raises(BudgetLMError, match="bad.bin: bad shard header: magic"):
        read_shard(p)


def test_truncated_shard(tmp_path):
    p = tmp_path / "t.bin"
    write_shard(p, np.arange(100), 1000)
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(BudgetLMError, match="says 100 tokens"):
        read_shard(p)


def test_short_file_and_bad_version(tmp_path):
    p = tmp_path / "short.bin"
    p.write_bytes(b"abc")
    with pytest.raises(BudgetLMError, match="shorter than the 1024-byte header"):
        read_header(p)
    h = np.zeros(256, dtype="<i4")
    h[:3] = (MAGIC, 7, 0)
    p.write_bytes(h.tobytes())
    with pytest.raises(BudgetLMError, match="unsupported version 7"):
        read_header(p)


def test_ids_out_of_range_rejected(tmp_path):
    with pytest.raises(BudgetLMError, match=r"\[0, 10\)"):
        write_shard(tmp_path / "x.bin", np.array([3, 10]), 10)


def test_list_shards_order_and_missing(tmp_path):
    for i in (2, 0, 1):
        write_shard(tmp_path / f"train_{i:06d}.bin", np.arange(5), 10)
    assert [p.name for p in list_shards(tmp_path, "train")] == [f"train_{i:06d}.bin" for i in range(3)]
    with pytest.raises(BudgetLMError, match="no 'val' shards"):
        list_shards(tmp_path, "val")


def _three_shards(tmp_path, sizes=(7, 0, 13, 5)):
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 500, n).astype(np.uint16) for n in sizes]
    for i, p in enumerate(parts):
        write_shard(tmp_path / f"train_{i:06d}.bin", p, vocab_size=500)
    return np.concatenate(parts)


def test_multi_shard_split_is_lazy_and_slices_like_the_concatenation(tmp_path):
    from budgetlm.data.shards import ShardedTokens, load_pattern, load_split
    whole = _three_shards(tmp_path)
    toks = load_split(tmp_path, "train")
    assert isinstance(toks, ShardedTokens) and len(toks) == toks.size == whole.size == 25
    # every slice, including ones that cross (and skip the empty) shard boundaries, equals the concatenation's
    for a in range(0, 26):
        for b in range(a, 27):
            assert np.array_equal(toks[a:b], whole[a:b]), (a, b)
    assert [int(toks[i]) for i in range(-25, 25)] == [int(x) for x in whole[-25:]] + [int(x) for x in whole[:25]]
    assert np.array_equal(np.asarray(toks), whole)
    assert np.array_equal(np.asarray(load_pattern(str(tmp_path / "train_*.bin"))), whole)
    with pytest.raises(IndexError):
        toks[25]
    with pytest.raises(ValueError):
        toks[::2]


def test_batch_loader_reads_the_same_batches_from_shards_as_from_one_array(tmp_path):
    from budgetlm.data.loader import BatchLoader, eval_batches
    from budgetlm.data.shards import load_split
    whole = _three_shards(tmp_path, sizes=(300, 41, 517))
    lazy, eager = BatchLoader(load_split(tmp_path, "train"), 16, 4, seed=3), BatchLoader(whole, 16, 4, seed=3)
    for _ in range(30):  # > one epoch, so the shuffled order and the epoch offset both come into play
        (xa, ya), (xb, yb) = lazy.next_batch(), eager.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, _), (xb, _) in zip(eval_batches(load_split(tmp_path, "train"), 16, 4), eval_batches(whole, 16, 4)):
        assert torch.equal(xa, xb)

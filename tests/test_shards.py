import numpy as np
import pytest

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

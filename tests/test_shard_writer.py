"""The one shard writer (prepare, fineweb and the stream use it): shards cut at fixed token
positions whatever the sizes of the pieces fed in, llm.c's bytes and names, and a stream
continued from its carry writing the same files as one written in a single go."""

import struct

import numpy as np
import pytest

from budgetlm.data.shards import ShardWriter, llmc_names, split_names
from budgetlm.errors import BudgetLMError


def llmc_bytes(tokens: np.ndarray, version: int) -> bytes:
    """A shard as llm.c writes it, built here from the format alone (not from write_shard)."""
    header = struct.pack("<3i", 20240520, version, tokens.size) + b"\0" * (1024 - 12)
    return header + tokens.astype("<u2" if version == 1 else "<u4").tobytes()


def ragged(tokens: np.ndarray, seed: int) -> list[np.ndarray]:
    cuts = np.sort(np.random.default_rng(seed).integers(0, tokens.size, size=30))
    return np.split(tokens, cuts)  # includes empty pieces


def folder(tmp_path, name: str):
    (tmp_path / name).mkdir()
    return tmp_path / name


def feed(writer: ShardWriter, pieces: list[np.ndarray]) -> ShardWriter:
    for p in pieces:
        writer.add(p)
    writer.close()
    return writer


@pytest.mark.parametrize("shard_tokens", [1, 700, 2500, 10_000])
def test_shards_are_fixed_slices_of_the_stream_with_llmc_bytes(tmp_path, shard_tokens):
    toks = np.random.default_rng(0).integers(0, 50257, size=5000)
    w = feed(ShardWriter(tmp_path, 50257, shard_tokens), ragged(toks, 1))
    starts = range(0, toks.size, shard_tokens)
    assert [n for n, _ in w.written] == [f"train_{i:06d}.bin" for i in range(len(starts))]
    for i, s in enumerate(starts):
        assert (tmp_path / f"train_{i:06d}.bin").read_bytes() == llmc_bytes(toks[s:s + shard_tokens], 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [n for n, _ in w.written]  # no temp files left
    assert w.total == toks.size and w.index == len(starts)


def test_large_vocab_writes_uint32(tmp_path):
    toks = np.array([0, 70_000, 128_255, 5, 9])
    feed(ShardWriter(tmp_path, 128_256, 3, name=split_names("val")), [toks[:1], toks[1:]])
    assert (tmp_path / "val_000000.bin").read_bytes() == llmc_bytes(toks[:3], 2)
    assert (tmp_path / "val_000001.bin").read_bytes() == llmc_bytes(toks[3:], 2)


def test_an_empty_split_still_gets_one_file_unless_asked_not_to(tmp_path):
    w = feed(ShardWriter(folder(tmp_path, "a"), 300, 10), [np.zeros(0, int)])
    assert w.written == [("train_000000.bin", 0)]
    assert (tmp_path / "a" / "train_000000.bin").read_bytes() == llmc_bytes(np.zeros(0, int), 1)
    assert feed(ShardWriter(folder(tmp_path, "b"), 300, 10, min_shards=0), []).written == []
    assert list((tmp_path / "b").iterdir()) == []
    # exactly full shards: no empty tail shard after them
    assert feed(ShardWriter(folder(tmp_path, "c"), 300, 5), [np.arange(10)]).written == [
        ("train_000000.bin", 5), ("train_000001.bin", 5)]


def test_llmc_layout_puts_a_validation_shard_of_its_own_size_first(tmp_path):
    toks = np.random.default_rng(2).integers(0, 50257, size=3000)
    w = feed(ShardWriter(tmp_path, 50257, 1000, name=llmc_names("fineweb"), first_tokens=600, min_shards=0),
             ragged(toks, 3))
    assert w.written == [("fineweb_val_000000.bin", 600), ("fineweb_train_000001.bin", 1000),
                         ("fineweb_train_000002.bin", 1000), ("fineweb_train_000003.bin", 400)]
    assert (tmp_path / "fineweb_val_000000.bin").read_bytes() == llmc_bytes(toks[:600], 1)
    assert (tmp_path / "fineweb_train_000003.bin").read_bytes() == llmc_bytes(toks[2600:], 1)


def test_a_stream_continued_from_its_carry_writes_the_same_shards(tmp_path):
    toks = np.random.default_rng(4).integers(0, 4096, size=4321)
    whole = feed(ShardWriter(folder(tmp_path, "whole"), 4096, 500), ragged(toks, 5))
    part = folder(tmp_path, "part")
    first = ShardWriter(part, 4096, 500)
    n_full = first.add(toks[:1234])
    assert n_full == 2 and first.index == 2
    carry = first.pending().copy()
    assert np.array_equal(carry, toks[1000:1234])
    rest = feed(ShardWriter(part, 4096, 500, start=first.index, carry=carry), ragged(toks[1234:], 6))
    assert [n for n, _ in first.written + rest.written] == [n for n, _ in whole.written]
    for name, _ in whole.written:
        assert (part / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_zero_shard_size_is_refused(tmp_path):
    with pytest.raises(BudgetLMError, match="shard size must be positive"):
        ShardWriter(tmp_path, 300, 0)

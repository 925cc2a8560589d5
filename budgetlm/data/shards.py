"""Token shards in llm.c's format, so llm.c users can reuse them and we can read theirs.

Layout: a header of 256 little-endian int32 — [0] magic 20240520, [1] version, [2] token
count — then the tokens: uint16 for version 1 (vocabularies up to 65,536), uint32 for
version 2. Shards are read with numpy.memmap: nothing is loaded until it is used.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from budgetlm.errors import BudgetLMError

MAGIC = 20240520
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
DTYPES = {1: np.uint16, 2: np.uint32}


def version_for_vocab(vocab_size: int) -> int:
    return 1 if vocab_size <= 2**16 else 2


def write_shard(path: str | Path, tokens: np.ndarray, vocab_size: int) -> None:
    """Write tokens atomically (temp file + rename), so a crash never leaves half a shard."""
    path = Path(path)
    version = version_for_vocab(vocab_size)
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise BudgetLMError(f"{path}: token ids must lie in [0, {vocab_size}), got {tokens.min()}..{tokens.max()}")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, version, tokens.size)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.dtype(DTYPES[version]).newbyteorder("<"), copy=False).tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_header(path: str | Path) -> tuple[int, int]:
    """(version, token count), checked against the file size."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise BudgetLMError(f"{path}: shard not found") from None
    if len(raw) < HEADER_BYTES:
        raise BudgetLMError(f"{path}: bad shard header: file is {size} bytes, shorter than the 1024-byte header")
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != MAGIC:
        raise BudgetLMError(f"{path}: bad shard header: magic {header[0]} is not {MAGIC} (not an llm.c token shard)")
    version, count = int(header[1]), int(header[2])
    if version not in DTYPES:
        raise BudgetLMError(f"{path}: bad shard header: unsupported version {version} (known: 1=uint16, 2=uint32)")
    expected = HEADER_BYTES + count * np.dtype(DTYPES[version]).itemsize
    if size != expected:
        raise BudgetLMError(f"{path}: bad shard header: says {count} tokens ({expected} bytes) but file has {size} bytes")
    return version, count


def read_shard(path: str | Path) -> np.ndarray:
    """A read-only memmap of the shard's tokens."""
    version, count = read_header(path)
    if count == 0:
        return np.zeros(0, dtype=DTYPES[version])
    return np.memmap(path, dtype=np.dtype(DTYPES[version]).newbyteorder("<"), mode="r",
                     offset=HEADER_BYTES, shape=(count,))


def list_shards(data_dir: str | Path, split: str) -> list[Path]:
    """Shards of a split in order: DIR/{split}_000000.bin, ... (llm.c's *_train_*.bin names work too)."""
    data_dir = Path(data_dir)
    shards = sorted(data_dir.glob(f"{split}_*.bin")) or sorted(data_dir.glob(f"*_{split}_*.bin"))
    if not shards:
        raise BudgetLMError(f"{data_dir}: no '{split}' shards found (run 'budgetlm prepare --out {data_dir}' first)")
    return shards


def load_split(data_dir: str | Path, split: str) -> np.ndarray:
    """All tokens of a split. One shard stays a memmap; several are concatenated in memory."""
    arrays = [read_shard(p) for p in list_shards(data_dir, split)]
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def load_pattern(pattern: str) -> np.ndarray:
    """All tokens of the shards matching a glob (llm.c's -i/-j), in sorted order; a folder means its *.bin."""
    import glob
    p = Path(pattern).expanduser()
    paths = sorted(p.glob("*.bin")) if p.is_dir() else sorted(Path(x) for x in glob.glob(str(p)))
    if not paths:
        raise BudgetLMError(f"{pattern}: no shards match")
    arrays = [read_shard(x) for x in paths]
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

"""Token shards in llm.c's format, so llm.c users can reuse them and we can read theirs.

Layout: a header of 256 little-endian int32 — [0] magic 20240520, [1] version, [2] token
count — then the tokens: uint16 for version 1 (vocabularies up to 65,536), uint32 for
version 2. Shards are read with numpy.memmap: nothing is loaded until it is used, and written
by one ShardWriter (prepare, fineweb and the stream producer all cut their tokens with it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
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


class ShardedTokens:
    """Several shards read as one token array without loading them: slicing copies only the
    tokens asked for (across a shard boundary when needed), so 10B tokens on disk cost each rank
    a few MB of RAM. Offers what the loaders use: len/size, int and step-1 slices, np.asarray."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = [a for a in arrays if a.size]
        self.starts = np.cumsum([0] + [a.size for a in self.arrays])
        self.size = int(self.starts[-1])
        self.dtype = self.arrays[0].dtype if self.arrays else np.dtype(np.uint16)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            i = int(key) + self.size if key < 0 else int(key)
            if not 0 <= i < self.size:
                raise IndexError(f"token index {key} out of range for {self.size} tokens")
            shard = int(np.searchsorted(self.starts, i, side="right")) - 1
            return self.arrays[shard][i - self.starts[shard]]
        if not isinstance(key, slice):
            raise TypeError("ShardedTokens takes an int or a slice")
        start, stop, step = key.indices(self.size)
        if step != 1:
            raise ValueError("ShardedTokens slices must have step 1")
        if stop <= start:
            return np.zeros(0, dtype=self.dtype)
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        last = int(np.searchsorted(self.starts, stop - 1, side="right")) - 1
        parts = [self.arrays[k][max(start - self.starts[k], 0):min(stop, self.starts[k + 1]) - self.starts[k]]
                 for k in range(first, last + 1)]
        return np.asarray(parts[0]) if len(parts) == 1 else np.concatenate(parts)

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate(self.arrays) if self.arrays else np.zeros(0, dtype=self.dtype)
        return out.astype(dtype) if dtype is not None else out


def _joined(arrays: list[np.ndarray]) -> np.ndarray | ShardedTokens:
    return arrays[0] if len(arrays) == 1 else ShardedTokens(arrays)


def load_split(data_dir: str | Path, split: str) -> np.ndarray | ShardedTokens:
    """All tokens of a split, lazily: one shard is a memmap, several a ShardedTokens view of memmaps."""
    return _joined([read_shard(p) for p in list_shards(data_dir, split)])


def load_pattern(pattern: str) -> np.ndarray | ShardedTokens:
    """All tokens of the shards matching a glob (llm.c's -i/-j), in sorted order; a folder means its *.bin."""
    import glob
    p = Path(pattern).expanduser()
    paths = sorted(p.glob("*.bin")) if p.is_dir() else sorted(Path(x) for x in glob.glob(str(p)))
    if not paths:
        raise BudgetLMError(f"{pattern}: no shards match")
    return _joined([read_shard(x) for x in paths])


def split_names(split: str) -> Callable[[int], str]:
    """budgetlm's shard names: {split}_000000.bin, {split}_000001.bin, ..."""
    return lambda index: f"{split}_{index:06d}.bin"


def llmc_names(prefix: str) -> Callable[[int], str]:
    """llm.c's names: shard 0 is validation ({prefix}_val_000000.bin), then {prefix}_train_000001.bin, ..."""
    return lambda index: f"{prefix}_{'val' if index == 0 else 'train'}_{index:06d}.bin"


class ShardWriter:
    """Cuts a token stream, fed in pieces of any size, into shards of `shard_tokens` tokens
    (shard 0 of `first_tokens` when given: llm.c's validation shard), each written atomically.

    The one writer behind prepare, fineweb and the stream producer. `start` and `carry` continue
    a stream whose shards before `start` are on disk and whose unwritten tail is `carry`; close()
    writes that tail as a last, shorter shard, and an empty shard when fewer than `min_shards`
    were written (a split always has a file to read).
    """

    def __init__(self, out_dir: str | Path, vocab_size: int, shard_tokens: int,
                 name: Callable[[int], str] = split_names("train"), first_tokens: int | None = None,
                 start: int = 0, carry: np.ndarray | None = None, min_shards: int = 1) -> None:
        if shard_tokens < 1:  # a zero-token shard never fills
            raise BudgetLMError(f"shard size must be positive, got {shard_tokens}")
        self.out_dir, self.vocab_size, self.name = Path(out_dir), vocab_size, name
        self.shard_tokens, self.first_tokens, self.min_shards = shard_tokens, first_tokens, min_shards
        self.index = start  # the next shard's number
        self.parts: list[np.ndarray] = [] if carry is None or not carry.size else [carry]
        self.fill = sum(p.size for p in self.parts)
        self.total = 0  # tokens added (not counting carry)
        self.written: list[tuple[str, int]] = []  # (file name, tokens) of the shards this writer wrote

    def _target(self) -> int:
        return self.first_tokens if self.index == 0 and self.first_tokens is not None else self.shard_tokens

    def add(self, tokens: np.ndarray) -> int:
        """Buffer tokens, writing every shard they fill; returns the number of shards written."""
        before = len(self.written)
        self.total += tokens.size
        while tokens.size:
            take = tokens[: self._target() - self.fill]
            self.parts.append(take)
            self.fill += take.size
            tokens = tokens[take.size:]
            if self.fill == self._target():
                self._flush()
        return len(self.written) - before

    def pending(self) -> np.ndarray:
        """The buffered tokens no full shard holds yet (the stream saves them to resume from)."""
        if len(self.parts) > 1:
            self.parts = [np.concatenate(self.parts)]
        return self.parts[0] if self.parts else np.zeros(0, dtype=np.uint16)

    def _flush(self) -> None:
        data = self.pending()
        name = self.name(self.index)
        write_shard(self.out_dir / name, data, self.vocab_size)
        self.written.append((name, int(data.size)))
        self.index, self.parts, self.fill = self.index + 1, [], 0

    def close(self) -> None:
        """Write the buffered tail as a last shard (or an empty one if the split has none yet)."""
        if self.fill or self.index < self.min_shards:
            self._flush()

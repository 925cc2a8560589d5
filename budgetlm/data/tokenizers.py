"""Tokenizers behind one small interface: `bpe:N`, `gpt2` and `char`.

Every tokenizer saves to one file (tokenizer.json) that travels with shards and checkpoints,
and knows how many bytes of text each token stands for, so bits-per-byte is exact and
comparable across tokenizers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from budgetlm.errors import BudgetLMError

EOT = "<|endoftext|>"
GPT2_HUB_REPO = "openai-community/gpt2"
TOKENIZER_FILE = "tokenizer.json"


class Tokenizer:
    """encode/decode text, with an end-of-text id that separates documents."""

    spec: str  # what the user asked for, e.g. "bpe:4096"
    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each token id stands for (0 for special tokens)."""
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identity for mismatch checks between checkpoints and data."""
        import hashlib
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def to_json(self) -> str:
        raise NotImplementedError


class HFTokenizer(Tokenizer):
    """Byte-level BPE through the Rust `tokenizers` library (bpe:N and gpt2)."""

    def __init__(self, tok, spec: str) -> None:  # tok: tokenizers.Tokenizer
        self.tok = tok
        self.spec = spec
        self.vocab_size = tok.get_vocab_size()
        eot = tok.token_to_id(EOT)
        if eot is None:
            raise BudgetLMError(f"tokenizer {spec}: has no {EOT} token")
        self.eot_id = eot

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # Rust side runs the batch on all cores.
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        # Byte-level tokens are spelled with one printable character per byte.
        out = np.zeros(self.vocab_size, dtype=np.int64)
        special = {t.content for t in self.tok.get_added_tokens_decoder().values()}
        for token, idx in self.tok.get_vocab().items():
            if token not in special:
                out[idx] = len(token)
        return out

    def to_json(self) -> str:
        return json.dumps({"budgetlm": self.spec, "tokenizer": json.loads(self.tok.to_str())})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())


class CharTokenizer(Tokenizer):
    """One token per character seen in the training text, plus end-of-text."""

    def __init__(self, chars: list[str]) -> None:
        self.spec = "char"
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.eot_id = len(chars)
        self.vocab_size = len(chars) + 1
        self.unk = self.stoi.get(" ", 0)  # unseen characters map to a space rather than failing

    @classmethod
    def train(cls, texts: Iterable[str]) -> "CharTokenizer":
        seen: set[str] = set()
        for t in texts:
            seen.update(t)
        return cls(sorted(seen))

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(c, self.unk) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(EOT if i == self.eot_id else self.chars[i] for i in ids if 0 <= i <= self.eot_id)

    def token_bytes(self) -> np.ndarray:
        return np.array([len(c.encode()) for c in self.chars] + [0], dtype=np.int64)

    def to_json(self) -> str:
        return json.dumps({"budgetlm": "char", "chars": self.chars})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())


def train_bpe(texts: Iterator[str], vocab_size: int) -> HFTokenizer:
    """Byte-level BPE trained in seconds by the `tokenizers` library."""
    from tokenizers import Tokenizer as RustTokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257 + 1:
        raise BudgetLMError(f"--tokenizer bpe:{vocab_size}: need at least 258 tokens (256 bytes + end-of-text)")
    tok = RustTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return HFTokenizer(tok, f"bpe:{vocab_size}")


def _gpt2_from_files(vocab: Path, merges: Path) -> HFTokenizer:
    from tokenizers import Tokenizer as RustTokenizer, decoders, models, pre_tokenizers

    tok = RustTokenizer(models.BPE.from_file(str(vocab), str(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's regex split
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOT])
    return HFTokenizer(tok, "gpt2")


def gpt2_files_dirs() -> list[Path]:
    """Where GPT-2's vocab.json + merges.txt may already be on disk, most specific first."""
    dirs = []
    if os.environ.get("BUDGETLM_GPT2_DIR"):
        dirs.append(Path(os.environ["BUDGETLM_GPT2_DIR"]))
    here = Path(__file__).resolve().parents[2]
    dirs += [here.parent / "shared/data/tokenizers/gpt2", Path.cwd().parent / "shared/data/tokenizers/gpt2"]
    return dirs


def load_gpt2() -> HFTokenizer:
    """GPT-2's exact BPE: local vocab.json + merges.txt, else downloaded from the hub (cached)."""
    for d in gpt2_files_dirs():
        if (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
            return _gpt2_from_files(d / "vocab.json", d / "merges.txt")
    from budgetlm.data.sources import hub_reachable
    if not hub_reachable():  # fail in seconds offline, not after huggingface_hub's retries
        raise BudgetLMError("--tokenizer gpt2: GPT-2's files are not on disk and the Hugging Face hub cannot be "
                            "reached; set BUDGETLM_GPT2_DIR to a folder with vocab.json and merges.txt")
    try:
        from huggingface_hub import hf_hub_download
        vocab = hf_hub_download(GPT2_HUB_REPO, "vocab.json")
        merges = hf_hub_download(GPT2_HUB_REPO, "merges.txt")
    except Exception as e:  # offline, hub down, no permission: say what to do instead
        raise BudgetLMError(f"--tokenizer gpt2: could not download GPT-2 files from the hub ({type(e).__name__}); "
                            f"set BUDGETLM_GPT2_DIR to a folder with vocab.json and merges.txt") from None
    return _gpt2_from_files(Path(vocab), Path(merges))


def build_tokenizer(spec: str, texts: Iterator[str] | None = None) -> Tokenizer:
    """Make the tokenizer named by `spec`; bpe and char learn from `texts`."""
    if spec == "gpt2":
        return load_gpt2()
    if spec == "char":
        return CharTokenizer.train(texts or [])
    if spec.startswith("bpe:"):
        try:
            n = int(spec[4:].lower().replace("k", "000"))
        except ValueError:
            raise BudgetLMError(f"--tokenizer {spec}: expected bpe:N with N an integer, e.g. bpe:4096") from None
        return train_bpe(texts or iter(()), n)
    raise BudgetLMError(f"--tokenizer: unknown tokenizer {spec!r}; use bpe:N, gpt2 or char")


def tokenizer_from_json(text: str, source: str = "tokenizer") -> Tokenizer:
    try:
        data = json.loads(text)
        spec = data["budgetlm"]
    except (ValueError, KeyError, TypeError):
        raise BudgetLMError(f"{source}: not a budgetlm tokenizer file") from None
    if spec == "char":
        return CharTokenizer(data["chars"])
    from tokenizers import Tokenizer as RustTokenizer
    return HFTokenizer(RustTokenizer.from_str(json.dumps(data["tokenizer"])), spec)


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BudgetLMError(f"{path}: tokenizer file not found") from None
    return tokenizer_from_json(text, str(path))

"""Where text comes from. Every source yields documents (stories) lazily, one string each,
so a 5-minute run reads only the part of a 2 GB corpus it can use.

SRC forms: `tinystories` (hub download, cached), `synth` (built-in generator), a `.txt`,
`.jsonl` or `.parquet` file (text and jsonl also compressed: `.xz`, `.gz`, `.zst`, read as
streams), a directory of those, or `hf:OWNER/NAME[:split]` for any hub dataset with a text column.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from budgetlm.errors import BudgetLMError

EOT = "<|endoftext|>"
TINYSTORIES_REPO = "roneneldan/TinyStories"
TINYSTORIES_FILES = {"train": "TinyStoriesV2-GPT4-train.txt", "val": "TinyStoriesV2-GPT4-valid.txt"}
TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
COMPRESSED_SUFFIXES = (".xz", ".gz", ".zst")
_LONE_NEWLINE = re.compile(r"(?<!\n)\n(?!\n)")
_CHUNK = 1 << 20


@dataclass
class Source:
    """A train stream and, when the source has one, a separate validation stream."""

    name: str
    train: "callable"  # () -> Iterator[str]
    val: "callable | None" = None  # None: hold out the tail of train


def split_text(text: str) -> list[str]:
    """Stories separated by <|endoftext|> when present; otherwise a line that follows a
    non-blank line starts a new story (blank lines separate paragraphs inside a story)."""
    parts = text.split(EOT) if EOT in text else _LONE_NEWLINE.split(text)
    return [p.strip() for p in parts if p.strip()]


def data_suffix(path: Path) -> tuple[str, str]:
    """(format, compression) from the name: a.txt.xz -> (".txt", ".xz"), a.jsonl -> (".jsonl", "")."""
    suffixes = path.suffixes[-2:]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        return (suffixes[0] if len(suffixes) == 2 else ""), suffixes[-1]
    return path.suffix, ""


def is_data_file(path: Path) -> bool:
    fmt, comp = data_suffix(path)
    return fmt in TEXT_SUFFIXES and not (comp and fmt == ".parquet")


def open_bytes(path: Path):
    """A byte stream over a plain or compressed file; decompression happens as it is read."""
    comp = data_suffix(path)[1]
    if not comp:
        _check_readable(path)
        return open(path, "rb")
    if not path.exists():
        raise BudgetLMError(f"{path}: file not found")
    if comp == ".zst":
        try:
            import zstandard
        except ImportError:
            raise BudgetLMError(f"{path}: reading .zst files needs the 'zstandard' package (pip install zstandard)") from None
        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    import gzip
    import lzma
    return (lzma.open if comp == ".xz" else gzip.open)(path, "rb")


def open_text(path: Path):
    """A UTF-8 text stream over a plain or compressed file (open_bytes, decoded strictly)."""
    import io
    return io.TextIOWrapper(open_bytes(path), encoding="utf-8", errors="strict")


def iter_txt(path: Path) -> Iterator[str]:
    with _opened(path) as f:
        yield from iter_stream(f, str(path))


class _opened:
    """open_text as a context manager whose decompression errors become one clear line."""

    def __init__(self, path: Path, binary: bool = False) -> None:
        self.path, self.binary = path, binary

    def __enter__(self):
        self.f = open_bytes(self.path) if self.binary else open_text(self.path)
        return self.f

    def __exit__(self, kind, err, tb):
        self.f.close()
        if kind is not None and _is_decompress_error(err):
            raise BudgetLMError(f"{self.path}: not a valid {data_suffix(self.path)[1]} file ({err})") from None
        return False


def _is_decompress_error(err: BaseException) -> bool:
    import gzip
    import lzma
    if isinstance(err, (lzma.LZMAError, gzip.BadGzipFile, EOFError)):
        return True
    return type(err).__module__.startswith("zstandard")


def iter_stream(f, name: str) -> Iterator[str]:
    """Documents from an open text stream, read in 1 MB chunks; a document is yielded only
    once it is complete."""
    head = _read(f, name)
    if not head.strip():
        raise BudgetLMError(f"{name}: file is empty")
    if "\x00" in head:
        raise BudgetLMError(f"{name}: looks binary (NUL bytes), expected UTF-8 text")
    use_eot = EOT in head
    pending = head
    while True:
        chunk = _read(f, name)
        if not chunk:
            break
        pending += chunk
        # Hold back trailing newlines: the next chunk may turn "\n" into a paragraph break.
        body = pending if use_eot else pending.rstrip("\n")
        parts = body.split(EOT) if use_eot else _LONE_NEWLINE.split(body)
        for part in parts[:-1]:  # the last part may continue in the next chunk
            if part.strip():
                yield part.strip()
        pending = parts[-1] + pending[len(body):]
    yield from split_text(pending)


def _read(f, name: str) -> str:
    """The next chunk; a bad byte anywhere in the file (not only the first chunk) names the file."""
    try:
        return f.read(_CHUNK)
    except UnicodeDecodeError as e:
        raise BudgetLMError(f"{name}: not UTF-8 text ({e.reason}, byte {e.start} of a 1 MB chunk)") from None


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise BudgetLMError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise BudgetLMError(f"{path}: file is empty")
    with open(path, "rb") as f:
        head = f.read(4096)
    if b"\x00" in head:
        raise BudgetLMError(f"{path}: looks binary (NUL bytes), expected text")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # a cut multi-byte char at the end is fine
            raise BudgetLMError(f"{path}: not UTF-8 text (bad byte at offset {e.start})") from None


def iter_jsonl(path: Path, field: str = "text") -> Iterator[str]:
    with _opened(path, binary=True) as f:  # decoded line by line, so a bad byte names its line
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BudgetLMError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start} of the line)") from None
            if not line.strip():
                continue
            try:
                text = json.loads(line)[field]
            except (ValueError, KeyError, TypeError):
                raise BudgetLMError(f"{path}:{lineno}: expected a JSON object with a '{field}' field") from None
            if text is not None and not isinstance(text, str):
                raise BudgetLMError(f"{path}:{lineno}: the '{field}' field must be a string, got "
                                    f"{type(text).__name__}")
            if text and text.strip():
                yield text.strip()


def iter_parquet(path: Path, column: str = "text") -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise BudgetLMError(f"{path}: not a readable parquet file ({e})") from None
    if column not in pf.schema_arrow.names:
        raise BudgetLMError(f"{path}: parquet has no '{column}' column (columns: {', '.join(pf.schema_arrow.names)})")
    for batch in pf.iter_batches(columns=[column], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text is not None and not isinstance(text, str):
                raise BudgetLMError(f"{path}: column '{column}' must hold strings, got {type(text).__name__}")
            if text and text.strip():
                yield text.strip()


def iter_path(path: Path) -> Iterator[str]:
    if path.is_dir():
        files = data_files(path)
        if not files:
            raise BudgetLMError(f"{path}: directory has no .txt, .jsonl or .parquet files (plain or .xz/.gz/.zst)")
        for f in files:
            yield from iter_path(f)
        return
    fmt = data_suffix(path)[0]
    if not is_data_file(path):
        raise BudgetLMError(f"--data {path}: unsupported file type '{''.join(path.suffixes[-2:])}' "
                            f"(use .txt, .jsonl or .parquet; text and jsonl may end in .xz, .gz or .zst)")
    if fmt == ".jsonl":
        yield from iter_jsonl(path)
    elif fmt == ".parquet":
        yield from iter_parquet(path)
    else:
        yield from iter_txt(path)


def data_files(path: Path) -> list[Path]:
    """The data files a SRC path stands for, in reading order."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and is_data_file(p))
    return [path]


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick look before any download, so an offline machine learns it in seconds, not after
    huggingface_hub's retries. HF_HUB_OFFLINE=1 means only the local cache is used."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


def tinystories_file(split: str, cache_dir: str | None = None, stream: bool = False):
    """The official TinyStoriesV2 (GPT-4) text: from the local hub cache if there, else
    downloaded (and cached) with huggingface_hub; with `stream`, read lazily over HTTP so a
    short run never fetches the whole 2 GB train file. Returns a path or an open text file."""
    from huggingface_hub import HfFileSystem, hf_hub_download, try_to_load_from_cache

    name = TINYSTORIES_FILES[split]
    cached = try_to_load_from_cache(TINYSTORIES_REPO, name, cache_dir=cache_dir, repo_type="dataset")
    if isinstance(cached, str):
        return Path(cached)
    if not hub_reachable():
        raise BudgetLMError(f"--data tinystories: the Hugging Face hub cannot be reached and {name} is not "
                            f"cached; use --data synth or a local file")
    try:
        if stream:
            return HfFileSystem().open(f"datasets/{TINYSTORIES_REPO}/{name}", "r", encoding="utf-8",
                                       block_size=4 << 20)
        return Path(hf_hub_download(TINYSTORIES_REPO, name, repo_type="dataset", cache_dir=cache_dir))
    except Exception as e:
        raise BudgetLMError(f"--data tinystories: could not download {name} from the Hugging Face hub "
                            f"({type(e).__name__}); use --data synth or a local file") from None


def iter_tinystories(split: str, cache_dir: str | None = None, stream: bool = False) -> Iterator[str]:
    f = tinystories_file(split, cache_dir, stream)
    if isinstance(f, Path):
        yield from iter_txt(f)
        return
    with f:
        yield from iter_stream(f, f"hf://{TINYSTORIES_REPO}/{TINYSTORIES_FILES[split]}")


def iter_hf_dataset(spec: str, split: str) -> Iterator[str]:
    """`hf:OWNER/NAME[:SPLIT]`: the dataset's parquet files fetched with huggingface_hub."""
    from huggingface_hub import HfApi, hf_hub_download

    repo = spec[3:].split(":")[0]
    want = spec[3:].split(":")[1] if ":" in spec[3:] else split
    try:
        files = [f for f in HfApi().list_repo_files(repo, repo_type="dataset") if f.endswith(".parquet")]
    except Exception as e:
        raise BudgetLMError(f"--data {spec}: could not list the dataset on the hub ({type(e).__name__})") from None
    chosen = [f for f in files if want in Path(f).name or f"/{want}/" in f"/{f}"] or files
    if not chosen:
        raise BudgetLMError(f"--data {spec}: the dataset has no parquet files")
    for f in sorted(chosen):
        yield from iter_parquet(Path(hf_hub_download(repo, f, repo_type="dataset")))


def open_source(src: str, seed: int = 0, cache_dir: str | None = None, stream: bool = False) -> Source:
    """Resolve SRC into train (and maybe val) document streams."""
    if src == "synth":
        from budgetlm.data.synth import iter_stories
        # Validation uses a different seed, so no validation story is a training story by construction.
        return Source("synth", lambda: iter_stories(seed), lambda: iter_stories(seed + 1_000_003))
    if src == "tinystories":
        return Source("tinystories", lambda: iter_tinystories("train", cache_dir, stream),
                      lambda: iter_tinystories("val", cache_dir))
    if src.startswith("hf:"):
        if len(src) <= 3 or "/" not in src:
            raise BudgetLMError(f"--data {src}: expected hf:OWNER/NAME")
        return Source(src, lambda: iter_hf_dataset(src, "train"))
    path = Path(src).expanduser()
    if not path.exists():
        raise BudgetLMError(f"--data {src}: no such file or directory, and not one of tinystories, synth, hf:OWNER/NAME")
    if path.is_file() and not is_data_file(path):
        raise BudgetLMError(f"--data {src}: unsupported file type '{''.join(path.suffixes[-2:]) or path.name}' "
                            f"(use .txt, .jsonl or .parquet; text and jsonl may end in .xz, .gz or .zst)")
    return Source(str(path), lambda: iter_path(path))

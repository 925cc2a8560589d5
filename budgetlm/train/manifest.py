"""A checkpoint's manifest: every file's size and SHA-256, written last, checked on load.

A truncated or overwritten file (disk full, a half-copied folder, bit rot) then shows up as a
named mismatch instead of a traceback deep inside safetensors or json, so the loader can fall
back to an older checkpoint. Hashing reads each file once more, from the page cache right after
writing, the files in parallel threads (hashlib releases the GIL). Measured for a 124M model on 2
shared CPU cores, a 1.5 GB checkpoint (weights + AdamW state): save 5.8-6.7 s, of which the manifest
1.0-1.1 s (the pickled state.pt it replaces took 7.1 s); load with verification 1.4 s (1.0 s before).
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT = 1
_CHUNK = 8 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path, names: list[str]) -> Path:
    """Record the listed files of `folder` (sizes and hashes) in folder/manifest.json."""
    with ThreadPoolExecutor(len(names) or 1) as pool:  # hashlib releases the GIL: files hash in parallel
        hashes = list(pool.map(sha256_file, [folder / n for n in names]))
    files = {n: {"bytes": (folder / n).stat().st_size, "sha256": h} for n, h in zip(names, hashes)}
    path = folder / MANIFEST
    path.write_text(json.dumps({"format": FORMAT, "files": files}, indent=1) + "\n")
    return path


def manifest_problem(folder: Path, required: tuple[str, ...], hashes: bool = True) -> str | None:
    """Why folder's files do not match its manifest (None: they all do). `required` must be listed.
    hashes=False checks names and sizes only (cheap: truncated and missing files)."""
    try:
        data = json.loads((folder / MANIFEST).read_text())
        files = data["files"]
        if data.get("format") != FORMAT or not isinstance(files, dict):
            return f"{MANIFEST}: unknown format {data.get('format')!r}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{MANIFEST} unreadable ({type(e).__name__})"
    missing = [n for n in required if n not in files]
    if missing:
        return f"{MANIFEST} does not list {', '.join(missing)}"
    for name, entry in files.items():  # names and sizes first: cheap, and catch truncation
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            return f"{MANIFEST} names {name!r}, not a file of the folder"
        try:
            size = (folder / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        expected = entry.get("bytes") if isinstance(entry, dict) else None
        if size != expected:
            return f"{name} has {size} bytes, the manifest says {expected}"
    if not hashes:
        return None
    with ThreadPoolExecutor(len(files) or 1) as pool:
        hashes = dict(zip(files, pool.map(sha256_file, [folder / n for n in files])))
    for name, entry in files.items():
        if hashes[name] != entry.get("sha256"):
            return f"{name} does not match its SHA-256 in the manifest"
    return None

"""Checkpoints that are written atomically, verified on load, and resume exactly; loading runs no code.

A checkpoint is a folder step_NNNNNNNN: model.safetensors (weights, loadable anywhere),
state.safetensors + state.json (optimizer, RNG, data position, counters: see state_codec, no
pickle), config.json, tokenizer.json and manifest.json (sizes and SHA-256 of the others). It is
written to .tmp_step_N and renamed into place; an existing step_N is first renamed aside
(.old_step_N) and deleted only after the new one is in, so a kill at any moment leaves an intact
checkpoint. `latest` names the newest; it must be a plain step folder name of its own root.

Loading verifies the newest checkpoint against its manifest and falls back to the newest intact
one (one line on stderr). Old checkpoints with state.pt load through torch's weights_only
unpickler with only numpy's array globals allowed; anything else in them is refused.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from budgetlm.config import ModelConfig, from_dict, to_dict
from budgetlm.data.tokenizers import TOKENIZER_FILE, Tokenizer, load_tokenizer
from budgetlm.errors import BudgetLMError
from budgetlm.train import state_codec
from budgetlm.train.manifest import MANIFEST, manifest_problem, write_manifest

LATEST = "latest"
WEIGHTS, CONFIG = "model.safetensors", "config.json"
STATE_TENSORS, STATE_JSON, LEGACY_STATE = "state.safetensors", "state.json", "state.pt"
STEP_NAME = re.compile(r"step_\d{8,}")
T = TypeVar("T")


class UnsafeCheckpointError(BudgetLMError):
    """A state file that could run code when loaded: refused outright, never fallen back from."""


class NoCheckpointError(BudgetLMError):
    """Nothing that looks like a checkpoint at all (as opposed to only broken ones)."""


class _Broken(Exception):
    """A checkpoint folder that cannot be read (the reason is the message): try an older one."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:  # not every platform can fsync a directory
        pass


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights without tied duplicates (safetensors refuses shared storage)."""
    state, seen = {}, set()
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        state[name] = t.detach().contiguous().cpu()
    return state


def nonfinite_weight(weights: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point weight holding NaN or inf, else None."""
    for name, t in weights.items():
        if t.is_floating_point():
            t = t if t.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else t.float()
            # A NaN or inf makes the sum non-finite, so a finite sum clears the tensor (50x faster than
            # isfinite on a 124M model: 0.05 s); a non-finite one may be overflow, so check exactly.
            if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
                return name
    return None


def check_finite(weights: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights of a diverged run (eval, sample and export would only score or ship NaN)."""
    bad = nonfinite_weight(weights)
    if bad is not None:
        raise BudgetLMError(f"{source}: weight {bad} holds NaN/inf: the run that wrote this checkpoint diverged; "
                            "use an earlier checkpoint")


def has_state(ckpt: Path) -> bool:
    """Whether the folder holds training state (so a run can resume from it)."""
    return (ckpt / STATE_JSON).is_file() or (ckpt / LEGACY_STATE).is_file()


# ---- writing ----
def save_checkpoint(ckpt_root: str | Path, step: int, model: torch.nn.Module, model_cfg: ModelConfig,
                    tokenizer: Tokenizer, state: dict[str, Any], keep: int = 2,
                    weights: dict[str, torch.Tensor] | None = None) -> Path:
    """weights: the full state dict when the model's own is sharded (FSDP); default model_state(model).
    Raises BudgetLMError (nothing written, the previous checkpoint still latest) on non-finite weights
    or a failed write (disk full...)."""
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    tidy(root)
    final, tmp = root / f"step_{step:08d}", root / f".tmp_step_{step:08d}"
    weights = model_state(model) if weights is None else {k: v.contiguous() for k, v in weights.items()}
    previous = _latest_name(root)
    kept = f"{previous} stays the latest checkpoint" if previous else "there is no earlier checkpoint"
    bad = nonfinite_weight(weights)
    if bad is not None:
        raise BudgetLMError(f"{final}: not written: weight {bad} holds NaN/inf at step {step}, the run diverged "
                            f"(try a lower --lr); {kept}")
    tensors, doc = state_codec.encode(state)
    try:
        _write_folder(tmp, weights, tensors, doc, model_cfg, tokenizer)
        _install(root, tmp, final)
    except (OSError, SafetensorError) as e:  # safetensors reports a full disk as SafetensorError
        shutil.rmtree(tmp, ignore_errors=True)
        (root / (LATEST + ".tmp")).unlink(missing_ok=True)
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise BudgetLMError(f"{final}: could not write the checkpoint ({why}); temporary files removed, {kept}") \
            from None
    _prune(root, final, keep)
    return final


def _prune(root: Path, final: Path, keep: int) -> None:
    """Keep final and the newest keep-1 other checkpoints that look whole (manifest sizes: no hashing),
    so a truncated newer folder never outlives the intact older one a fallback would need."""
    others = sorted(p for p in root.glob("step_*") if p != final and STEP_NAME.fullmatch(p.name))
    whole = [p for p in others if not (p / MANIFEST).is_file()
             or manifest_problem(p, (WEIGHTS, CONFIG, TOKENIZER_FILE), hashes=False) is None]
    kept = set(whole[len(whole) - max(keep - 1, 0):]) if keep > 1 else set()
    for old in others:
        if old not in kept:
            shutil.rmtree(old, ignore_errors=True)


def _write_folder(tmp: Path, weights: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], doc: Any,
                  model_cfg: ModelConfig, tokenizer: Tokenizer) -> None:
    tmp.mkdir()
    save_file(weights, str(tmp / WEIGHTS))
    save_file(tensors, str(tmp / STATE_TENSORS))
    (tmp / STATE_JSON).write_text(state_codec.dumps(doc))
    (tmp / CONFIG).write_text(json.dumps({"model": to_dict(model_cfg)}, indent=2))
    tokenizer.save(tmp / TOKENIZER_FILE)
    write_manifest(tmp, [WEIGHTS, STATE_TENSORS, STATE_JSON, CONFIG, TOKENIZER_FILE])
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)


def _install(root: Path, tmp: Path, final: Path) -> None:
    """tmp becomes final and `latest`; an existing final is moved aside, not deleted, until then."""
    aside = root / f".old_{final.name}"
    if final.exists():
        os.replace(final, aside)
    try:
        os.replace(tmp, final)
    except OSError:
        if aside.exists() and not final.exists():
            os.replace(aside, final)
        raise
    pointer = root / (LATEST + ".tmp")
    pointer.write_text(final.name)
    os.replace(pointer, root / LATEST)
    _fsync_dir(root)
    shutil.rmtree(aside, ignore_errors=True)


def tidy(root: Path) -> None:
    """Undo what a killed save left: temporary folders go, a step folder moved aside comes back
    when its replacement never arrived. Best effort (a read-only folder is left as it is)."""
    try:
        for p in root.glob(".old_step_*"):
            step = root / p.name.removeprefix(".old_")
            if step.exists():
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.replace(p, step)
        for p in root.glob(".tmp_step_*"):
            shutil.rmtree(p, ignore_errors=True)
        (root / (LATEST + ".tmp")).unlink(missing_ok=True)
    except OSError:
        pass


# ---- finding the checkpoint to use ----
def _latest_name(root: Path) -> str | None:
    """The step folder `latest` names, if it is a plain step folder name (else a warning, None)."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError):
        name = "<unreadable>"
    if STEP_NAME.fullmatch(name):
        return name
    print(f"budgetlm: warning: ignoring {pointer}: {name[:80]!r} is not a step folder of {root}", file=sys.stderr)
    return None


def _step_of(name: str) -> int:
    return int(name.rsplit("_", 1)[1])


def _candidates(root: Path) -> list[Path]:
    """root's checkpoints to try, best first: what `latest` names, then step folders newest first
    (a folder moved aside by a killed save counts as its step)."""
    try:
        entries = [p for p in root.iterdir() if STEP_NAME.fullmatch(p.name.removeprefix(".old_"))]
    except OSError:
        return []
    steps = {p.name: p for p in entries if not p.name.startswith(".old_")}
    for p in entries:
        steps.setdefault(p.name.removeprefix(".old_"), p)
    order = sorted(steps, key=_step_of, reverse=True)
    first = _latest_name(root)
    if first is not None:
        order = [first] + [n for n in order if n != first]
    return [steps.get(n, root / n) for n in order]


def _is_checkpoint_folder(p: Path) -> bool:
    return (p / WEIGHTS).is_file() or (p / MANIFEST).is_file()


def _problem(ckpt: Path, root: Path | None) -> str | None:
    """Why ckpt cannot be used (None: it looks intact). root: the folder it must lie directly in."""
    if root is not None and (ckpt.is_symlink() or ckpt.resolve().parent != root.resolve()):
        return "a link out of its checkpoints folder"
    if not ckpt.is_dir():
        return "missing"
    if (ckpt / MANIFEST).is_file():
        return manifest_problem(ckpt, (WEIGHTS, CONFIG, TOKENIZER_FILE))
    if not (ckpt / WEIGHTS).is_file():
        return f"no {WEIGHTS}"
    return None  # an older checkpoint without manifest: its files are checked as they load


def _pick(path: str | Path, use: Callable[[Path], T]) -> T:
    """use(checkpoint) for the best intact checkpoint that `path` (a checkpoint, its root, or a run
    folder) leads to; a broken newest one is reported on stderr and an older one used."""
    p = Path(path)
    if _is_checkpoint_folder(p):  # named explicitly: no silent substitute
        problem = _problem(p, None)
        if problem:
            raise BudgetLMError(f"{p}: broken checkpoint ({problem})")
        try:
            return use(p)
        except _Broken as e:
            raise BudgetLMError(f"{p}: broken checkpoint ({e})") from None
    for root in (p, p / "checkpoints"):
        candidates = _candidates(root) if root.is_dir() else []
        if not candidates:
            continue
        broken: list[str] = []
        for ckpt in candidates:
            problem = _problem(ckpt, root)
            if problem is None:
                try:
                    result = use(ckpt)
                except _Broken as e:
                    problem = str(e)
                else:
                    if broken:
                        print(f"budgetlm: warning: broken checkpoint {'; '.join(broken)}; using {ckpt}",
                              file=sys.stderr)
                    return result
            broken.append(f"{ckpt} ({problem})")
        raise BudgetLMError(f"{p}: no intact checkpoint found: {'; '.join(broken)}")
    raise NoCheckpointError(f"{p}: no checkpoint found (expected {WEIGHTS} or a '{LATEST}' pointer)")


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder to use from itself, its parent checkpoints/ folder, or a run folder."""
    return _pick(path, lambda ckpt: ckpt)


# ---- reading ----
def load_model_config(ckpt: Path) -> ModelConfig:
    try:
        data = json.loads((ckpt / CONFIG).read_text())
        return from_dict(ModelConfig, data["model"], f"{ckpt / CONFIG}")
    except (FileNotFoundError, KeyError, ValueError, TypeError):
        raise BudgetLMError(f"{ckpt / CONFIG}: missing or not a budgetlm checkpoint config") from None


def _legacy_globals() -> list[Any]:
    """Exactly what an old state.pt's numpy RNG state (an ndarray of uint32) needs to unpickle."""
    core = getattr(np, "_core", None) or np.core
    return [np.ndarray, np.dtype, core.multiarray._reconstruct, type(np.dtype(np.uint32))]


def load_legacy_state(path: Path) -> dict[str, Any]:
    """An old pickled state.pt, through torch's weights_only unpickler; a file that needs any other
    object (a crafted file could run code) raises UnsafeCheckpointError, unread."""
    try:
        with torch.serialization.safe_globals(_legacy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [x.strip() for x in str(e).splitlines() if "Unsupported global" in x or "but got" in x]
        if not lines:  # not a refused object: a damaged file (the caller falls back to an older checkpoint)
            raise ValueError(f"{path.name}: not a readable state file") from None
        detail = lines[0].removeprefix("WeightsUnpickler error: ")
        detail = detail.split(" was not")[0][:160]
        raise UnsafeCheckpointError(
            f"{path}: refused: this old-format state file holds objects other than tensors, numbers and numpy "
            f"arrays, so loading it could run code ({detail}). budgetlm writes state as {STATE_TENSORS} + "
            f"{STATE_JSON} now; retrain, or load the file yourself only if you trust its source") from None


def _load_state(ckpt: Path) -> dict[str, Any] | None:
    if (ckpt / STATE_JSON).is_file():
        tensors = load_file(str(ckpt / STATE_TENSORS)) if (ckpt / STATE_TENSORS).is_file() else {}
        return state_codec.decode(tensors, state_codec.loads((ckpt / STATE_JSON).read_text()))
    if (ckpt / LEGACY_STATE).is_file():
        return load_legacy_state(ckpt / LEGACY_STATE)
    return None


def saved_train_config(path: str | Path) -> dict[str, Any] | None:
    """The train config saved with the checkpoint `path` leads to (a checkpoint, its root or a run
    folder), as written (nested dict), or None where there is none to read."""
    def read(ckpt: Path) -> dict[str, Any] | None:
        try:
            cfg = state_codec.loads((ckpt / STATE_JSON).read_text())["train_config"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return cfg if isinstance(cfg, dict) else None
    try:
        return _pick(path, read)
    except BudgetLMError:  # no checkpoint there yet
        return None


def trained_seq_len(ckpt: Path) -> int | None:
    """The sequence length the checkpoint was trained with, or None. The model's block_size can be
    longer (the default 256 under a 64-token run), and scoring windows of another length is another
    number: longer RoPE windows read 3e-4 lower than the run's own eval."""
    seq = (saved_train_config(ckpt) or {}).get("seq_len")
    return seq if isinstance(seq, int) and seq > 0 else None


def _check_config_fits_weights(ckpt: Path, cfg: ModelConfig, weights: dict[str, torch.Tensor]) -> None:
    """Before anything builds the model: a config.json that asks for more parameters than its
    weights file holds is not this checkpoint's (an edited one asked for a 51.5 GB model). The count
    comes from a build on the meta device, which allocates nothing."""
    from budgetlm.plan.memory import count_params
    needed, stored = count_params(cfg), sum(t.numel() for t in weights.values())
    if needed > stored:
        raise BudgetLMError(f"{ckpt / 'config.json'} describes a model of {needed:,} parameters, but "
                            f"{ckpt / WEIGHTS} holds {stored:,}: the config does not belong to these weights")


def _read(ckpt: Path, with_state: bool):
    try:
        cfg = load_model_config(ckpt)
        weights = load_file(str(ckpt / WEIGHTS))
        _check_config_fits_weights(ckpt, cfg, weights)
        tok = load_tokenizer(ckpt / TOKENIZER_FILE)
        state = _load_state(ckpt) if with_state else None
    except UnsafeCheckpointError:
        raise
    except Exception as e:  # whatever a damaged file makes safetensors, json or torch raise
        raise _Broken(f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}") \
            from None
    return ckpt, cfg, weights, tok, state


def load_checkpoint(path: str | Path, with_state: bool = True):
    """(checkpoint folder, model config, weights, tokenizer, training state or None).
    with_state (resuming, i.e. the run's writer): leftovers of a killed save are tidied first."""
    if with_state:
        for root in (Path(path), Path(path) / "checkpoints"):
            if root.is_dir() and not _is_checkpoint_folder(root):
                tidy(root)
    return _pick(path, lambda ckpt: _read(ckpt, with_state))


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Tied head weights are stored once; anything else missing is a real mismatch.
    missing = [m for m in missing if not (m == "lm_head.weight" and getattr(model, "cfg", None)
                                          and model.cfg.tie_embeddings)]
    if missing or unexpected:
        raise BudgetLMError(f"{source}: weights do not match the model (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")

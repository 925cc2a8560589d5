"""Checkpoints that are written atomically and resume exactly.

A checkpoint is a folder: model.safetensors (weights, loadable anywhere), state.pt
(optimizer, RNG, data position, counters), config.json, tokenizer.json. It is written to a
temporary folder and renamed into place, and `latest` is replaced atomically, so a crash at
any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from budgetlm.config import ModelConfig, from_dict, to_dict
from budgetlm.data.tokenizers import TOKENIZER_FILE, Tokenizer, load_tokenizer
from budgetlm.errors import BudgetLMError

LATEST = "latest"


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


def save_checkpoint(ckpt_root: str | Path, step: int, model: torch.nn.Module, model_cfg: ModelConfig,
                    tokenizer: Tokenizer, state: dict[str, Any], keep: int = 2,
                    weights: dict[str, torch.Tensor] | None = None) -> Path:
    """weights: the full state dict when the model's own is sharded (FSDP); default model_state(model)."""
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(model_state(model) if weights is None else {k: v.contiguous() for k, v in weights.items()},
              str(tmp / "model.safetensors"))
    torch.save(state, tmp / "state.pt")
    (tmp / "config.json").write_text(json.dumps({"model": to_dict(model_cfg)}, indent=2))
    tokenizer.save(tmp / TOKENIZER_FILE)
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = root / (LATEST + ".tmp")
    pointer.write_text(final.name)
    os.replace(pointer, root / LATEST)
    _fsync_dir(root)
    for old in sorted(p for p in root.glob("step_*") if p != final)[:-max(keep - 1, 0) or None]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from itself, its parent checkpoints/ folder, or a run folder."""
    p = Path(path)
    for root in (p, p / "checkpoints"):
        if (root / "model.safetensors").is_file():
            return root
        if (root / LATEST).is_file():
            target = root / (root / LATEST).read_text().strip()
            if (target / "model.safetensors").is_file():
                return target
    raise BudgetLMError(f"{p}: no checkpoint found (expected model.safetensors or a '{LATEST}' pointer)")


def load_model_config(ckpt: Path) -> ModelConfig:
    try:
        data = json.loads((ckpt / "config.json").read_text())
        return from_dict(ModelConfig, data["model"], f"{ckpt / 'config.json'}")
    except (FileNotFoundError, KeyError, ValueError):
        raise BudgetLMError(f"{ckpt / 'config.json'}: missing or not a budgetlm checkpoint config") from None


def load_checkpoint(path: str | Path, with_state: bool = True):
    """(checkpoint folder, model config, weights, tokenizer, training state or None)."""
    ckpt = resolve_checkpoint(path)
    cfg = load_model_config(ckpt)
    weights = load_file(str(ckpt / "model.safetensors"))
    tok = load_tokenizer(ckpt / TOKENIZER_FILE)
    state = None
    if with_state and (ckpt / "state.pt").is_file():
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
    return ckpt, cfg, weights, tok, state


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Tied head weights are stored once; anything else missing is a real mismatch.
    missing = [m for m in missing if not (m == "lm_head.weight" and getattr(model, "cfg", None)
                                          and model.cfg.tie_embeddings)]
    if missing or unexpected:
        raise BudgetLMError(f"{source}: weights do not match the model (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")

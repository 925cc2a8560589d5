"""Training state as (tensors, JSON) and back, exactly, with no pickle: loading runs no code.

A nested tree of dict / list / tuple / int / float / str / bool / None / torch.Tensor /
numpy array (or numpy scalar) becomes a JSON document plus a flat {name: tensor} dict for
safetensors. Anything JSON cannot say exactly is a one-key marker object:

    {"__tensor__": "t3"}                          a torch tensor, stored as tensors["t3"]
    {"__ndarray__": ["t4", "<u4", [624]]}         numpy array: raw bytes in tensors["t4"], dtype, shape
    {"__npscalar__": ["t5", "<f8"]}               numpy scalar (a 0-d array's bytes)
    {"__tuple__": [...]}                          a tuple (JSON has only lists)
    {"__dict__": [[key, value], ...]}             a dict with non-str keys (optimizer state's ints)
    {"__float__": "nan" | "inf" | "-inf"}         non-finite floats (not standard JSON)

A plain dict whose only key happens to be a marker name is written as "__dict__" too, so the
decoding is never ambiguous. Tensors come back on the CPU (as torch.load(map_location="cpu") did).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch

MARKERS = ("__tensor__", "__ndarray__", "__npscalar__", "__tuple__", "__dict__", "__float__")
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class StateCodecError(ValueError):
    """The tree holds a type the codec cannot store, or the document is not one it wrote."""


def encode(tree: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """(tensors for safetensors, JSON-able document) that decode() turns back into `tree`."""
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()  # safetensors refuses tensors sharing memory: those get their own copy

    def add(t: torch.Tensor) -> str:
        name = f"t{len(tensors)}"
        t = t.detach().cpu().contiguous()
        if t.numel() and t.untyped_storage().data_ptr() in storages:
            t = t.clone()
        if t.numel():
            storages.add(t.untyped_storage().data_ptr())
        tensors[name] = t
        return name

    def enc(x: Any, where: str) -> Any:
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, int):
            return int(x)  # an IntEnum or the like becomes a plain int
        if isinstance(x, float):
            return float(x) if math.isfinite(x) else {"__float__": "nan" if math.isnan(x) else
                                                      ("inf" if x > 0 else "-inf")}
        if isinstance(x, torch.Tensor):
            if type(x) is not torch.Tensor and not isinstance(x, torch.nn.Parameter):
                raise StateCodecError(f"{where}: cannot store tensor subclass {type(x).__name__}")
            return {"__tensor__": add(x)}
        if isinstance(x, np.ndarray):
            if x.dtype.hasobject:
                raise StateCodecError(f"{where}: cannot store a numpy array of Python objects")
            raw = torch.frombuffer(bytearray(np.ascontiguousarray(x).tobytes()), dtype=torch.uint8) \
                if x.nbytes else torch.zeros(0, dtype=torch.uint8)
            return {"__ndarray__": [add(raw), x.dtype.str, list(x.shape)]}
        if isinstance(x, np.generic) and not x.dtype.hasobject:
            raw = torch.frombuffer(bytearray(np.asarray(x).tobytes()), dtype=torch.uint8)
            return {"__npscalar__": [add(raw), x.dtype.str]}
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v, f"{where}[{i}]") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [enc(v, f"{where}[{i}]") for i, v in enumerate(x)]
        if isinstance(x, dict):
            if all(isinstance(k, str) for k in x) and not (len(x) == 1 and next(iter(x)) in MARKERS):
                return {k: enc(v, f"{where}[{k!r}]") for k, v in x.items()}
            return {"__dict__": [[enc(k, f"{where} key"), enc(v, f"{where}[{k!r}]")] for k, v in x.items()]}
        raise StateCodecError(f"{where}: cannot store {type(x).__name__} (only dict, list, tuple, int, float, "
                              "str, bool, None, tensors and numpy arrays)")

    return tensors, enc(tree, "state")


def decode(tensors: dict[str, torch.Tensor], doc: Any) -> Any:
    """The tree encode() was given, from its two halves."""

    def tensor(name: Any) -> torch.Tensor:
        if not isinstance(name, str) or name not in tensors:
            raise StateCodecError(f"document names tensor {name!r}, which the tensor file does not hold")
        return tensors[name]

    def array(name: Any, dtype: str, shape: Any) -> np.ndarray:
        dt = np.dtype(dtype)
        if dt.hasobject:
            raise StateCodecError("numpy arrays of Python objects are not stored")
        return np.frombuffer(tensor(name).numpy().tobytes(), dtype=dt).reshape(shape).copy()

    def dec(x: Any) -> Any:
        if isinstance(x, list):
            return [dec(v) for v in x]
        if not isinstance(x, dict):
            return x
        if len(x) == 1 and next(iter(x)) in MARKERS:
            tag, val = next(iter(x.items()))
            if tag == "__tensor__":
                return tensor(val)
            if tag == "__ndarray__":
                return array(*val)
            if tag == "__npscalar__":
                return array(val[0], val[1], ())[()]
            if tag == "__tuple__":
                return tuple(dec(v) for v in val)
            if tag == "__dict__":
                return {_key(dec(k)): dec(v) for k, v in val}
            if tag == "__float__" and val in _NONFINITE:
                return _NONFINITE[val]
            raise StateCodecError(f"bad {tag} entry {val!r}")
        return {k: dec(v) for k, v in x.items()}

    try:
        return dec(doc)
    except (TypeError, ValueError, IndexError) as e:
        if isinstance(e, StateCodecError):
            raise
        raise StateCodecError(f"malformed state document: {e}") from None


def _key(k: Any) -> Any:
    if isinstance(k, list):  # lists cannot be dict keys, so no encoder wrote one
        raise StateCodecError("malformed state document: a list as a dict key")
    return k


def dumps(doc: Any) -> str:
    """Strict JSON (non-finite floats are already markers)."""
    return json.dumps(doc, allow_nan=False, separators=(",", ":"))


def loads(text: str) -> Any:
    def refuse(token: str) -> Any:
        raise StateCodecError(f"non-standard JSON constant {token}")
    return json.loads(text, parse_constant=refuse)

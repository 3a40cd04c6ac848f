"""Shard files of a hidden-state store: their names, their atomic writing, the sidecar that marks a
finished one (what an interrupted extraction resumes from) and the header check made at open.

:mod:`onejump.store` describes the folder's layout and reads the store through these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from .errors import NumericalError, StoreError
from .io import atomic_write_text, save_safetensors, sha256_file

_META_KEYS = ("sample_id", "split", "position", "target", "token_offsets")
_REQUIRED_KEYS = ("hidden", "tokens", *_META_KEYS)
_PER_SAMPLE = ("sample_id", "split", "position", "target")
_NEXT = "next_token"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def write_shard(folder: Path, index: int, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Write one shard atomically, then its sidecar JSON; return the sidecar's content."""
    hidden = tensors["hidden"]
    if not torch.isfinite(hidden).all():
        bad = (~torch.isfinite(hidden)).nonzero()[0].tolist()
        sample = int(tensors["sample_id"][bad[0]])
        raise NumericalError(
            f"non-finite hidden state at sample {sample}, level {bad[1]} in store dtype {hidden.dtype} "
            "(fp16 overflow? use --store-dtype float32 or bfloat16)"
        )
    path = folder / shard_name(index)
    save_safetensors(tensors, path)
    info = {"file": path.name, "count": int(hidden.shape[0]), "bytes": path.stat().st_size,
            "sha256": sha256_file(path)}
    atomic_write_text(folder / f"shard-{index:05d}.json", json.dumps(info))
    return info


def finished_shard(folder: Path, index: int) -> dict[str, Any] | None:
    """The sidecar of a shard that was completely written, else None."""
    side = folder / f"shard-{index:05d}.json"
    path = folder / shard_name(index)
    if not side.is_file() or not path.is_file():
        return None
    try:
        info = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(info, dict) or info.get("bytes") != path.stat().st_size:
        return None
    return info


@dataclass
class _Shard:
    path: Path
    count: int
    meta: dict[str, np.ndarray]
    num_tokens: int = 0


def check_shard(path: Path, count: int, num_levels: int, hidden: int, dtype: torch.dtype,
                has_next: bool) -> _Shard:
    """A shard's header checked against its manifest entry; its per-sample metadata read."""
    required = (*_REQUIRED_KEYS, _NEXT) if has_next else _REQUIRED_KEYS
    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = set(fh.keys())
            missing = [k for k in required if k not in keys]
            if missing:
                raise StoreError(f"store shard {path.name} lacks {', '.join(missing)}")
            sl = fh.get_slice("hidden")
            shape = tuple(sl.get_shape())
            if shape != (count, num_levels, hidden):
                raise StoreError(f"store shard {path.name}: hidden has shape {shape}, expected "
                                 f"{(count, num_levels, hidden)}")
            if sl.get_dtype() != {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}[dtype]:
                raise StoreError(f"store shard {path.name}: hidden has dtype {sl.get_dtype()}, "
                                 f"expected {dtype}")
            meta = {k: fh.get_tensor(k).numpy() for k in required if k not in ("hidden", "tokens")}
            num_tokens = int(fh.get_slice("tokens").get_shape()[0])
    except StoreError:
        raise
    except Exception as exc:  # safetensors raises its own error types for malformed headers
        raise StoreError(f"store shard {path.name} is unreadable: {exc}") from None
    for k in (*_PER_SAMPLE, _NEXT) if has_next else _PER_SAMPLE:
        if meta[k].shape != (count,) or meta[k].dtype.kind not in "iu":
            raise StoreError(f"store shard {path.name}: '{k}' has shape {meta[k].shape} / dtype {meta[k].dtype}")
    offsets = meta["token_offsets"]
    if offsets.shape != (count + 1,) or (count and int(offsets[-1]) != num_tokens):
        raise StoreError(f"store shard {path.name}: token_offsets disagree with its tokens")
    return _Shard(path, count, meta, num_tokens)

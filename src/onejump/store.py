"""The on-disk hidden-state store: safetensors shards plus a JSON manifest.

Layout of a store folder::

    plan.json            what is being extracted (model fingerprint, seed, counts); written first
    shard-00000.safetensors, shard-00000.json, ...   one shard = a fixed group of samples
    manifest.json        written last: the store is complete only when it exists

Each shard holds ``hidden`` (n, K+1, H) in the store dtype and, per sample, ``sample_id`` (index of
the sentence), ``split`` (0 train, 1 test), ``position`` (token index of the sampled position),
``target`` (t*, the model's final top-1 token), and the prefix token ids (``tokens`` flat with
``token_offsets``). Every file is written to a temporary name and renamed, so a killed run never
leaves a file that looks complete. Nothing here unpickles anything.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import NumericalError, StoreError
from .io import _cleanup, _disk_error, atomic_write_text, sha256_file

FORMAT = "onejump-store"
VERSION = 1
SPLITS = {"train": 0, "test": 1}
STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_META_KEYS = ("sample_id", "split", "position", "target", "token_offsets")
_REQUIRED_KEYS = ("hidden", "tokens", *_META_KEYS)


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
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _cleanup(tmp)
        raise _disk_error(path, exc) from None
    except BaseException:
        _cleanup(tmp)
        raise
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


class HiddenStateStore:
    """Read access to a finished store. Open with :meth:`open`."""

    def __init__(self, path: Path, manifest: dict[str, Any], shards: list[_Shard]):
        self.path = Path(path)
        self.manifest = manifest
        self._shards = shards
        meta = {k: np.concatenate([s.meta[k] for s in shards]) for k in ("sample_id", "split", "position", "target")}
        self._meta = meta
        self._shard_of = np.concatenate([np.full(s.count, i) for i, s in enumerate(shards)]) if shards else np.zeros(0)
        self._row_in_shard = np.concatenate([np.arange(s.count) for s in shards]) if shards else np.zeros(0)

    # ---- opening -----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, fingerprint: str | None = None, verify: bool = True) -> HiddenStateStore:
        """Open and check a store folder.

        Raises :class:`StoreError` if the folder is missing, unfinished, truncated, corrupt (sha256,
        with ``verify``), names files outside itself, has wrong shapes/dtypes, or (with
        ``fingerprint``) belongs to another model.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise StoreError(f"store folder not found: {folder}")
        mpath = folder / "manifest.json"
        if not mpath.is_file():
            hint = " (extraction unfinished: rerun it to resume)" if (folder / "plan.json").is_file() else ""
            raise StoreError(f"{folder} is not a finished onejump store: manifest.json missing{hint}")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{mpath} is not valid JSON: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise StoreError(f"{mpath} is not an onejump store manifest")
        if manifest.get("version") != VERSION:
            raise StoreError(f"store format version {manifest.get('version')} is not supported (expected {VERSION})")
        if fingerprint is not None and manifest.get("fingerprint") != fingerprint:
            raise StoreError(
                f"store {folder} was extracted from another model (weights hash {manifest.get('fingerprint')}, "
                f"this model {fingerprint})"
            )
        try:
            num_levels, hidden = int(manifest["num_levels"]), int(manifest["hidden_size"])
            dtype = STORE_DTYPES[manifest["dtype"]]
            entries = list(manifest["shards"])
            if num_levels < 1 or hidden < 1 or not all(isinstance(e, dict) for e in entries):
                raise ValueError
            for e in entries:
                e["count"] = int(e.get("count", -1))
        except (KeyError, TypeError, ValueError):
            raise StoreError(f"{mpath} lacks num_levels, hidden_size, dtype or shards, or has bad values") from None
        shards: list[_Shard] = []
        root = folder.resolve()
        for entry in entries:
            shard_path = (folder / str(entry.get("file", ""))).resolve()
            if shard_path.parent != root:
                raise StoreError(f"manifest names a file outside its folder: {entry.get('file')!r}")
            if not shard_path.is_file():
                raise StoreError(f"store shard missing: {shard_path.name}")
            if shard_path.stat().st_size != entry.get("bytes"):
                raise StoreError(f"store shard {shard_path.name} is truncated or was changed (size differs)")
            if verify and sha256_file(shard_path) != entry.get("sha256"):
                raise StoreError(f"store shard {shard_path.name} is corrupt (sha256 differs)")
            shards.append(cls._check_shard(shard_path, entry["count"], num_levels, hidden, dtype))
        total = sum(s.count for s in shards)
        if total != manifest.get("num_samples"):
            raise StoreError(f"store holds {total} samples but its manifest says {manifest.get('num_samples')}")
        return cls(folder, manifest, shards)

    @staticmethod
    def _check_shard(path: Path, count: int, num_levels: int, hidden: int, dtype: torch.dtype) -> _Shard:
        try:
            with safe_open(str(path), framework="pt") as fh:
                keys = set(fh.keys())
                missing = [k for k in _REQUIRED_KEYS if k not in keys]
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
                meta = {k: fh.get_tensor(k).numpy() for k in _META_KEYS}
        except StoreError:
            raise
        except Exception as exc:  # safetensors raises its own error types for malformed headers
            raise StoreError(f"store shard {path.name} is unreadable: {exc}") from None
        for k in ("sample_id", "split", "position", "target"):
            if meta[k].shape != (count,) or meta[k].dtype.kind not in "iu":
                raise StoreError(f"store shard {path.name}: '{k}' has shape {meta[k].shape} / dtype {meta[k].dtype}")
        if meta["token_offsets"].shape != (count + 1,):
            raise StoreError(f"store shard {path.name}: token_offsets has the wrong shape")
        return _Shard(path, count, meta)

    # ---- sizes and metadata -------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        return int(self.manifest["num_samples"])

    @property
    def num_levels(self) -> int:
        """K+1 (levels 0..K)."""
        return int(self.manifest["num_levels"])

    @property
    def num_blocks(self) -> int:
        """K."""
        return self.num_levels - 1

    @property
    def hidden_size(self) -> int:
        return int(self.manifest["hidden_size"])

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    def indices(self, split: str | None = None) -> np.ndarray:
        """Row indices of a split ("train", "test") or of all rows, in store order."""
        if split is None:
            return np.arange(self.num_samples)
        if split not in SPLITS:
            raise StoreError(f"unknown split '{split}'; use train or test")
        return np.nonzero(self._meta["split"] == SPLITS[split])[0]

    def meta(self, key: str, split: str | None = None) -> np.ndarray:
        """Per-sample ``sample_id``, ``split``, ``position`` or ``target`` for a split."""
        return self._meta[key][self.indices(split)]

    def targets(self, split: str | None = None) -> torch.Tensor:
        """t*, the model's final top-1 token, per sample."""
        return torch.from_numpy(self.meta("target", split).astype(np.int64))

    def prefix_tokens(self, row: int) -> list[int]:
        """Token ids of the prefix of store row ``row`` (up to and including the sampled position)."""
        shard = self._shards[int(self._shard_of[row])]
        r = int(self._row_in_shard[row])
        off = shard.meta["token_offsets"]
        with safe_open(str(shard.path), framework="pt") as fh:
            return fh.get_slice("tokens")[int(off[r]):int(off[r + 1])].tolist()

    # ---- hidden states --------------------------------------------------------------------------
    def rows_by_shard(self, rows: np.ndarray) -> list[np.ndarray]:
        """Group store rows by the shard holding them: one ascending array per shard, in shard order
        (shards holding none of the rows are left out). Lets a reader fetch whole shards at a time."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if rows.size and (rows[0] < 0 or rows[-1] >= self.num_samples):
            raise StoreError(f"store rows out of range 0..{self.num_samples - 1}")
        shard = self._shard_of[rows]
        cuts = np.nonzero(np.diff(shard))[0] + 1
        return [part for part in np.split(rows, cuts) if part.size]

    def read_rows(self, rows: np.ndarray, dtype: torch.dtype = torch.float32,
                  out: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (n, K+1, H) of the given store rows, in the given order.

        Reads each shard once through its memory map, copying runs of consecutive rows with one
        slice each; nothing else of the store is held. ``out`` (at least n rows, ``dtype``) is
        filled and its first n rows returned, so a caller can reuse one buffer.
        """
        rows = np.asarray(rows, dtype=np.int64)
        n = len(rows)
        if n and (rows.min() < 0 or rows.max() >= self.num_samples):
            raise StoreError(f"store rows out of range 0..{self.num_samples - 1}")
        shape = (n, self.num_levels, self.hidden_size)
        out = torch.empty(shape, dtype=dtype) if out is None else out[:n]
        if tuple(out.shape) != shape or out.dtype != dtype:
            raise ValueError(f"out must hold {shape} {dtype}, got {tuple(out.shape)} {out.dtype}")
        shard_of = self._shard_of[rows] if n else np.zeros(0, np.int64)
        for s in np.unique(shard_of):
            pos = np.nonzero(shard_of == s)[0]
            local = self._row_in_shard[rows[pos]].astype(np.int64)
            order = np.argsort(local, kind="stable")
            pos, local = pos[order], local[order]
            cuts = np.nonzero(np.diff(local) != 1)[0] + 1
            with safe_open(str(self._shards[int(s)].path), framework="pt") as fh:
                sl = fh.get_slice("hidden")
                for p, loc in zip(np.split(pos, cuts), np.split(local, cuts)):
                    block = sl[int(loc[0]):int(loc[-1]) + 1]
                    if (np.diff(p) == 1).all():  # the run lands on consecutive output rows
                        out[int(p[0]):int(p[-1]) + 1] = block
                    else:
                        out[torch.from_numpy(p)] = block.to(dtype)
        return out

    def hidden(self, split: str | None = None, levels: list[int] | slice | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """All hidden states of a split in memory, shape (n, len(levels), H)."""
        chunks = [h for _, h in self.iter_chunks(split, chunk_size=1 << 30, levels=levels, dtype=dtype)]
        if not chunks:
            n_levels = self.num_levels if levels is None else len(range(self.num_levels)[levels]) \
                if isinstance(levels, slice) else len(levels)
            return torch.zeros(0, n_levels, self.hidden_size, dtype=dtype)
        return torch.cat(chunks) if len(chunks) > 1 else chunks[0]

    def iter_chunks(self, split: str | None = None, chunk_size: int = 4096,
                    levels: list[int] | slice | None = None,
                    dtype: torch.dtype = torch.float32) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Stream ``(rows, hidden)`` chunks of at most ``chunk_size`` samples from the memory-mapped shards.

        Memory stays bounded by the chunk, whatever the store's size.
        """
        want = None if split is None else SPLITS[split]
        offset = 0
        for shard in self._shards:
            rows = np.arange(offset, offset + shard.count)
            mask = np.ones(shard.count, bool) if want is None else shard.meta["split"] == want
            offset += shard.count
            if not mask.any():
                continue
            local = np.nonzero(mask)[0]
            with safe_open(str(shard.path), framework="pt") as fh:
                sl = fh.get_slice("hidden")
                for start in range(0, len(local), chunk_size):
                    part = local[start:start + chunk_size]
                    lo, hi = int(part[0]), int(part[-1]) + 1
                    block = sl[lo:hi]
                    block = block[torch.from_numpy(part - lo)] if len(part) != hi - lo else block
                    if levels is not None:
                        block = block[:, levels]
                    yield rows[part], block.to(dtype)


def store_nbytes(num_samples: int, num_levels: int, hidden: int, dtype: str = "float32") -> int:
    """Bytes taken by the hidden states of a store (for planning)."""
    return num_samples * num_levels * hidden * torch.tensor([], dtype=STORE_DTYPES[dtype]).element_size()

"""The on-disk hidden-state store: safetensors shards plus a JSON manifest.

Layout of a store folder::

    plan.json            what is being extracted (model fingerprint, seed, counts); written first
    shard-00000.safetensors, shard-00000.json, ...   one shard = a fixed group of samples
    manifest.json        written last: the store is complete only when it exists

Each shard holds ``hidden`` (n, K+1, H) in the store dtype and, per sample (a row: one position of
one sentence), ``sample_id`` (index of the sentence: the rows of one sentence share it),
``split`` (0 train, 1 test), ``position`` (token index of the kept position),
``target`` (t*, the model's final top-1 token), ``next_token`` (the sentence's real next token
after the sampled position, -1 where that position is the sentence's last token; a store may lack
it, and then has no cross-entropy against the text), and the prefix token ids (``tokens`` flat with
``token_offsets``). The manifest's ``positions`` records each split's setting (``one``, ``all`` or
N per sentence; stores without it hold one position per sentence). Every file is written to a
temporary name and renamed, so a killed run never leaves a file that looks complete. Nothing
here unpickles anything.

Every reading method verifies the store's bytes before its first use in a process
(:meth:`HiddenStateStore.verify`): a full sha256 of every shard against the hashes recorded at
write time. sha256 runs on the CPU's SHA instructions, so this costs a fraction of one training
epoch and is paid once per process (``benchmarks/verify.py``); unlike a check of sizes and
modification times it also catches a changed byte that kept the file's size and times (a copy
tool restoring times, ``touch -r``, media corruption). The result is remembered for the process
per store identity and per the shards' (device, inode, size, mtime, ctime), so the stages of one
``onejump run`` hash the store once, and a shard changed in between is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from .errors import StoreError
from .io import sha256_file
from .store_files import _NEXT, _PER_SAMPLE, _Shard, check_shard, finished_shard, shard_name, write_shard

FORMAT = "onejump-store"
VERSION = 1
SPLITS = {"train": 0, "test": 1}
STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Stores whose bytes this process has hashed: (folder, identity) -> the shards' stat signatures then.
_VERIFIED: dict[tuple[str, str], tuple[tuple[int, ...], ...]] = {}


def _hash_or_error(path: Path) -> str | OSError:
    try:
        return sha256_file(path)
    except OSError as exc:
        return exc


def _signature(path: Path) -> tuple[int, ...]:
    """What changes when a file's bytes are rewritten through the file system (ctime cannot be set back)."""
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class HiddenStateStore:
    """Read access to a finished store. Open with :meth:`open`."""

    def __init__(self, path: Path, manifest: dict[str, Any], shards: list[_Shard]):
        self.path = Path(path)
        self.manifest = manifest
        self._shards = shards
        keys = (*_PER_SAMPLE, _NEXT) if self.has_next_tokens else _PER_SAMPLE
        self._meta = {k: np.concatenate([s.meta[k] for s in shards]) if shards else np.zeros(0, np.int64)
                      for k in keys}
        self._shard_of = np.concatenate([np.full(s.count, i) for i, s in enumerate(shards)]) if shards else np.zeros(0)
        self._row_in_shard = np.concatenate([np.arange(s.count) for s in shards]) if shards else np.zeros(0)
        entries = [(e.get("file"), e.get("count"), e.get("sha256")) for e in manifest["shards"]]
        head = [manifest.get("fingerprint"), manifest.get("dtype"), manifest.get("num_levels"),
                manifest.get("hidden_size"), entries]
        self._identity = hashlib.sha256(json.dumps(head).encode()).hexdigest()[:16]
        self._verified = False

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
        except (KeyError, TypeError, ValueError, OverflowError):  # OverflowError: "Infinity" for a size
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
            shards.append(check_shard(shard_path, entry["count"], num_levels, hidden, dtype,
                                      bool(manifest.get(_NEXT))))
        store = cls(folder, manifest, shards)
        store._check_counts()
        if verify:
            store.verify()
        return store

    def _check_counts(self) -> None:
        """The manifest's counts against what the shards hold (read from their headers at open)."""
        m, split = self.manifest, self._meta["split"]
        found = {"num_samples": len(split), "n_train": int((split == SPLITS["train"]).sum()),
                 "n_test": int((split == SPLITS["test"]).sum()),
                 "total_prefix_tokens": sum(s.num_tokens for s in self._shards)}
        if self.has_next_tokens:
            found["n_without_next_token"] = int((self._meta[_NEXT] < 0).sum())
        for key, value in found.items():
            if key in m and m[key] != value:
                raise StoreError(f"store {self.path}: its manifest says {key} = {m[key]!r} but the shards hold "
                                 f"{value}; the store was changed after extraction: extract again into a new folder")
        if "num_samples" not in m:
            raise StoreError(f"store {self.path}: its manifest lacks num_samples")

    def verify(self) -> None:
        """Check every shard's bytes against the sha256 recorded when it was written.

        Counts were checked at :meth:`open`. Runs once per process for a store identity whose
        shards keep their (device, inode, size, mtime, ctime); every reading method calls it
        first. Raises :class:`StoreError` naming the first corrupt shard.
        """
        if self._verified:
            return
        key = (str(self.path.resolve()), self.identity)
        try:
            before = tuple(_signature(s.path) for s in self._shards)
        except OSError as exc:
            raise StoreError(f"store {self.path}: cannot read a shard: {exc.strerror or exc}") from None
        if _VERIFIED.get(key) != before:
            # hashlib releases the GIL on large blocks: shards hash in parallel on several cores
            with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1, len(self._shards)))) as pool:
                digests = list(pool.map(_hash_or_error, [s.path for s in self._shards]))
            for shard, entry, digest in zip(self._shards, self.manifest["shards"], digests):
                if isinstance(digest, OSError):
                    raise StoreError(f"store shard {shard.path} is unreadable: {digest.strerror or digest}")
                if digest != entry.get("sha256"):
                    raise StoreError(f"store shard {shard.path.name} in {self.path} is corrupt (its sha256 differs "
                                     "from the one recorded at extraction): restore it, or extract again into a new "
                                     "folder (`onejump extract --out NEW_FOLDER`)")
            _VERIFIED[key] = before
        self._verified = True

    # ---- sizes and metadata -------------------------------------------------------------------
    def verify_identity(self) -> str:
        """:attr:`identity` after :meth:`verify`: what a cached stage records and checks its store by."""
        self.verify()
        return self.identity

    @property
    def identity(self) -> str:
        """Content key of the store: a hash of the manifest's shard sha256s, counts and layout.

        Two stores with the same identity hold the same bytes once :meth:`verify` has passed, so a
        stage computed from one is valid for the other; a re-extraction with other data changes it.
        """
        return self._identity

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
        self.verify()
        if split is None:
            return np.arange(self.num_samples)
        if split not in SPLITS:
            raise StoreError(f"unknown split '{split}'; use train or test")
        return np.nonzero(self._meta["split"] == SPLITS[split])[0]

    def meta(self, key: str, split: str | None = None) -> np.ndarray:
        """Per-sample ``sample_id``, ``split``, ``position``, ``target`` or ``next_token`` for a split."""
        if key not in self._meta:
            raise StoreError(f"store {self.path} records no per-sample '{key}'")
        return self._meta[key][self.indices(split)]

    def targets(self, split: str | None = None) -> torch.Tensor:
        """t*, the model's final top-1 token, per sample."""
        return torch.from_numpy(self.meta("target", split).astype(np.int64))

    @property
    def positions(self) -> dict[str, str | int]:
        """Each split's positions per sentence: ``"one"``, ``"all"`` or N (``"one"`` if the manifest says none)."""
        recorded = self.manifest.get("positions") or {}
        return {name: recorded.get(name, "one") for name in SPLITS}

    def sentence_ids(self, split: str | None = None) -> np.ndarray:
        """The sentence of each row of a split (several rows share one where a split keeps several positions)."""
        return self.meta("sample_id", split)

    @property
    def has_next_tokens(self) -> bool:
        """Whether the store records the sentence's real next token (stores extracted before it do not)."""
        return bool(self.manifest.get(_NEXT))

    def next_tokens(self, split: str | None = None) -> torch.Tensor:
        """The sentence's real next token after each sampled position; -1 where the position is the
        sentence's last token (``manifest["n_without_next_token"]`` such rows)."""
        if not self.has_next_tokens:
            raise StoreError(f"store {self.path} was extracted before onejump recorded each sample's next token, "
                             "so cross-entropy against the text cannot be computed from it: re-extract with "
                             "`onejump extract --out NEW_FOLDER` (or `onejump run --out NEW_FOLDER`)")
        return torch.from_numpy(self.meta(_NEXT, split).astype(np.int64))

    def prefix_tokens(self, row: int) -> list[int]:
        """Token ids of the prefix of store row ``row`` (up to and including the sampled position)."""
        self.verify()
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
        self.verify()
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
        self.verify()
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


# The shard-file helpers live in store_files; extraction, the tests and the benchmarks import them from here.
__all__ = ["FORMAT", "VERSION", "SPLITS", "STORE_DTYPES", "HiddenStateStore", "store_nbytes", "shard_name",
           "write_shard", "finished_shard"]

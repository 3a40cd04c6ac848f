"""Extraction of hidden states at all levels into a :class:`~onejump.store.HiddenStateStore`.

The positions kept per sentence are set per split (:mod:`onejump.extract_plan`): one random
position (uniform over 1..n-1, never position 0 or a BOS token; the paper's protocol and the
default), every position, or N of them. Each sentence is run once, up to its last kept position;
forwards are bucketed by length into batches with a token budget; hooks capture levels 0..K
(level K before the final norm) at the kept positions only; t* = argmax head(h^K). Work is planned
deterministically up front (and refused when the store would not fit the disk) and written in
shards, so an interrupted run resumes where it stopped and ends byte-identical to an
uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .defaults import SHARD_SIZE, TOKENS_PER_BATCH
from .errors import ConfigError, StoreError
from .extract_plan import (
    SPLIT_NAMES,
    Sample,
    check_disk,
    collate,
    forward_tokens,
    plan_batches,
    plan_shards,
    positions_per_split,
    sample_positions,
    store_bytes,
)
from .io import LOCK_NAME, atomic_write_text, remove_temporaries
from .model.loading import LoadedModel
from .store import FORMAT, STORE_DTYPES, VERSION, HiddenStateStore, finished_shard, shard_name, write_shard


class LevelCapture:
    """Hooks that keep the hidden states at the kept positions (forward row, position) at every level."""

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self.buffer: torch.Tensor | None = None
        self.at: torch.Tensor | None = None
        self._handles: list = []

    def _sink(self, level: int, hidden: torch.Tensor) -> None:
        assert self.buffer is not None and self.at is not None
        at = self.at.to(hidden.device)
        self.buffer[:, level] = hidden[at[:, 0], at[:, 1]].to(self.buffer.device, torch.float32)

    def __enter__(self) -> LevelCapture:
        self._handles = self.lm.adapter.level_hooks(self._sink)
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @torch.no_grad()
    def run(self, ids: torch.Tensor, mask: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """Forward the base model (no unembedding over all positions); return (S, K+1, H) float32
        at the S (forward row, position) pairs of ``at`` (a (B,) tensor of positions: one per row)."""
        adapter = self.lm.adapter
        if at.dim() == 1:
            at = torch.stack([torch.arange(len(at), device=at.device), at], 1)
        self.buffer = torch.empty(at.shape[0], adapter.num_blocks + 1, adapter.hidden_size,
                                  device=ids.device, dtype=torch.float32)
        self.at = at
        adapter.base(input_ids=ids, attention_mask=mask, use_cache=False)
        out, self.buffer = self.buffer, None
        return out


def _plan_key(lm: LoadedModel, samples: Sequence[Sample], seed: int, dtype: str,
              shards: list[list[list[int]]], positions: dict[str, str | int]) -> dict[str, Any]:
    digest = hashlib.sha256()
    for s in samples:
        digest.update(f"{s.sample_id},{s.split},{s.position}:".encode())
        digest.update(np.asarray(s.tokens, dtype=np.int64).tobytes())
    layout = hashlib.sha256(json.dumps(shards).encode()).hexdigest()[:16]
    return {
        "model": lm.name,
        "fingerprint": lm.fingerprint,
        "seed": seed,
        "dtype": dtype,
        "num_samples": len(samples),
        "samples_sha256": digest.hexdigest()[:16],
        "layout": layout,
        "next_token": True,  # the shards record each sample's real next token (a plan without it: a store without them)
        # one position per sentence everywhere adds nothing to the key: a plan without positions means one per sentence
        **({"positions": positions} if any(v != "one" for v in positions.values()) else {}),
    }


def distributed_context() -> tuple[int, int]:
    """(rank, world size); initialises torch.distributed from torchrun's environment when needed.

    Under ``torchrun --nproc_per_node N`` (or ``accelerate launch``) every rank plans the same work
    and takes every N-th shard; rank 0 writes the manifest once all shards exist.
    """
    import os

    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("ONEJUMP_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def _check_or_write_plan(out: Path, key: dict[str, Any]) -> None:
    plan_path = out / "plan.json"
    if plan_path.is_file():
        try:
            old = json.loads(plan_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise StoreError(f"{plan_path} is corrupt; remove the folder to start over") from None
        if not isinstance(old, dict):
            raise StoreError(f"{plan_path} is corrupt; remove the folder to start over")
        if "next_token" not in old and old == {k: v for k, v in key.items() if k != "next_token"}:
            if (out / "manifest.json").is_file():
                return  # a finished store without next tokens: readable (no cross-entropy against the text)
            raise StoreError(f"{out} holds an unfinished extraction started by an older onejump (it does not record "
                             "next tokens); remove the folder or use another, and rerun")
        if old != key:
            diff = [k for k in key if old.get(k) != key[k]]
            raise StoreError(
                f"{out} holds a store of another run (differs in {', '.join(diff)}); use another folder"
            )
        remove_temporaries(out)  # a killed run's half-written shards, sidecars, manifest or record
    elif any(p.name != LOCK_NAME for p in out.iterdir()):
        raise StoreError(f"{out} is not empty and is not an onejump store; use another folder")
    else:
        atomic_write_text(plan_path, json.dumps(key, indent=1))


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def extract(
    lm: LoadedModel,
    sentences: Sequence[str],
    out_dir: str | Path,
    *,
    splits: Sequence[int] | None = None,
    seed: int = 0,
    store_dtype: str = "float32",
    tokens_per_batch: int = TOKENS_PER_BATCH,
    max_batch_size: int = 64,
    shard_size: int = SHARD_SIZE,
    positions: Mapping[str, str | int] | str | int | None = None,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
    on_shard: Callable[[int, int], None] | None = None,
) -> HiddenStateStore:
    """Extract levels 0..K at the kept positions of every sentence into a store at ``out_dir``.

    ``splits`` labels each sentence 0 (train) or 1 (test); by default all are train.
    ``positions``: ``"one"`` (default), ``"all"`` or N per sentence, for every split or per split
    (``{"train": "all", "test": "one"}``). Re-running with the same arguments resumes an
    interrupted run (finished shards are kept) or returns the finished store; a folder holding
    another model's or seed's store is refused, and so is a store that would not fit the disk
    (before any forward).
    """
    if store_dtype not in STORE_DTYPES:
        raise ConfigError(f"unknown store dtype '{store_dtype}'; use {', '.join(STORE_DTYPES)}")
    out = Path(out_dir)
    settings = positions_per_split(positions)
    samples, shards, key = _plan(lm, sentences, splits, seed, store_dtype, tokens_per_batch, max_batch_size,
                                 shard_size, settings)
    if not (out / "manifest.json").is_file():
        check_disk(out, store_bytes(samples, lm.num_blocks + 1, lm.hidden_size, STORE_DTYPES[store_dtype]),
                   rows=len(samples), num_levels=lm.num_blocks + 1, hidden=lm.hidden_size, dtype_name=store_dtype)
    rank, world = _start_store(out, key)
    if (out / "manifest.json").is_file():
        return HiddenStateStore.open(out, fingerprint=lm.fingerprint)
    infos = _extract_shards(lm, samples, shards, out, STORE_DTYPES[store_dtype], rank=rank, world=world,
                            progress=progress, on_shard=on_shard)
    return _finish_store(lm, out, key, samples, len(shards), infos, extra, settings, rank=rank, world=world)


def _plan(lm: LoadedModel, sentences: Sequence[str], splits: Sequence[int] | None, seed: int, store_dtype: str,
          tokens_per_batch: int, max_batch_size: int, shard_size: int,
          positions: dict[str, str | int]) -> tuple[list[Sample], list[list[list[int]]], dict[str, Any]]:
    """The samples, their shards of batches, and the plan key that a resumed run must match."""
    splits = list(splits) if splits is not None else [0] * len(sentences)
    if len(splits) != len(sentences):
        raise ConfigError("splits must label every sentence")
    samples = sample_positions(lm.tokenizer, sentences, splits, seed, positions)
    shards = plan_shards(plan_batches(samples, tokens_per_batch, max_batch_size), shard_size)
    return samples, shards, _plan_key(lm, samples, seed, store_dtype, shards, positions)


def _start_store(out: Path, key: dict[str, Any]) -> tuple[int, int]:
    """Create or check the store folder against the plan; (rank, world size)."""
    if out.exists() and not out.is_dir():
        raise StoreError(f"store path exists and is not a folder: {out}")
    rank, world = distributed_context()
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        _check_or_write_plan(out, key)
    _barrier(world)  # the other ranks start once rank 0 has checked or written the plan
    return rank, world


def _extract_shards(lm: LoadedModel, samples: Sequence[Sample], shards: list[list[list[int]]], out: Path,
                    dtype: torch.dtype, *, rank: int, world: int, progress: bool,
                    on_shard: Callable[[int, int], None] | None) -> list[dict[str, Any]]:
    """Compute and write this rank's unfinished shards; the sidecars of its shards, in order."""
    device = lm.device
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    infos: list[dict[str, Any]] = []
    mine = [i for index, shard in enumerate(shards) if index % world == rank for batch in shard for i in batch]
    bar = tqdm(total=forward_tokens(samples, mine), unit="tok", desc="extract",
               disable=not progress or rank != 0, unit_scale=True)
    # Shards are written (safetensors, fsync, sha256) by one background thread while the model
    # computes the next shard; at most one write is pending, and results are collected in order.
    pending: list[tuple[int, Future]] = []

    def collect() -> None:
        while pending:
            done_index, future = pending.pop(0)
            infos.append(future.result())
            if on_shard is not None:
                on_shard(done_index, len(shards))

    with LevelCapture(lm) as capture, ThreadPoolExecutor(max_workers=1) as writer:
        for index, shard in enumerate(shards):
            shard_samples = [i for batch in shard for i in batch]
            if index % world != rank:
                continue
            done = finished_shard(out, index)
            if done is not None and done.get("count") == len(shard_samples):
                collect()
                infos.append(done)
                bar.update(forward_tokens(samples, shard_samples))
                continue
            tensors = _shard_tensors(lm, capture, samples, shard, pad_id, device, dtype, bar)
            collect()
            pending.append((index, writer.submit(write_shard, out, index, tensors)))
        collect()
    bar.close()
    return infos


def _shard_tensors(lm: LoadedModel, capture: LevelCapture, samples: Sequence[Sample], shard: list[list[int]],
                   pad_id: int, device: torch.device, dtype: torch.dtype, bar: tqdm) -> dict[str, torch.Tensor]:
    """Run the model over one shard's batches; the tensors of its shard file."""
    shard_samples = [i for batch in shard for i in batch]
    hidden_parts, targets = [], []
    for batch in shard:
        ids, mask, at = collate(samples, batch, pad_id, device)
        hidden = capture.run(ids, mask, at)
        with torch.no_grad():
            logits = lm.adapter.head(hidden[:, -1].to(next(lm.model.parameters()).dtype))
        targets.append(logits.argmax(-1).cpu())
        hidden_parts.append(hidden.cpu().to(dtype))
        bar.update(int(mask.sum()))
    toks = [samples[i].tokens for i in shard_samples]
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in toks])])
    return {
        "hidden": torch.cat(hidden_parts),
        "sample_id": torch.tensor([samples[i].sample_id for i in shard_samples], dtype=torch.int64),
        "split": torch.tensor([samples[i].split for i in shard_samples], dtype=torch.int8),
        "position": torch.tensor([samples[i].position for i in shard_samples], dtype=torch.int64),
        "target": torch.cat(targets).to(torch.int64),
        "tokens": torch.tensor([t for tt in toks for t in tt], dtype=torch.int32),
        "token_offsets": torch.from_numpy(offsets.astype(np.int64)),
        "next_token": torch.tensor([samples[i].next_token for i in shard_samples], dtype=torch.int64),
    }


def _finish_store(lm: LoadedModel, out: Path, key: dict[str, Any], samples: Sequence[Sample], num_shards: int,
                  infos: list[dict[str, Any]], extra: dict[str, Any] | None, positions: dict[str, str | int], *,
                  rank: int, world: int) -> HiddenStateStore:
    """Write the manifest (rank 0, once every rank's shards exist) and open the finished store."""
    _barrier(world)
    if world > 1:
        infos = [finished_shard(out, index) for index in range(num_shards)]
        if any(info is None for info in infos):
            raise StoreError(f"a rank did not finish its shards in {out}; rerun to resume")
        if rank != 0:
            _barrier(world)  # wait for rank 0's manifest
            return HiddenStateStore.open(out, fingerprint=lm.fingerprint, verify=False)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        **key,
        "num_levels": lm.num_blocks + 1,
        "num_blocks": lm.num_blocks,
        "hidden_size": lm.hidden_size,
        "n_train": int(sum(1 for s in samples if s.split == 0)),
        "n_test": int(sum(1 for s in samples if s.split == 1)),
        "total_prefix_tokens": int(sum(len(s.tokens) for s in samples)),
        "n_without_next_token": int(sum(1 for s in samples if s.next_token < 0)),
        "positions": positions,
        **{f"n_{name}_sentences": len({s.sample_id for s in samples if s.split == split})
           for split, name in enumerate(SPLIT_NAMES)},
        "forward_tokens": forward_tokens(samples, range(len(samples))),
        "shards": infos,
        **({"extra": extra} if extra else {}),
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    if world > 1:
        _barrier(world)
    return HiddenStateStore.open(out, fingerprint=lm.fingerprint, verify=False)


__all__ = ["Sample", "extract", "sample_positions", "plan_batches", "plan_shards", "collate", "LevelCapture",
           "shard_name"]

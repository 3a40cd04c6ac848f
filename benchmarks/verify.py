"""Cost of verifying a store's bytes (sha256 of every shard) against the stages that read it.

Every reading method of a store hashes its shards once per process before the first read
(``HiddenStateStore.verify``). This measures, in one process on a real store:

- ``verify``: the first verification (a full sha256 of every shard), repeated ``--repeats`` times
  on fresh handles with the per-process memo cleared, fastest kept;
- ``verify_memo``: a later verification in the same process (stat of every shard only);
- ``read_train``: reading the train split once through ``iter_chunks`` (float32), fastest kept;
- ``train_epoch``: one epoch of training the K per-level jumps (the paper's preset, MSE, default
  rank and batch), validation included, once;

and reports verify / read_train and verify / train_epoch. The shards are in the page cache (they
are read once before timing), so both sides are measured without disk waits: the ratio is the
CPU cost of hashing against the CPU cost of the stage. A cold cache adds the same disk read to
the stage, which then finds the shards cached by the verification.

Usage: python benchmarks/verify.py [--store runs/demo/store] [--repeats 3] [--epochs 1]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from common import save

import onejump.store as store_mod
from onejump.store import HiddenStateStore
from onejump.training.config import TrainConfig
from onejump.training.fit import train_jumps


def _fastest(fn, repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``fn``, which returns the seconds of the part it times."""
    return min(fn() for _ in range(repeats))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="runs/demo/store")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--name", default=f"verify-{'cuda' if torch.cuda.is_available() else 'cpu'}")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]  # other processes on the machine slow both sides alike
    folder = Path(args.store)
    nbytes = sum(p.stat().st_size for p in folder.glob("shard-*.safetensors"))
    for p in sorted(folder.glob("shard-*.safetensors")):  # into the page cache before any timing
        p.read_bytes()

    def verify_fresh() -> float:  # opening (headers and metadata) is not timed, only the hashing
        store_mod._VERIFIED.clear()
        return _timed(HiddenStateStore.open(folder, verify=False).verify)

    t_verify = _fastest(verify_fresh, args.repeats)
    t_memo = _fastest(lambda: _timed(HiddenStateStore.open(folder, verify=False).verify), args.repeats)
    store = HiddenStateStore.open(folder)

    def read_train() -> None:
        for _ in store.iter_chunks("train"):
            pass

    t_read = _fastest(lambda: _timed(read_train), args.repeats)
    config = TrainConfig(max_epochs=args.epochs, patience=args.epochs)
    t0 = time.perf_counter()
    train_jumps(store, config, device="cpu", progress=False)
    t_epoch = (time.perf_counter() - t0) / args.epochs
    m = store.manifest
    save(args.name, {
        "store": str(folder), "model": m.get("model"), "num_samples": store.num_samples,
        "n_train": m.get("n_train"), "levels": store.num_levels, "hidden_size": store.hidden_size,
        "shards": len(m["shards"]), "bytes": nbytes,
        "verify_s": round(t_verify, 4), "verify_gb_per_s": round(nbytes / t_verify / 1e9, 3),
        "verify_memo_s": round(t_memo, 6), "read_train_s": round(t_read, 4), "train_epoch_s": round(t_epoch, 3),
        "verify_over_read_train": round(t_verify / t_read, 3),
        "verify_over_train_epoch": round(t_verify / t_epoch, 4),
        "threads": torch.get_num_threads(), "repeats": args.repeats,
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    })


if __name__ == "__main__":
    main()

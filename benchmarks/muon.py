"""Muon against the field's optimisers: the tuned lens (SGD, tuned-lens's recipe) and the joint jump (Adam).

Usage: python benchmarks/muon.py --store STORE [--train-sentences 1000] [--test-rows 300] [--steps 250]
       [--tokens-per-step 128] [--epochs 3]

STORE is a store of every position of its train sentences, e.g. made with
``onejump extract --n-train 1000 --n-test 300 --train-positions all --out RUN`` (its ``RUN/store``).
The first ``--train-sentences`` train sentences (every position of each) are trained on, less the
store trainers' held-out tenth of whole sentences; the first ``--test-rows`` test rows (one
position per test sentence, the paper's protocol) score every lens. Each lens is trained twice from
the same start on the same batches, once per optimiser:

- the tuned lens, from zero (tuned-lens's start), ``--steps`` steps of ``--tokens-per-step``
  positions, the learning rate decayed linearly to zero: SGD with Nesterov momentum (lr 1, momentum
  0.9, weight decay 1e-3, tuned-lens's recipe) against Muon (lr 0.02, momentum 0.95) on the
  translators with Adam (lr 1e-3) on their biases;
- the joint jump (KL through the head, rank floor(H/100)), ``--epochs`` epochs of the store
  trainer: Adam (lr 1e-2, the jumps' default) against Muon (lr 0.02) on A and B with Adam on BatchNorm.

Writes benchmarks/results/muon-<device>.json: per lens and optimiser the training seconds, the
held-out KL curve of training, and on the test rows the mean over exit levels 0..K-1 of
precision@1 and KL(p_final || p_lens), with the per-level values; and Muon's ratios to the other.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
from common import save

from onejump.evaluation.evaluator import evaluate
from onejump.lenses.onejump import OneJump
from onejump.model.loading import load_model
from onejump.store import HiddenStateStore
from onejump.training.config import TrainConfig
from onejump.training.lenses import train_joint_jump
from onejump.training.tuned import TunedTrainConfig, train_tuned_lens


class SentenceSubset:
    """A view of a store keeping the rows of its first ``sentences`` train sentences and first ``test`` test rows."""

    def __init__(self, store, sentences: int, test: int):
        self._store = store
        train = store.indices("train")
        ids = store.sentence_ids("train")
        _, first = np.unique(ids, return_index=True)
        keep = set(ids[np.sort(first)[:sentences]].tolist())
        self._rows = {"train": train[np.isin(ids, list(keep))], "test": store.indices("test")[:test]}

    def __getattr__(self, name):
        return getattr(self._store, name)

    def indices(self, split=None):
        return self._rows[split] if split in self._rows else self._store.indices(split)

    def iter_chunks(self, split=None, chunk_size=4096, levels=None, dtype=torch.float32):
        rows = self._rows[split]
        for start in range(0, len(rows), chunk_size):
            part = rows[start:start + chunk_size]
            h = self._store.read_rows(part, dtype=dtype)
            yield part, (h if levels is None else h[:, levels])


def _scores(store, lenses: dict) -> dict:
    result = evaluate(store._store, lenses, split="test", rows=store.indices("test"), progress=False)
    out = {}
    for name in lenses:
        p1, kl = result.metric(name, "precision@1"), result.metric(name, "kl")
        out[name] = {"precision_at_1": round(float(p1.mean()), 4), "kl": round(float(kl.mean()), 4),
                     "per_level": {"precision_at_1": [round(float(v), 4) for v in p1],
                                   "kl": [round(float(v), 4) for v in kl]}}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--train-sentences", type=int, default=1000)
    ap.add_argument("--test-rows", type=int, default=300)
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--tokens-per-step", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    lm = load_model(args.model, device=args.device)
    store = SentenceSubset(HiddenStateStore.open(args.store, fingerprint=lm.fingerprint), args.train_sentences,
                           args.test_rows)
    progress = not args.quiet
    runs: dict = {"tuned": {}, "joint": {}}
    lenses: dict = {}
    sgd = TunedTrainConfig(init="zero", num_steps=args.steps, batch_size=args.tokens_per_step,
                           patience=args.steps)  # no early stop: the whole schedule, as tuned-lens runs it
    for name, cfg in (("sgd", sgd), ("muon", replace(sgd, optimizer="muon"))):
        t0 = time.perf_counter()
        lens, hist = train_tuned_lens(store, lm, cfg, progress=progress)
        runs["tuned"][name] = {"seconds": round(time.perf_counter() - t0, 2), "steps": hist.steps_run,
                               "tokens_per_step": args.tokens_per_step, "n_train_rows": hist.n_train,
                               "val_kl_curve": {"steps": hist.steps,
                                                "mean": [round(float(np.mean(v)), 4) for v in hist.val_kl]},
                               "config": hist.config}
        lenses[f"tuned-{name}"] = lens
    adam = TrainConfig(objective="kl", max_epochs=args.epochs, patience=args.epochs)
    for name, cfg in (("adam", adam), ("muon", replace(adam, optimizer="muon"))):
        t0 = time.perf_counter()
        lens = train_joint_jump(store, lm, cfg, progress=progress)
        hist = lens.extra["history"]
        runs["joint"][name] = {"seconds": round(time.perf_counter() - t0, 2), "epochs": hist["epochs_run"],
                               "n_train_rows": hist["n_train"],
                               "val_kl_curve": [round(float(v[0]), 4) for v in hist["val_loss"]],
                               "config": hist["config"]}
        lenses[f"joint-{name}"] = lens
    assert all(isinstance(lenses[f"joint-{n}"], OneJump) for n in ("adam", "muon"))
    scores = _scores(store, lenses)
    for kind, base in (("tuned", "sgd"), ("joint", "adam")):
        for name in runs[kind]:
            runs[kind][name]["test"] = scores[f"{kind}-{name}"]
        m, b = runs[kind]["muon"], runs[kind][base]
        runs[kind]["muon_vs_" + base] = {
            "kl_ratio": round(m["test"]["kl"] / b["test"]["kl"], 4),
            "precision_at_1_difference": round(m["test"]["precision_at_1"] - b["test"]["precision_at_1"], 4),
            "seconds_ratio": round(m["seconds"] / b["seconds"], 4)}
    payload = {"store": args.store, "model": args.model, "train_sentences": args.train_sentences,
               "test_rows": len(store.indices("test")), "test_positions": "one per test sentence", **runs}
    save(f"muon-{args.device}", payload)
    return payload


if __name__ == "__main__":
    main()

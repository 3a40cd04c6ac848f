"""Shared helpers of the benchmarks: real sentences, peak RSS, JSON output."""

from __future__ import annotations

import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def real_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` real Wikipedia sentences from the offline corpus (train part of the default split)."""
    from onejump.data import load_sentences, split_sentences

    split = split_sentences(load_sentences("wikipedia-offline"), n_train=n, n_test=1, seed=seed)
    return [s.text for s in split.train]


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine() -> dict:
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d"),
    }


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=1))
    print(json.dumps(payload, indent=1))
    print(f"saved {path}")
    return path

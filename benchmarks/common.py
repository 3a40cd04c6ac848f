"""Shared helpers of the benchmarks: real sentences, peak RSS, JSON output."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def real_sentences(n: int, seed: int = 0, corpus: str = "wikipedia-offline") -> list[str]:
    """``n`` real sentences from ``corpus`` (default: the offline Wikipedia corpus; train part of the split)."""
    from onejump.corpus.loaders import load_sentences, split_sentences

    split = split_sentences(load_sentences(corpus), n_train=n, n_test=1, seed=seed)
    return [s.text for s in split.train]


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (kept across the high-water-mark resets of
    the per-stage probes, which also lower ``ru_maxrss``)."""
    from onejump.memory import process_peak_mib

    return process_peak_mib()


def commit() -> str | None:
    """The commit the benchmark runs on, ``+changes`` when tracked files outside benchmarks/results differ
    from it (a figure is then not that commit's alone); None outside a git checkout."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+changes" if changed else "")


def machine() -> dict:
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit(),
    }


def result_name(benchmark: str, device: str, model: str, dtype: str = "float32") -> str:
    """``<benchmark>-<device>[-<model>][-<dtype>]``: no model for the default SmolLM2-135M, no dtype for float32."""
    tag = "" if model == "smollm2-135m" else f"-{Path(model).name}"
    return f"{benchmark}-{device}{tag}" + ("" if dtype == "float32" else f"-{dtype}")


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=1))
    print(json.dumps(payload, indent=1))
    print(f"saved {path}")
    return path


class LimitedStore:
    """A view of a store that keeps only the first ``n`` rows of each split (for size sweeps)."""

    def __init__(self, store, n: int):
        import numpy as np

        self._store, self._n, self._np = store, n, np

    def __getattr__(self, name):
        return getattr(self._store, name)

    def indices(self, split=None):
        return self._store.indices(split)[: self._n]

    def targets(self, split=None):
        return self._store.targets(split)[: self._n]

    def hidden(self, split=None, levels=None, dtype=torch.float32):
        return self._store.hidden(split, levels=levels, dtype=dtype)[: self._n]

    def iter_chunks(self, split=None, chunk_size=4096, levels=None, dtype=torch.float32):
        left = self._n
        for rows, chunk in self._store.iter_chunks(split, chunk_size=chunk_size, levels=levels, dtype=dtype):
            if left <= 0:
                return
            yield rows[:left], chunk[:left]
            left -= len(rows)


def load_for_benchmark(model: str, device: str, random_init: bool = False, dtype: str = "float32"):
    """The model to benchmark; ``random_init`` builds it from a folder's config and tokenizer alone
    (same architecture and cost, random weights: for machines that cannot hold the real weights)."""
    from onejump.model.loading import from_pretrained_model, load_model, parse_dtype, resolve_device

    if not random_init:
        return load_model(model, device=device, dtype=dtype)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(model)
    lm = AutoModelForCausalLM.from_config(config, dtype=parse_dtype(dtype)).to(resolve_device(device))
    return from_pretrained_model(lm, AutoTokenizer.from_pretrained(model), name=f"{model} (random init)")

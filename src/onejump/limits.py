"""The documented range of every size a user or a file gives, checked before anything is allocated.

A number on the command line or in a file becomes an allocation (a batch, a weight matrix, a
thread pool) soon after it is read; out of range it fails deep inside torch or the OS (a segfault
at ``--threads 100000``, a petabyte request at ``d_model: 10000000``). Each range below is wide
enough for every model and run we know of and is listed in docs/errors.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Range:
    """Numbers ``lo <= x <= hi`` (``lo < x`` with ``lo_open``; ``x < hi`` with ``hi_open``)."""

    lo: float
    hi: float
    integer: bool = True
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, value: float) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.integer and value != int(value):
            return False
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def describe(self) -> str:
        def show(x: float) -> str:
            return f"{int(x):,}" if self.integer else f"{x:g}"

        if self.integer:
            return f"an integer from {show(self.lo)} to {show(self.hi)}"
        left = "(" if self.lo_open else "["
        right = ")" if self.hi_open else "]"
        return f"a number in {left}{show(self.lo)}, {show(self.hi)}{right}"


SEED = Range(0, 2**32 - 1)

# Command-line options, by their argparse ``dest``.
OPTIONS: dict[str, Range] = {
    "n_train": Range(1, 10_000_000),
    "n_test": Range(1, 10_000_000),
    "max_documents": Range(1, 10**9),
    "seed": SEED,
    "train_seed": SEED,
    "tokens_per_batch": Range(1, 1 << 20),
    "shard_size": Range(1, 1_000_000),
    "rank": Range(1, 65_536),
    "lr": Range(0, 10, integer=False, lo_open=True),
    "batch_size": Range(2, 16_384),  # TrainConfig's shuffle buffer holds 16,384 samples
    "max_epochs": Range(1, 100_000),
    "patience": Range(1, 100_000),
    "val_fraction": Range(0, 1, integer=False, hi_open=True),
    "tuned_steps": Range(1, 10_000_000),
    "max_new_tokens": Range(1, 1_000_000),
    "min_agreement": Range(0, 1, integer=False, lo_open=True),
    "lam": Range(0, 1, integer=False, lo_open=True),
    "draft_level": Range(1, 4096),
    "draft_len": Range(1, 1024),
    "draft_threshold": Range(0, 1, integer=False),
}

# Sizes read from files (tuned-lens config.json, lens configs): no model we know of comes close.
HIDDEN_SIZE = Range(1, 65_536)
NUM_LEVELS = Range(1, 4096)

# Threads: more than this many per usable CPU only adds contention (and at some point the OS refuses
# to start them); at least MIN_THREAD_CAP is always allowed.
THREADS_PER_CPU = 4
MIN_THREAD_CAP = 64


def thread_cap(cpus: int) -> int:
    """The most threads accepted on a machine with ``cpus`` usable CPUs."""
    return max(MIN_THREAD_CAP, THREADS_PER_CPU * cpus)


def check(name: str, value: float, allowed: Range, where: str = "") -> float:
    """``value`` if ``allowed`` contains it, else :class:`ConfigError` naming ``name`` and the range."""
    if not allowed.contains(value):
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}{name} must be {allowed.describe()}, got {value!r}")
    return value


def option_name(dest: str) -> str:
    """The command-line spelling of an option's ``dest`` (``lam`` is ``--lambda``)."""
    return "--lambda" if dest == "lam" else "--" + dest.replace("_", "-")


__all__ = ["HIDDEN_SIZE", "NUM_LEVELS", "OPTIONS", "Range", "SEED", "check", "option_name", "thread_cap"]

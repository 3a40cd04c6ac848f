"""Statistics for per-sample results: bootstrap confidence intervals and paired tests."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import ConfigError


class CI(NamedTuple):
    """A mean and its percentile bootstrap confidence interval."""

    mean: float
    low: float
    high: float


def _as_float64(values: Any) -> np.ndarray:
    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    return arr.astype(np.float64).reshape(-1)


#: Index draws per block of resamples: :func:`bootstrap_counts` draws ``max(1, DRAW_BLOCK // n)``
#: resamples of n indices at a time, so memory stays bounded whatever n. The blocks fix the stream of
#: draws (a generator's bounded draws are not split-invariant), so they are part of the bootstrap.
DRAW_BLOCK = 1 << 22


def bootstrap_counts(n: int, n_boot: int = 1000, seed: int = 0) -> Iterator[np.ndarray]:
    """The bootstrap's resamples of n samples as resampling weights, block by block: float ``(count, n)``
    arrays whose row holds how often each sample was drawn (the row sums to n), so ``values @ block.T / n``
    are the resamples' means for any number of rows ``values`` (R, n) at once. The blocks hold ``n_boot``
    resamples in all, each n index draws with replacement, ``default_rng(seed).integers(0, n, size=(count,
    n))`` block by block (:data:`DRAW_BLOCK`). Seeded: the same (n, n_boot, seed) give the same resamples.

    Whole counts rather than counts / n: a sum of whole counts is exact, so 0/1 values give their
    resample means exactly, and a constant sample a zero-width interval."""
    if n < 1 or n_boot < 1:
        raise ConfigError(f"the bootstrap needs n >= 1 samples and n_boot >= 1 resamples (got {n}, {n_boot})")
    rng = np.random.default_rng(seed)
    step = max(1, DRAW_BLOCK // n)
    for start in range(0, n_boot, step):
        count = min(step, n_boot - start)
        draws = rng.integers(0, n, size=(count, n))
        draws += np.arange(count)[:, None] * n  # resample i counts into row i
        yield np.bincount(draws.ravel(), minlength=count * n).reshape(count, n).astype(np.float64)


def bootstrap_intervals(values: Any, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> np.ndarray:
    """Percentile bootstrap CIs ``(R, 2)`` of the mean of each row of ``values`` (R, n), every row under the
    same resamples (:func:`bootstrap_counts`: one matrix product per block of resamples)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ConfigError(f"bootstrap_intervals needs a (rows, samples) array with samples, got shape {x.shape}")
    if not 0 < alpha < 1:
        raise ConfigError("alpha must be in (0, 1)")
    n = x.shape[1]
    means = np.concatenate([x @ c.T / n for c in bootstrap_counts(n, n_boot, seed)], axis=1)
    return np.quantile(means, [alpha / 2, 1 - alpha / 2], axis=1).T


def bootstrap_ci(values: Any, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> CI:
    """Percentile bootstrap CI of the mean of ``values`` (1-D; bools count as 0/1). Seeded."""
    x = _as_float64(values)
    if x.size == 0:
        raise ConfigError("bootstrap_ci needs at least one value")
    if not 0 < alpha < 1 or n_boot < 1:
        raise ConfigError("alpha must be in (0, 1) and n_boot >= 1")
    low, high = bootstrap_intervals(x[None], n_boot, seed, alpha)[0]
    return CI(float(x.mean()), float(low), float(high))


class PairedTest(NamedTuple):
    """Result of :func:`paired_test`: mean of ``a - b``, its bootstrap CI and a two-sided p-value."""

    mean_diff: float
    low: float
    high: float
    p_value: float
    test: str
    n: int


def _binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial test p-value of k successes out of n at p = 1/2."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    top = max(logs)
    tail = math.exp(top) * sum(math.exp(v - top) for v in logs)
    return min(1.0, 2 * tail)


def paired_test(a: Any, b: Any, *, n_perm: int = 10000, n_boot: int = 1000, seed: int = 0,
                alpha: float = 0.05) -> PairedTest:
    """Paired comparison of per-sample values of two methods on the same samples.

    Bool inputs (correctness): exact McNemar test on the discordant pairs. Otherwise: sign-flip
    permutation test of the mean difference (``n_perm`` random flips, p-value with the +1
    correction). The CI is a percentile bootstrap of the mean difference.
    """
    xa, xb = _as_float64(a), _as_float64(b)
    if xa.shape != xb.shape or xa.size == 0:
        raise ConfigError(f"paired_test needs two non-empty arrays of the same length ({xa.size} vs {xb.size})")
    d = xa - xb
    ci = bootstrap_ci(d, n_boot=n_boot, seed=seed, alpha=alpha)
    is_bool = all(isinstance(v, torch.Tensor) and v.dtype == torch.bool or
                  isinstance(v, np.ndarray) and v.dtype == np.bool_ for v in (a, b))
    if is_bool:
        a_only = int(((xa == 1) & (xb == 0)).sum())
        b_only = int(((xa == 0) & (xb == 1)).sum())
        return PairedTest(ci.mean, ci.low, ci.high, _binom_two_sided(a_only, a_only + b_only), "mcnemar-exact",
                          xa.size)
    observed = abs(d.mean())
    rng = np.random.default_rng(seed)
    hits = 0
    step = max(1, (1 << 22) // d.size)
    for start in range(0, n_perm, step):
        count = min(step, n_perm - start)
        signs = rng.integers(0, 2, size=(count, d.size), dtype=np.int8) * 2 - 1
        hits += int((np.abs((signs * d).mean(1)) >= observed - 1e-12).sum())
    return PairedTest(ci.mean, ci.low, ci.high, (hits + 1) / (n_perm + 1), "sign-flip-permutation", xa.size)

"""The verdict of a claim about a measured quantity: held, not held or inconclusive, from its 95% interval.

A claim says that a quantity lies in a :class:`Region` (at most b, at least b, above b, or in [lo, hi]).
Its verdict follows the quantity's interval alone, never the point estimate: *held* when the whole
interval lies in the region, *not held* when none of it does, *inconclusive* otherwise and when there
is no interval. A quantity computed exactly (a parameter count) has the interval [x, x].

The intervals here are for means of per-sample values measured on n samples:

- :func:`sample_interval` takes a bootstrap interval and widens a zero-width one (every sample gave the
  same value, so the bootstrap cannot vary): n samples that all agree still leave room for a fraction
  ``1 - (alpha/2) ** (1/n)`` of the population to differ, by at most the values' range.
- :func:`difference_interval` bounds the mean difference of two paired methods when only their
  per-level proportions are recorded: a [0, 1]-valued sample with mean p has standard deviation at
  most sqrt(p (1 - p)), the sd of an average is at most the average of the sds, and the sd of a
  difference at most the sum of the two (whatever their correlation); a normal interval with that sd.
- :func:`proportion_interval`: the Wilson score interval of k successes out of n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from ..errors import ConfigError

HELD, NOT_HELD, INCONCLUSIVE = "held", "not held", "inconclusive"
VERDICTS = (HELD, NOT_HELD, INCONCLUSIVE)


@dataclass(frozen=True)
class Region:
    """The values a claim allows: from ``low`` to ``high``, each end closed unless marked open."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __post_init__(self) -> None:
        if math.isnan(self.low) or math.isnan(self.high) or self.low > self.high:
            raise ConfigError(f"a claim's region needs low <= high, got [{self.low}, {self.high}]")
        if self.low == self.high and (self.low_open or self.high_open):
            raise ConfigError(f"a claim's region holds no value: ({self.low}, {self.high})")

    def contains(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below

    def excludes(self, low: float, high: float) -> bool:
        """Whether no point of the interval [low, high] lies in the region."""
        left = high < self.low or (self.low_open and high == self.low)
        right = low > self.high or (self.high_open and low == self.high)
        return left or right


def at_most(bound: float) -> Region:
    return Region(high=bound)


def at_least(bound: float) -> Region:
    return Region(low=bound)


def above(bound: float) -> Region:
    return Region(low=bound, low_open=True)


def between(low: float, high: float) -> Region:
    return Region(low=low, high=high)


def verdict(interval: Sequence[float] | None, region: Region) -> str:
    """``held`` when the interval lies in the region, ``not held`` when it lies outside, else ``inconclusive``.

    ``interval``: (low, high), or None where the claim has none; an interval with a NaN end is no interval.
    """
    if interval is None:
        return INCONCLUSIVE
    low, high = (float(v) for v in interval)
    if math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE
    if low > high:
        raise ConfigError(f"an interval needs low <= high, got [{low}, {high}]")
    if region.contains(low) and region.contains(high):
        return HELD
    if region.excludes(low, high):
        return NOT_HELD
    return INCONCLUSIVE


def all_of(verdicts: Sequence[str]) -> str:
    """The verdict of a claim made of parts that must all hold: ``held`` when every part is held, ``not held``
    when some part is not held, else ``inconclusive`` (also with no part)."""
    parts = list(verdicts)
    if parts and all(v == HELD for v in parts):
        return HELD
    return NOT_HELD if NOT_HELD in parts else INCONCLUSIVE


def _agreeing_fraction_bound(n: int, alpha: float) -> float:
    """The largest population fraction that n samples, all alike, exclude only with probability alpha/2."""
    return 1.0 - (alpha / 2) ** (1.0 / n)


def sample_interval(ci: Sequence[float] | None, n: int | None, value_range: tuple[float, float], *,
                    alpha: float = 0.05) -> tuple[float, float] | None:
    """A mean's bootstrap interval ``ci`` over ``n`` samples whose values lie in ``value_range``, widened
    where the bootstrap had nothing to vary (zero width); None when there is no interval or no sample."""
    if ci is None or n is None or n < 1:
        return None
    low, high = float(ci[0]), float(ci[1])
    if math.isnan(low) or math.isnan(high):
        return None
    vmin, vmax = value_range
    # a mean of values in the range lies in it: ends outside it (a damaged file) are brought back in
    low, high = min(max(low, vmin), vmax), min(max(high, vmin), vmax)
    if high > low:
        return low, high
    u = _agreeing_fraction_bound(int(n), alpha)
    return max(vmin, low - u * (low - vmin)), min(vmax, high + u * (vmax - high))


def _z(alpha: float) -> float:
    return NormalDist().inv_cdf(1 - alpha / 2)


def sd_bound(proportions: Sequence[float] | np.ndarray) -> float:
    """An upper bound on the per-sample standard deviation of the average of [0, 1]-valued measures whose
    means are ``proportions`` (per level, or per jump and level)."""
    p = np.clip(np.asarray(proportions, dtype=np.float64).reshape(-1), 0.0, 1.0)
    if p.size == 0:
        raise ConfigError("sd_bound needs at least one proportion")
    return float(np.sqrt(p * (1 - p)).mean())


def difference_interval(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, n: int | None, *,
                        weight: float = 1.0, alpha: float = 0.05) -> tuple[float, float] | None:
    """A conservative interval of mean(a) - weight x mean(b), two methods' per-level proportions of the same
    ``n`` samples (``b`` may be a jumps x levels matrix whose mean is the method); None without samples."""
    if n is None or n < 1:
        return None
    if not weight >= 0:
        raise ConfigError(f"difference_interval needs a weight >= 0, got {weight}")
    pa, pb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = float(pa.mean() - weight * pb.mean())
    half = _z(alpha) * (sd_bound(pa) + weight * sd_bound(pb)) / math.sqrt(n)
    low, high = max(-weight, d - half), min(1.0, d + half)
    return sample_interval((low, high), n, (-weight, 1.0), alpha=alpha)


def proportion_interval(k: int, n: int, *, alpha: float = 0.05) -> tuple[float, float]:
    """The Wilson score interval of a proportion: ``k`` successes out of ``n`` trials."""
    if n < 1 or not 0 <= k <= n:
        raise ConfigError(f"a proportion needs 0 <= k <= n and n >= 1, got k = {k}, n = {n}")
    z = _z(alpha)
    centre = (k + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * math.sqrt(k * (n - k) / n + z * z / 4)
    p = k / n  # the ends rounded so that the interval always holds the observed proportion
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


__all__ = ["HELD", "INCONCLUSIVE", "NOT_HELD", "VERDICTS", "Region", "above", "all_of", "at_least", "at_most",
           "between", "difference_interval", "proportion_interval", "sample_interval", "sd_bound", "verdict"]

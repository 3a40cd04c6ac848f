"""What the claims read from a ``results.json``, checked before any of it is used: shapes, ranges, intervals.

A file another tool wrote, edited by hand or cut short must fail with one line naming the field, not
with a division by zero, a NumPy axis error or a verdict computed from nothing.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError

#: The per-level curves the claims read: each method's precision@1 (and its CI where present).
CLAIM_METHODS = ("identity", "full", "ojfa", "joint", "arbitrary_mean")


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _proportions(values: Any, K: int, where: str) -> None:
    if not isinstance(values, list) or len(values) != K:
        raise ConfigError(f"{where} must be a list of {K} precisions (one per level)")
    bad = [v for v in values if not (_number(v) and 0.0 <= v <= 1.0)]
    if bad:
        raise ConfigError(f"{where} holds {bad[0]!r}, not a precision in [0, 1]")


def _interval(ci: Any, where: str) -> None:
    if not (isinstance(ci, list) and len(ci) == 2 and all(_number(v) for v in ci) and ci[0] <= ci[1]):
        raise ConfigError(f"{where} is {ci!r}, not an interval [low, high] of finite numbers with low <= high")


def check_claim_inputs(results: dict[str, Any], path: Any) -> None:
    """Raise :class:`ConfigError` naming ``path`` and the field when what the claims read is malformed."""
    try:
        _check(results)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _check(results: dict[str, Any]) -> None:
    levels = results["levels"]
    if not isinstance(levels, list) or not levels:
        raise ConfigError("levels must be a non-empty list of exit levels")
    K = len(levels)
    for name in (n for n in CLAIM_METHODS if n in results["methods"]):
        method = results["methods"][name]
        if not isinstance(method, dict):
            raise ConfigError(f"methods.{name} is not an object")
        _proportions(method.get("precision@1"), K, f"methods.{name}.precision@1")
        cis = method.get("precision@1_ci")
        if cis is not None:
            if not isinstance(cis, list) or len(cis) != K:
                raise ConfigError(f"methods.{name}.precision@1_ci must hold {K} intervals")
            for k, ci in enumerate(cis):
                _interval(ci, f"methods.{name}.precision@1_ci[{k}]")
    reuse = (results.get("reuse") or {}).get("precision@1")
    if not isinstance(reuse, list) or len(reuse) != K:
        raise ConfigError(f"reuse.precision@1 must be a {K} x {K} matrix (jump m at level k)")
    for m, row in enumerate(reuse):
        _proportions(row, K, f"reuse.precision@1[{m}]")
    n = (results.get("data") or {}).get("n_test")
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
        raise ConfigError(f"data.n_test is {n!r}, not a count of test sentences")
    for key, test in (results.get("tests") or {}).items():
        if not isinstance(test, dict):
            raise ConfigError(f"tests.{key} is not an object")
        if test.get("ci") is not None:
            _interval(test["ci"], f"tests.{key}.ci")
        count = test.get("n")
        if count is not None and not (isinstance(count, int) and not isinstance(count, bool) and count >= 1):
            raise ConfigError(f"tests.{key}.n is {count!r}, not a count of test rows")
    factor = (results.get("parameters") or {}).get("reduction_factor")
    if not _number(factor):
        raise ConfigError(f"parameters.reduction_factor is {factor!r}, not a number")


__all__ = ["CLAIM_METHODS", "check_claim_inputs"]

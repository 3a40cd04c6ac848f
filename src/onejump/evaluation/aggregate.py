"""Per-level metrics in the shape of tuned-lens's evaluation output (``aggregate_metrics.json``).

tuned-lens's ``eval`` command writes one nested JSON object::

    {"<lens>": {"kl": {"layer_0": ..., ..., "layer_{L-1}": ...},
                "ce": {...}, "entropy": {...},
                "layer_transfer": {"kl": {"layer_<i>": {"layer_<j>": ...}}, "ce": {...}}},   # optional
     "baseline": {"ce": {"final": ...}, "entropy": {"final": ...}}}

so a flattened key reads ``{lens}.{kl|ce|entropy}.layer_{i}``. :func:`write_aggregate_metrics`
writes the same object for onejump's lenses, so the two files can be read by the same code and put
side by side. ``layer_{i}`` is exit level i (level 0 = the embedding output, as tuned-lens's
``layer_0`` is ``hidden_states[0]``). ``layer_transfer`` is onejump's K x K reuse matrix: tuned-lens
names by ``layer_<i>`` the translator used and by ``layer_<j>`` the level it reads, which is jump
``m = i`` applied at level ``k = j``.

Units: tuned-lens multiplies by a nats-to-bits-per-byte factor of its corpus; onejump samples one
token per sentence, so its numbers stay in nats per token (``scale`` converts if wanted).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import atomic_write_text
from .metrics import metrics as registered


def tuned_lens_names() -> tuple[str, ...]:
    """tuned-lens's names of the registry's metrics that have one (``kl``, ``ce``, ``entropy``)."""
    return tuple(m.tuned_lens for m in registered() if m.tuned_lens is not None)

TRANSFER_METRICS = ("kl", "ce")
FILE_NAME = "aggregate_metrics.json"


def _values(name: str, values: Any) -> list[float]:
    try:
        out = [float(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]
    except (TypeError, ValueError):
        raise ConfigError(f"metric {name} must be a 1-D sequence of numbers") from None
    return out


def _number(v: float) -> float | None:
    return v if math.isfinite(v) else None  # JSON has no NaN; a metric that could not be computed is null


def aggregate_metrics(metrics: Mapping[str, Mapping[str, Sequence[float]]], *,
                      baseline: Mapping[str, float] | None = None,
                      layer_transfer: Mapping[str, Mapping[str, Any]] | None = None,
                      scale: float = 1.0) -> dict[str, Any]:
    """The nested tuned-lens-shaped object.

    ``metrics[lens][metric]`` is one value per exit level (``metric`` in kl, ce, entropy; a metric
    may be left out, e.g. ce for a store without next tokens). ``baseline`` holds the model's own
    ``ce`` and ``entropy`` (``baseline.{ce|entropy}.final``). ``layer_transfer[lens][metric]`` is a
    K x K matrix ``[m][k]``: translator (jump) m read at level k. Every value is multiplied by
    ``scale``. Lengths must agree across lenses and metrics.
    """
    out: dict[str, Any] = {}
    levels: int | None = None
    for lens, per_metric in metrics.items():
        if lens == "baseline":
            raise ConfigError("'baseline' is reserved for the model's own metrics; rename the lens")
        block: dict[str, Any] = {}
        for metric, values in per_metric.items():
            if metric not in tuned_lens_names():
                raise ConfigError(f"unknown metric {metric!r} for lens {lens!r}; tuned-lens's are "
                                  f"{', '.join(tuned_lens_names())}")
            vals = _values(f"{lens}.{metric}", values)
            if levels is None:
                levels = len(vals)
            elif len(vals) != levels:
                raise ConfigError(f"{lens}.{metric} has {len(vals)} levels, other metrics have {levels}")
            block[metric] = {f"layer_{i}": _number(v * scale) for i, v in enumerate(vals)}
        for metric, matrix in (layer_transfer or {}).get(lens, {}).items():
            if metric not in TRANSFER_METRICS:
                raise ConfigError(f"unknown layer-transfer metric {metric!r}; use kl or ce")
            rows = [_values(f"{lens}.layer_transfer.{metric}", row) for row in matrix]
            if levels is not None and (len(rows) != levels or any(len(r) != levels for r in rows)):
                raise ConfigError(f"{lens}.layer_transfer.{metric} must be {levels} x {levels}")
            block.setdefault("layer_transfer", {})[metric] = {
                f"layer_{m}": {f"layer_{k}": _number(v * scale) for k, v in enumerate(row)}
                for m, row in enumerate(rows)}
        out[lens] = block
    unknown = set(layer_transfer or {}) - set(metrics)
    if unknown:
        raise ConfigError(f"layer transfer given for lenses without metrics: {', '.join(sorted(unknown))}")
    if baseline:
        bad = set(baseline) - {"ce", "entropy"}
        if bad:
            raise ConfigError(f"baseline metrics are ce and entropy, got {', '.join(sorted(bad))}")
        out["baseline"] = {m: {"final": _number(float(v) * scale)} for m, v in baseline.items()}
    return out


def flatten_metrics(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys (``tuned.kl.layer_3``) of a nested metrics object, as tuned-lens's users flatten it."""
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, name))
        else:
            flat[name] = value
    return flat


def write_aggregate_metrics(folder: str | Path, metrics: Mapping[str, Mapping[str, Sequence[float]]], *,
                            baseline: Mapping[str, float] | None = None,
                            layer_transfer: Mapping[str, Mapping[str, Any]] | None = None,
                            scale: float = 1.0) -> Path:
    """Write ``folder/aggregate_metrics.json`` (see :func:`aggregate_metrics`); returns its path."""
    obj = aggregate_metrics(metrics, baseline=baseline, layer_transfer=layer_transfer, scale=scale)
    path = Path(folder) / FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=1))
    return path


def metrics_of_result(result: Any, transfer_name: str = "jumps") -> dict[str, Any]:
    """The arguments of :func:`write_aggregate_metrics` from an :class:`~onejump.evaluation.result.EvalResult`.

    Every method of the result with any of kl / cross-entropy / entropy (a metric the evaluation
    could not give, e.g. cross-entropy of a store without next tokens, is left out); the model's
    own cross-entropy as ``baseline.ce``; and, when the reuse matrix covers every jump, its kl and ce
    as ``{transfer_name}.layer_transfer``.
    """
    metrics: dict[str, dict[str, Any]] = {}
    for method in result.methods:
        block = {m.tuned_lens: result.metric(method, m.name).tolist() for m in registered()
                 if m.tuned_lens is not None and result.has(method, m.name)}
        if block:
            metrics[method] = block
    baseline = {"ce": result.final_cross_entropy} if result.final_cross_entropy is not None else None
    transfer: dict[str, dict[str, Any]] = {}
    if list(result.jumps) == list(range(result.num_blocks)):
        for m in registered():
            if m.tuned_lens not in TRANSFER_METRICS:
                continue
            try:
                transfer.setdefault(transfer_name, {})[m.tuned_lens] = result.pair_matrix(m.name).tolist()
            except KeyError:
                continue
    if transfer and transfer_name not in metrics:
        metrics[transfer_name] = {}
    return {"metrics": metrics, "baseline": baseline, "layer_transfer": {k: v for k, v in transfer.items() if v}}


__all__ = ["FILE_NAME", "aggregate_metrics", "flatten_metrics", "metrics_of_result",
           "tuned_lens_names", "write_aggregate_metrics"]

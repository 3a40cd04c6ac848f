"""The metric registry: every metric of an evaluation, defined once.

A :class:`Metric` says where its per-sample values come from (a quantity the scoring kernel of
:mod:`onejump.evaluation.scoring` writes, or a function of such quantities), how they are reduced
over samples, which direction is better, its unit and its display name, and where it appears:
results.json's per-method entries (with a bootstrap CI, with a ``mean_<name>`` over levels), the
report's tables, the field-metrics figure, tuned-lens's ``aggregate_metrics.json``, the reuse
matrix. Evaluation, aggregation, results.json, the sweep, the report and the figures iterate over
:data:`METRICS`; adding a metric is one :func:`register` call (and, for a new per-sample quantity,
its computation in the scoring kernel).

Metrics, per exit level k = 0..K-1, on the test split, with t* the model's own top-1 token:

- ``precision@1``: ``argmax lens(h^k, k) == t*``; ``precision@5``: t* among the 5 largest logits
  (fewer than 5 logits strictly larger than the logit of t*);
- ``surprisal`` (the paper's): ``-log softmax(lens(h^k, k))[t*]``;
- ``reverse_surprisal`` (the ``mat`` code's): ``-log p_final(argmax lens(h^k, k))``;
- the field's metrics (tuned-lens): ``kl`` = KL(p_final || p_lens) in nats, ``cross_entropy``
  against the sentence's real next token (the model's own is the floor; rows whose position ends
  the sentence have no next token and are left out), and the lens's ``entropy``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class Metric:
    """One metric.

    ``quantity``: the per-sample tensor (K, N) of the scoring kernel it reads (``correct1``, ``kl``,
    ...); or ``derive``: a function of ``get(quantity) -> (K, N) tensor`` giving its per-sample values.
    ``reduce``: ``mean`` or ``nanmean`` over samples (NaN marks a sample without a value).
    ``field``: computed only with the field's metrics (an extra pass), and left out where absent.
    ``ci``: results.json carries its per-level 95% bootstrap CI (``<name>_ci``); ``headline``:
    results.json carries ``mean_<name>`` (the mean over levels). ``table``: the report table it is a
    column of (``main``, ``field`` or None). ``figure``: drawn in the field-metrics figure.
    ``axis``: its axis label in figures (default: the display name); ``floor``: the results.json key of
    the model's own value, drawn as a line. ``tuned_lens``: its name in tuned-lens's
    ``aggregate_metrics.json`` (None: not there).
    ``reuse``: results.json keeps its K x K reuse matrix.
    """

    name: str
    display: str
    better: str  # "higher" | "lower"
    unit: str = ""
    quantity: str | None = None
    derive: Callable[[Callable[[str], Any]], Any] | None = None
    reduce: str = "mean"
    field: bool = False
    ci: bool = False
    headline: bool = False
    table: str | None = None
    fmt: str = ".3f"
    figure: bool = False
    axis: str | None = None
    floor: str | None = None
    tuned_lens: str | None = None
    reuse: bool = False

    @property
    def label(self) -> str:
        """Its axis label in figures: ``KL(p_final || p_lens), nats``."""
        return (self.axis or self.display) + (f", {self.unit}" if self.unit else "")

    @property
    def header(self) -> str:
        """Its column header in the report: ``mean KL (nats)``."""
        return f"mean {self.display}" + (f" ({self.unit})" if self.unit else "")


#: The registry, in report order.
METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add ``metric`` to the registry (its name must be new and name exactly one source)."""
    if metric.name in METRICS:
        raise ConfigError(f"metric '{metric.name}' is already registered")
    if (metric.quantity is None) == (metric.derive is None):
        raise ConfigError(f"metric '{metric.name}' needs exactly one of quantity= and derive=")
    if metric.better not in ("higher", "lower") or metric.reduce not in ("mean", "nanmean"):
        raise ConfigError(f"metric '{metric.name}': better is higher|lower, reduce mean|nanmean")
    METRICS[metric.name] = metric
    return metric


def get_metric(name: str) -> Metric:
    """The registered metric ``name`` (a clear error for an unknown one)."""
    try:
        return METRICS[name]
    except KeyError:
        raise ConfigError(f"unknown metric '{name}'; use one of {', '.join(METRICS)}") from None


def metrics(**where: Any) -> list[Metric]:
    """The registered metrics whose attributes equal ``where`` (``metrics(field=True)``), in order."""
    return [m for m in METRICS.values() if all(getattr(m, k) == v for k, v in where.items())]


register(Metric("precision@1", "precision@1", "higher", quantity="correct1", ci=True, headline=True, table="main",
                reuse=True))
register(Metric("precision@5", "precision@5", "higher", quantity="correct5", headline=True, table="main"))
register(Metric("surprisal", "surprisal", "lower", "nats", quantity="surprisal", ci=True, headline=True,
                table="main", fmt=".2f", reuse=True))
register(Metric("reverse_surprisal", "reverse surprisal", "lower", "nats", quantity="reverse_surprisal"))
register(Metric("kl", "KL", "lower", "nats", quantity="kl", field=True, headline=True, table="field", figure=True,
                axis="KL(p_final || p_lens)", tuned_lens="kl"))
register(Metric("cross_entropy", "cross-entropy", "lower", "nats", quantity="ce", reduce="nanmean", field=True,
                headline=True, table="field", figure=True, axis="cross-entropy vs the next token",
                floor="final_cross_entropy", tuned_lens="ce"))
register(Metric("entropy", "entropy", "lower", "nats", quantity="entropy", field=True, headline=True,
                table="field", tuned_lens="entropy"))

__all__ = ["METRICS", "Metric", "get_metric", "metrics", "register"]

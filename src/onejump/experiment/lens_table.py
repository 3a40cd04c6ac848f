"""The one table of a run's lenses: each lens's id, kind, folder, display name and colour.

The id is the lens's only name: the evaluation's, results.json's, the report's, the figures', the
early-exit simulation's and the command line's (``onejump lens --lens ojfa --run RUN``; ``logit``, the
kind of the ``identity`` lens, names the model's own head for any model, without a run). The kind is
the saved lens's class (:attr:`onejump.lenses.Lens.kind`), the folder where the run keeps it
(relative to the run folder; None: nothing saved, the model's own head). ``arbitrary_mean`` is not
a lens but a row of results.json (the reuse matrix's mean over jumps), drawn like one.

Adding a lens to the run: a row here, its training (or selection) in the pipeline, and, when it
needs its own figure or claim, the report.

A results.json may name the per-level lens ``full_nnjtc``, an alias its readers accept: :data:`OLD_NAMES`
maps each alias to its id, and :func:`canonical_results` renames such a file's keys for its readers
(report, compare).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class RunLens:
    id: str
    kind: str | None  # the Lens kind saved in its folder; None: not a saved lens
    folder: str | None  # relative to the run folder
    display: str
    colour: str
    made_by: str | None = None  # the command that writes it


LENSES: dict[str, RunLens] = {lens.id: lens for lens in (
    RunLens("identity", "logit", None, "identity (logit lens)", "tab:gray"),
    RunLens("full", "per-level", "lenses/nnjtc", "full N-NJTC (jump k at level k)", "tab:blue", "train"),
    RunLens("ojfa", "jump", "lenses/ojfa", "OJFA (one jump)", "tab:red", "select"),
    RunLens("joint", "jump", "lenses/joint", "joint jump", "tab:green", "train"),
    RunLens("jtc", "jtc", "lenses/jtc", "JTC (full-rank linear)", "tab:purple", "train"),
    RunLens("tuned", "tuned", "lenses/tuned", "tuned lens (full-rank affine, KL)", "black", "train"),
    RunLens("best", "jump", "sweep/best", "best single jump", "tab:blue", "sweep"),
    RunLens("arbitrary_mean", None, None, "arbitrary jump (mean over m)", "tab:orange"),
)}

#: The lenses a run's evaluation reads, in report order (those the run has).
EVALUATED = ("identity", "full", "ojfa", "joint", "jtc", "tuned", "best")

#: Aliases of lens ids a results.json may hold, each read as its id (new files hold the ids only).
OLD_NAMES = {"full_nnjtc": "full"}


def run_lens(lens_id: str) -> RunLens:
    """The table's row of ``lens_id`` (a clear error for an unknown id)."""
    try:
        return LENSES[lens_id]
    except KeyError:
        raise ConfigError(f"a run has no lens '{lens_id}'; its lenses are {', '.join(EVALUATED)}") from None


def display(lens_id: str) -> str:
    """The lens's display name (the id itself for a name outside the table)."""
    return LENSES[lens_id].display if lens_id in LENSES else lens_id


def colour(lens_id: str) -> str | None:
    return LENSES[lens_id].colour if lens_id in LENSES else None


def _renamed(d: dict[str, Any]) -> dict[str, Any]:
    return {OLD_NAMES.get(k, k): v for k, v in d.items()}


def canonical_results(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with its lens aliases (:data:`OLD_NAMES`) replaced by the table's ids (a file without any
    unchanged)."""
    if not any(k in OLD_NAMES for k in results.get("methods", {})):
        return results
    out = dict(results)
    out["methods"] = _renamed(results["methods"])
    out["parameters"] = _renamed(results.get("parameters", {}))
    out["tests"] = {k.replace("full_nnjtc", "full"): v for k, v in results.get("tests", {}).items()}
    if out.get("beyond"):
        out["beyond"] = {**out["beyond"], "references": _renamed(out["beyond"].get("references", {}))}
    return out


__all__ = ["EVALUATED", "LENSES", "OLD_NAMES", "RunLens", "canonical_results", "colour", "display", "run_lens"]

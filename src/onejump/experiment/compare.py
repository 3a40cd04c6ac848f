"""Several runs side by side: the paper's claims per model, and the best single jump against the lenses.

``onejump compare SOURCE... --out DIR`` reads one ``results.json`` per model (a run folder, its report
folder or the file itself) and writes into DIR:

- ``compare.json`` (schema ``onejump-compare/1``): ``rows`` (the claims, in table order) and ``models``
  sorted by hidden size H, each ``{name, fingerprint, K, H, r, n_train, n_test, source, claims: {id:
  {value, unit, text, verdict, p_value, ci}}, ojfa_gap: {full, joint: {gap_points, ci_points,
  p_value}}, single_jump: {best, logit_lens, tuned_lens, ratios}}``;
- ``models.md``: the claims table (a row per claim, a column per model) and the single-jump table;
- ``ojfa_gap_vs_h.png``: OJFA's gap to full N-NJTC and to the joint jump against H (and, where a run has
  a sweep, the best single jump and the tuned lens relative to the logit lens).

The claims are recomputed with :func:`~onejump.experiment.claims.evaluate_claims` from each file's
numbers, so every source is checked against the same claims, whichever claims its file lists. Nothing
is written when a source is bad.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..io import atomic_write_text
from .claims import MATCH_TOLERANCE, early_levels, evaluate_claims
from .folder import RunFolder
from .lens_table import canonical_results, display
from .report_tuned import counted
from .results import SCHEMA
from .results_check import check_claim_inputs

COMPARE_SCHEMA = "onejump-compare/1"

#: A best single jump "keeps up" with the tuned lens at a level where it reaches this fraction of it.
KEEP_UP = 0.8

#: The claims table's rows: claim id and a label that holds for every model.
ROWS = (
    ("parameter_reduction", "OJFA cuts shortcut parameters K-fold (Sec. 4)"),
    ("ojfa_matches_full", f"OJFA within {MATCH_TOLERANCE * 100:.0f} points of full N-NJTC (Sec. 6): "
                          "full N-NJTC minus OJFA"),
    ("ojfa_beats_identity_early", "OJFA above the logit lens at early levels, the first third (Sec. 6): "
                                  "OJFA minus logit lens"),
    ("ojfa_at_least_joint", "OJFA at least as good as the joint jump (Sec. 5): OJFA minus joint"),
    ("ojfa_beats_arbitrary", "OJFA above the average arbitrary jump (Sec. 5): OJFA minus average jump"),
    ("low_rank_below_60", "No low-rank shortcut over 60% precision@1 at any exit level (Sec. 7): the highest"),
)

_REQUIRED = ("model", "data", "levels", "methods", "parameters", "reuse", "selection")
_METHODS = ("identity", "full", "ojfa", "joint", "arbitrary_mean")


# ---- reading the sources ------------------------------------------------------------------------
def resolve_source(source: str | Path) -> Path:
    """The results.json a source names: the file itself, a report folder's, or a run folder's report's."""
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"{source} does not exist: give a run folder, its report folder or a results.json")
    if path.is_file():
        return path
    if (path / "results.json").is_file():
        if (path.parent / "run.json").is_file():  # a run's report folder: the run is checked as well
            _refuse_stale_report(RunFolder(path.parent), path / "results.json")
        return path / "results.json"
    run = RunFolder(path)
    if (run.report_dir / "results.json").is_file():
        if (path / "run.json").is_file():  # a run folder (not a copied report tree): its report must be current
            _refuse_stale_report(run, run.report_dir / "results.json")
        return run.report_dir / "results.json"
    if (path / "run.json").is_file():
        raise ConfigError(f"run folder {source} has no report yet: run `onejump report --out {source}`")
    raise ConfigError(f"{source} holds no results.json: give a run folder, its report folder or a results.json")


def _refuse_stale_report(run: RunFolder, results: Path) -> None:
    """A run's report is read only while it is current: every stage it was built from unchanged since
    (the stage protocol's keys; a folder whose stages carry no records is refused too)."""
    run.refuse_older_version()
    run.records.require(run.stages.report())


def load_results(source: str | Path) -> tuple[Path, dict[str, Any]]:
    """Read and check one source's results.json."""
    path = resolve_source(source)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{path} is not JSON: give the results.json of an onejump report") from None
    if not isinstance(results, dict) or results.get("schema") != SCHEMA:
        raise ConfigError(f"{path} is not an onejump results.json (its schema is not '{SCHEMA}')")
    results = canonical_results(results)  # lens aliases (OLD_NAMES), read as the lens table's ids
    missing = [k for k in _REQUIRED if k not in results]
    if not missing:
        parts = {"model": ("name", "hidden_size"), "data": ("n_train", "n_test"), "methods": _METHODS}
        missing = [f"{part}.{key}" for part, keys in parts.items() for key in keys
                   if not isinstance(results[part], dict) or key not in results[part]]
    if missing:
        raise ConfigError(f"{path} is an incomplete onejump results.json: it lacks {', '.join(missing)}")
    check_claim_inputs(results, path)
    return path, results


def _identity(results: dict[str, Any]) -> tuple[Any, ...]:
    """Two runs are the same model on the same data when weights and sample agree."""
    d = results["data"]
    return (results["model"].get("fingerprint"), d.get("corpus"), d.get("n_train"), d.get("n_test"), d.get("seed"))


def load_sources(sources: list[str | Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Every source's results, checked, one per model and data, sorted by hidden size."""
    if not sources:
        raise ConfigError("give at least one SOURCE (a run folder, its report folder or a results.json)")
    loaded = [load_results(s) for s in sources]
    seen: dict[tuple[Any, ...], Path] = {}
    for path, results in loaded:
        key = _identity(results)
        if key in seen:
            d = results["data"]
            raise ConfigError(f"{seen[key]} and {path} are both {results['model']['name']} (weights {key[0]}) on "
                              f"the same data ({d.get('n_train')} train / {d.get('n_test')} test, seed "
                              f"{d.get('seed')}): give one of them")
        seen[key] = path
    return sorted(loaded, key=lambda pr: (pr[1]["model"]["hidden_size"], pr[1]["model"]["name"]))


# ---- one model's numbers ------------------------------------------------------------------------
def _p1(results: dict[str, Any], name: str) -> np.ndarray:
    return np.asarray(results["methods"][name]["precision@1"], dtype=np.float64)


def claim_numbers(results: dict[str, Any], claims: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each claim's number: {value, unit, text} (differences in points of mean precision@1)."""
    K = len(results["levels"])
    early = early_levels(K)
    ojfa = _p1(results, "ojfa")

    def points(value: float) -> dict[str, Any]:
        return {"value": value, "unit": "points", "text": f"{value:+.1f} pts"}

    factor = float(results["parameters"]["reduction_factor"])
    out = {
        "parameter_reduction": {"value": factor, "unit": "x", "text": f"{factor:.0f}x (K = {K})"},
        "ojfa_matches_full": points(100 * (_p1(results, "full").mean() - ojfa.mean())),
        "ojfa_beats_identity_early": points(100 * (ojfa[:early].mean() - _p1(results, "identity")[:early].mean())),
        "ojfa_at_least_joint": points(100 * (ojfa.mean() - _p1(results, "joint").mean())),
        "ojfa_beats_arbitrary": points(100 * (ojfa.mean() - _p1(results, "arbitrary_mean").mean())),
    }
    out["ojfa_beats_identity_early"]["text"] += f" (levels 0..{early - 1})"
    for c in claims:
        if c["id"] == "low_rank_below_60":
            ci = c.get("ci")
            where = display(c["method"]).split(" (")[0]
            out[c["id"]] = {"value": c["value"], "unit": "precision@1", "ci": ci,
                            "text": f"{c['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
                                    + f" ({where}, level {c['level']})"}
    return out


def ojfa_gaps(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Full N-NJTC minus OJFA and joint minus OJFA, mean precision@1 in points, with the paired test's CI."""
    tests = results.get("tests") or {}
    out = {}
    for other in ("full", "joint"):
        t = tests.get(f"ojfa_vs_{other}") or {}
        ci = t.get("ci")  # of OJFA minus the other: flipped
        out[other] = {"gap_points": float(100 * (_p1(results, other).mean() - _p1(results, "ojfa").mean())),
                      "ci_points": [-100 * ci[1], -100 * ci[0]] if ci else None, "p_value": t.get("p_value")}
    return out


def _lens(method: dict[str, Any] | None, K: int) -> dict[str, Any] | None:
    if method is None:
        return None
    return {"mean_precision@1": float(np.mean(method["precision@1"][:K])), "parameters": method.get("parameters"),
            "mean_kl": method.get("mean_kl")}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _times(ratio: float | None) -> str:
    return "n/a (the tuned lens's is 0)" if ratio is None else f"{ratio:.2f}x"


def bar_summary(bar: dict[str, Any] | None) -> str | None:
    """One line for the three-part bar against the tuned lens (``results["tuned_bar"]``), or None."""
    if not bar:
        return None
    mean, every = bar["mean"], bar["every_level"]
    below = every["levels_not_held"]
    parts = [f"mean {_times(mean['ratio'])} ({mean['verdict']})",
             f"lowest level {_times(every['lowest_ratio'])}" + ("" if every["held"] else
                                                                f", {counted(len(below), 'level')} not held at 0.8x")]
    if "kl" in bar:
        parts.append(f"KL {_times(bar['kl']['ratio'])} ({bar['kl']['verdict']})")
    return ("met: " if bar["met"] else "not met: ") + "; ".join(parts)


def single_jump(results: dict[str, Any]) -> dict[str, Any]:
    """The sweep's best single jump against the logit lens and the tuned lens (None where a run lacks one)."""
    methods, K = results["methods"], len(results["levels"])
    tuned_key = next((k for k in methods if k.startswith("tuned")), None)
    tuned = methods.get(tuned_key) if tuned_key else None
    best = (results.get("beyond") or {}).get("best")
    out: dict[str, Any] = {"logit_lens": _lens(methods["identity"], K), "tuned_lens": _lens(tuned, K), "best": None}
    if tuned is not None:
        out["tuned_lens"]["method"] = tuned_key
    if best:
        out["best"] = {**_lens(best, K), "method": best.get("method"), "objective": best.get("objective"),
                       "rank": best.get("rank")}
    b = out["best"]["mean_precision@1"] if best else None
    t = out["tuned_lens"]["mean_precision@1"] if tuned is not None else None
    keep_up = None
    if best and tuned is not None:
        bp, tp = np.asarray(best["precision@1"][:K]), np.asarray(tuned["precision@1"][:K])
        keep_up = float(np.mean(bp >= KEEP_UP * tp))
    out["bar"] = bar_summary(results.get("tuned_bar"))
    out["ratios"] = {
        "best_over_logit_lens": _ratio(b, out["logit_lens"]["mean_precision@1"]),
        "best_over_tuned_lens": _ratio(b, t),
        "tuned_over_logit_lens": _ratio(t, out["logit_lens"]["mean_precision@1"]),
        "levels_best_keeps_up_with_tuned": keep_up,
        "tuned_parameters_over_best": _ratio(tuned.get("parameters") if tuned else None,
                                             best.get("parameters") if best else None),
    }
    return out


def model_summary(path: Path, results: dict[str, Any]) -> dict[str, Any]:
    """One column of the comparison."""
    claims = evaluate_claims(results)
    numbers = claim_numbers(results, claims)
    mdl, data = results["model"], results["data"]
    return {
        "name": mdl["name"], "fingerprint": mdl.get("fingerprint"), "K": len(results["levels"]),
        "H": mdl["hidden_size"], "r": results.get("config", {}).get("rank"), "n_train": data.get("n_train"),
        "n_test": data.get("n_test"), "source": str(path),
        "claims": {c["id"]: {**numbers.get(c["id"], {"value": None, "unit": None, "text": c["ours"]}),
                             "verdict": c["verdict"], "p_value": c.get("p_value"), "claim": c["claim"],
                             "paper": c["paper"]} for c in claims},
        "ojfa_gap": ojfa_gaps(results),
        "single_jump": single_jump(results),
    }


def compare(sources: list[str | Path]) -> dict[str, Any]:
    """The comparison of the runs ``sources`` name (compare.json's content)."""
    models = []
    for path, results in load_sources(sources):
        try:
            models.append(model_summary(path, results))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path} is an incomplete onejump results.json: {type(exc).__name__} {exc}") from None
    rows = [{"id": cid, "label": label} for cid, label in ROWS]
    extra = [cid for m in models for cid in m["claims"] if cid not in {r["id"] for r in rows}]
    rows += [{"id": cid, "label": next(m["claims"][cid]["claim"] for m in models if cid in m["claims"])}
             for cid in dict.fromkeys(extra)]
    return {"schema": COMPARE_SCHEMA, "rows": rows, "models": models}


# ---- writing ------------------------------------------------------------------------------------
def write_compare(sources: list[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Compare the runs and write compare.json, models.md and ojfa_gap_vs_h.png into ``out_dir``."""
    from .compare_render import gap_figure, render_models_md

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out_dir} is a file, not a folder")
    summary = compare(sources)  # every check, and every rendering, before anything is written
    markdown, png = render_models_md(summary), gap_figure(summary)
    out.mkdir(parents=True, exist_ok=True)
    figure = out / "ojfa_gap_vs_h.png"
    tmp = out / f".{figure.name}.{os.getpid()}.tmp"
    try:
        tmp.write_bytes(png)
        os.replace(tmp, figure)
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write_text(out / "compare.json", json.dumps(summary, indent=1))
    atomic_write_text(out / "models.md", markdown)
    return summary


__all__ = ["COMPARE_SCHEMA", "ROWS", "claim_numbers", "compare", "load_results", "load_sources", "model_summary",
           "ojfa_gaps", "resolve_source", "single_jump", "write_compare"]

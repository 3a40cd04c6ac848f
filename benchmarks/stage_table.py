"""Each stage's time and peak memory on several run folders, as one table (stage x model).

Reads only what the runs recorded: ``run.json`` (model, n_train, n_test), ``store/manifest.json``
(K, H), ``timings.json`` (seconds per stage), ``memory.json`` (peak RSS per stage, where recorded)
and, when the run was reported, ``report/results.json`` (V and the model's own size). Nothing is
recomputed; a stage a run did not record shows as ``-``.

Usage: python benchmarks/stage_table.py RUN [RUN ...]

Prints the markdown table and writes benchmarks/results/stage-times.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import save

# the run's own stages in pipeline order; any other recorded stage (the sweep's trainings) follows
ORDER = ("extract", "train:nnjtc", "train:joint", "train:jtc", "train:tuned", "select", "evaluation", "reuse",
         "exits", "report")


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: {path} is not valid JSON ({exc})") from None


def _vocab_size(model: str) -> int | None:
    """V from a model folder's config.json (a run of a local model); None for an alias."""
    config = _json(Path(model) / "config.json") if Path(model).is_dir() else None
    return None if config is None else config.get("vocab_size")


def read_run(folder: Path) -> dict:
    """What one run folder recorded about its stages."""
    run = _json(folder / "run.json")
    if run is None:
        raise SystemExit(f"error: {folder} is not an onejump run folder (no run.json)")
    data = run["data"]
    manifest = _json(folder / "store" / "manifest.json") or {}
    results = _json(folder / "report" / "results.json") or {}
    memory = _json(folder / "memory.json") or results.get("memory") or {}
    model = results.get("model", {})
    return {
        "folder": str(folder), "model": data["model"],
        "K": manifest.get("num_blocks", model.get("num_blocks")),
        "H": manifest.get("hidden_size", model.get("hidden_size")),
        "V": model.get("vocab_size") or _vocab_size(data["model"]),
        "n_train": manifest.get("n_train", data["n_train"]), "n_test": manifest.get("n_test", data["n_test"]),
        "timings": _json(folder / "timings.json") or results.get("timings") or {},
        "peak_rss_mib": memory.get("peak_rss_mib", {}), "peak_method": memory.get("method", {}),
        "model_mib": results.get("memory", {}).get("model_mib"),
    }


def _stages(runs: list[dict]) -> list[str]:
    seen = {s for r in runs for s in (*r["timings"], *r["peak_rss_mib"])}
    return [s for s in ORDER if s in seen] + sorted(seen - set(ORDER))


def _cell(run: dict, stage: str) -> str:
    seconds, peak = run["timings"].get(stage), run["peak_rss_mib"].get(stage)
    if seconds is None and peak is None:
        return "-"
    mark = " *" if run["peak_method"].get(stage) == "process peak so far" else ""
    return f"{'-' if seconds is None else f'{seconds:,.1f}'} s / {'-' if peak is None else f'{peak:,.0f}{mark}'} MiB"


def markdown(runs: list[dict]) -> str:
    """Rows: the models' shapes and sample sizes, then every stage's ``seconds / peak RSS``."""
    def row(label: str, cells: list[str]) -> str:
        return f"| {label} | " + " | ".join(cells) + " |"

    def value(v) -> str:
        return "-" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:,.0f}"

    lines = [row("model", [r["model"] for r in runs]), "|---" * (len(runs) + 1) + "|"]
    lines += [row(label, [value(r[key]) for r in runs]) for label, key in
              (("K", "K"), ("H", "H"), ("V", "V"), ("model weights (MiB)", "model_mib"))]
    lines.append(row("n_train / n_test", [f"{r['n_train']:,} / {r['n_test']:,}" for r in runs]))
    lines += [row(stage, [_cell(r, stage) for r in runs]) for stage in _stages(runs)]
    lines.append(row("recorded stages, total (s)",
                     [f"{sum(r['timings'].values()):,.1f}" if r["timings"] else "-" for r in runs]))
    if any(m == "process peak so far" for r in runs for m in r["peak_method"].values()):
        lines += ["", "\\* the process's peak up to the end of the stage (its own peak could not be measured)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (one column each)")
    args = ap.parse_args(argv)
    runs = [read_run(folder) for folder in args.runs]
    table = markdown(runs)
    print(table)
    payload = {"benchmark": "stage-times", "runs": runs, "markdown": table}
    save("stage-times", payload)
    return payload


if __name__ == "__main__":
    main()

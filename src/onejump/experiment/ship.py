"""Make a shipped lens from a run folder: the lens, its card, its test-split evaluation measured here.

``python -m onejump.experiment.ship RUN [--lens joint] [--name best] [--command "..."]`` loads the
run's model and store, evaluates the lens on the store's test split (every level, precision@1 and
KL), and writes ``onejump/pretrained/<model alias>/<name>/`` (config.json, weights.safetensors,
README.md) with card information from the run: its corpus and sample, its training rows and prefix
tokens, its preset, and the command that made it.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..lenses.shipped import ROOT


def model_folder_name(model: str) -> str:
    """The folder a model's shipped lenses live in: its alias, or the last part of a path or hub id."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(model).name) or "model"


def run_card_info(run: Path, store: Any, command: str | None, note: str | None = None) -> dict[str, Any]:
    """Card information a run folder records: corpus, sample sizes, training rows and tokens, preset."""
    data = json.loads((run / "run.json").read_text())["data"]
    info: dict[str, Any] = {
        "corpus": f"{data['corpus']} (English Wikipedia sentences of 8 to 60 words; {data['n_train']} train / "
                  f"{data['n_test']} test, disjoint, seed {data['seed']}, one token position per sentence)",
        "train_rows": int(len(store.indices("train"))),
        "train_tokens": int((store.meta("position", "train") + 1).sum()),
    }
    if str(data["corpus"]).startswith("hf:"):
        info["datasets"] = [str(data["corpus"])[3:]]
    preset = run / "preset.json"
    if preset.is_file():
        info["recipe"] = {k: json.dumps(v) if isinstance(v, dict) else v
                          for k, v in json.loads(preset.read_text()).items()}
    if note:
        info["recipe"] = {**info.get("recipe", {}), "note": note}
    if command:
        info["command"] = command
    return info


def ship(run: str | Path, lens: str = "joint", name: str = "best", *, command: str | None = None,
         note: str | None = None, root: Path | None = None, progress: bool = True) -> Path:
    """Evaluate lens ``lens`` of run folder ``run`` on its test split and write it, with its card, as a shipped lens."""
    from ..evaluation.card_entry import evaluation_card
    from ..evaluation.evaluator import evaluate
    from ..lenses.base import Lens
    from .folder import RunFolder
    from .lens_table import LENSES

    run = Path(run)
    opened = RunFolder(run, device="cpu", progress=progress)
    data = asdict(opened.data_args())
    if lens not in {row.id for row in LENSES.values() if row.folder is not None}:
        raise ConfigError(f"{run} has no lens '{lens}' (a lens id of the run: "
                          f"{', '.join(row.id for row in LENSES.values() if row.folder is not None)})")
    # the one check of a run's lenses: a missing or superseded lens is refused with the command to run
    folder = opened.current_lens_path(lens)
    lm, store = opened.lm(), opened.store()
    chosen = Lens.from_pretrained(folder, lm)
    result = evaluate(store, {name: chosen}, split="test", progress=progress)
    ev = evaluation_card(result, name)
    ev["sample"] = {k: data[k] for k in ("corpus", "n_train", "n_test", "seed")}
    info = {**run_card_info(run, store, command, note), "evaluation": ev}
    dest = (root or ROOT) / model_folder_name(str(data["model"])) / name
    chosen.save_pretrained(dest, card=info)
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m onejump.experiment.ship", description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run folder (run.json, store/, lenses/)")
    p.add_argument("--lens", default="joint",
                   help="the run's lens to ship, by its id (joint, ojfa, tuned, ...) (default: %(default)s)")
    p.add_argument("--name", default="best", help="the shipped lens's name (default: %(default)s)")
    p.add_argument("--command", default=None, help="the command that made the run, for the card")
    p.add_argument("--note", default=None, help="a line for the card's recipe (how this lens differs from it)")
    args = p.parse_args(argv)
    print(ship(args.run, args.lens, args.name, command=args.command, note=args.note))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

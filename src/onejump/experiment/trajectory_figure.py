"""The report's trajectory figure: a fixed test sentence read at every level by the logit lens and one lens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def draw_run_trajectory(lm: Any, store: Any, lens: Any, name: str, path: Path) -> Path:
    """Draw the prediction trajectory of the run's fixed test sentence (the first test prefix, in corpus
    order, of 12 to 20 tokens) through the logit lens and ``lens`` (called ``name``) into ``path``."""
    from ..lenses.base import LogitLens
    from ..trajectory import save_trajectories, trajectories

    lenses = [LogitLens(lm), lens]  # the one it draws, not every lens
    test = store.indices("test")
    # rows are stored by prefix length; in corpus order, the first test prefix long enough to show
    # a trajectory (a sentence, not two tokens)
    in_order = test[np.argsort(store.meta("sample_id")[test], kind="stable")][:500]
    row = next((int(r) for r in in_order if 12 <= len(store.prefix_tokens(int(r))) <= 20),
               int(in_order[0]))
    prompt = lm.tokenizer.decode(store.prefix_tokens(row), skip_special_tokens=True)
    trajs = trajectories([x.to(lm.device) for x in lenses], lm, prompt, names=["logit lens", name])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_trajectories(trajs, path, title=f"{lm.name}: what each level predicts")
    return path


__all__ = ["draw_run_trajectory"]

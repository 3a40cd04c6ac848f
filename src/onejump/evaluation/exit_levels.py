"""Exit checks only at a chosen set of levels, chosen from an offline exit simulation.

Choosing levels and lambda on the split they are then scored on is optimistic: choose on a
simulation of the train split and read the choice on the test split with :func:`evaluate_choice`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..errors import ConfigError
from .exit_simulation import ExitSimulation, SavedAt


class LevelChoice(NamedTuple):
    """Exit levels chosen by :func:`choose_exit_levels` and what they save (compute, checks included)."""

    lens: str
    measure: str
    agreement_floor: float
    include_checks: bool
    levels: list[int]
    best: SavedAt | None  # with the chosen levels; None when checking no level is best
    saved: float  # blocks (or block-equivalents with checks); 0 when no level is checked
    saved_all_levels: float | None  # every simulated level checked (None: floor not reached)

    def to_dict(self) -> dict[str, Any]:
        return {**self._asdict(), "best": self.best._asdict() if self.best is not None else None}


def choose_exit_levels(sim: ExitSimulation, lens: str, measure: str, *, agreement: float = 0.95,
                       include_checks: bool = True) -> LevelChoice:
    """The set of exit levels that saves the most compute (checks included) at ``agreement`` or better.

    Greedy backward elimination from every simulated level: drop, one at a time, the level whose
    removal helps most, while some removal helps. Dropping a level moves its exits to later levels
    and spares its check for the tokens that pass it. Until the floor is reached, "helps" means a
    higher best agreement (e.g. dropping the levels where a lens is confidently wrong); after, more
    compute saved. Checking no level (plain decoding: saves 0, agreement 1) is a candidate, so the
    result never saves less than 0 nor less than checking every level. ``include_checks=False``
    optimises blocks saved alone (the checks' cost left out).
    """

    def score(levels: list[int]) -> tuple[tuple[int, float, float], SavedAt | None]:
        if not levels:
            return (1, 0.0, 0.0), None
        best = sim.saved_at(lens, measure, agreement, include_checks=include_checks, levels=levels)
        if best is not None:
            return (1, best.blocks_saved, 0.0), best
        c = sim.curve(lens, measure, levels)
        ok = np.nonzero(c.exit_rate > 0)[0]
        if not ok.size:
            return (0, -1.0, 0.0), None
        i = ok[np.argmax(c.agreement[ok])]  # the first of equals: the lowest lambda, the most exits
        spent = c.mean_cost[i] if include_checks else c.mean_blocks[i]
        return (0, float(c.agreement[i]), float(sim.num_blocks - spent)), None

    current = list(sim.levels)
    value, best = score(current)
    all_levels = value[1] if best is not None else None
    while current:
        trials = [(score([k for k in current if k != drop]), drop) for drop in current]
        (new_value, new_best), drop = max(trials, key=lambda t: t[0][0])
        if not new_value > value:
            break
        current.remove(drop)
        value, best = new_value, new_best
    if value[0] == 0 or value[1] <= 0:  # checking no level at all is at least as good
        current, value, best = [], (1, 0.0, 0.0), None
    return LevelChoice(lens, measure, float(agreement), include_checks, current, best, float(value[1]), all_levels)


def evaluate_choice(choice: LevelChoice, sim: ExitSimulation) -> dict[str, Any]:
    """The chosen levels and lambda applied to another simulation (e.g. chosen on train, read on test).

    Returns agreement, exit rate, blocks saved and compute saved (block-equivalents, checks
    counted) there; ``sim`` must have simulated those levels and that lambda.
    """
    K = sim.num_blocks
    if not choice.levels or choice.best is None:
        return {"levels": [], "lam": None, "agreement": 1.0, "exit_rate": 0.0, "blocks_saved": 0.0,
                "compute_saved": 0.0}
    c = sim.curve(choice.lens, choice.measure, choice.levels)
    hits = np.nonzero(np.isclose(c.lambdas, choice.best.lam, rtol=0, atol=1e-9))[0]
    if not hits.size:
        raise ConfigError(f"lambda {choice.best.lam} is not in the simulation's grid")
    i = int(hits[0])
    return {"levels": list(choice.levels), "lam": float(c.lambdas[i]), "agreement": float(c.agreement[i]),
            "exit_rate": float(c.exit_rate[i]), "blocks_saved": float(K - c.mean_blocks[i]),
            "compute_saved": float(K - c.mean_cost[i])}

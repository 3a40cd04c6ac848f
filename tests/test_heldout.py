"""The rows scored as "held out" are exactly the rows training never trained on, whatever its settings."""

import numpy as np
import pytest

from onejump.cli import main


@pytest.fixture()
def spy(monkeypatch):
    """Records the train-split rows every jump training trains on and the rows every held-out score reads."""
    import onejump.evaluation.selection as selection
    import onejump.experiment.sweep as sweep
    import onejump.training.fit as fit

    seen = {"trained": [], "scored": []}
    prepare, reuse_matrix, evaluate = fit._prepare, selection.reuse_matrix, sweep.evaluate

    def spy_prepare(store, config, device):
        config, train, val, dev = prepare(store, config, device)
        seen["trained"].append(np.asarray(train.rows))
        return config, train, val, dev

    def spy_reuse(store, lens, **kwargs):
        if kwargs.get("rows") is not None:
            seen["scored"].append(np.asarray(kwargs["rows"]))
        return reuse_matrix(store, lens, **kwargs)

    def spy_evaluate(store, lenses, **kwargs):
        if kwargs.get("rows") is not None:
            seen["scored"].append(np.asarray(kwargs["rows"]))
        return evaluate(store, lenses, **kwargs)

    monkeypatch.setattr(fit, "_prepare", spy_prepare)
    monkeypatch.setattr(selection, "reuse_matrix", spy_reuse)  # the head rule's scoring
    monkeypatch.setattr(sweep, "evaluate", spy_evaluate)
    return seen


def _never_trained(store, trained: list[np.ndarray]) -> np.ndarray:
    train = np.asarray(store.indices("train"))
    return np.setdiff1d(train, np.concatenate(trained))


def test_selection_scores_exactly_the_rows_training_held_out(tmp_path, tiny_dir, corpus, spy, capsys):
    from onejump.evaluation.selection import holdout_rows
    from onejump.experiment.run import Run

    out = tmp_path / "r"
    code = main(["-q", "run", "--model", str(tiny_dir), "--corpus", str(corpus), "--n-train", "48", "--n-test", "16",
                 "--max-epochs", "2", "--batch-size", "16", "--rank", "2", "--no-tuned", "--out", str(out),
                 "--device", "cpu", "--val-fraction", "0.3", "--train-seed", "3", "--select-rule", "head"])
    assert code == 0, capsys.readouterr().err
    store = Run(out).store()
    (scored,) = spy["scored"]
    never = _never_trained(store, spy["trained"])
    assert len(never) > 0 and np.array_equal(np.sort(scored), never)
    # the bug this guards against: the default fraction and seed hold out other rows
    assert not np.array_equal(np.sort(holdout_rows(store)), never)
    per_level = Run(out).lens("full")
    assert per_level.extra["held_out"]["val_fraction"] == 0.3 and per_level.extra["held_out"]["seed"] == 3
    assert Run(out).lens("ojfa").extra["held_out"] == per_level.extra["held_out"]

    # the sweep scores each of its lenses on the rows that lens's training held out
    spy["trained"].clear(), spy["scored"].clear()
    code = main(["-q", "sweep", "--out", str(out), "--objectives", "mse", "--multipliers", "1",
                 "--residual-multipliers", "none", "--val-fraction", "0.25", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert len(spy["trained"]) == 2 and len(spy["scored"]) == 2  # per-level bank and joint jump
    for trained, scored in zip(spy["trained"], spy["scored"]):
        never = _never_trained(store, [trained])
        assert np.array_equal(np.sort(scored), never)


"""The three-part bar of one jump against the tuned lens, on results whose answer is known."""

import numpy as np
import pytest
import torch

from onejump.errors import ConfigError
from onejump.evaluation.result import EvalResult
from onejump.evaluation.tuned_bar import tuned_bar


def _result(single_rate, tuned_rate, kl_single, kl_tuned, K=4, N=2000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rates = [torch.as_tensor(r, dtype=torch.float32).reshape(K, 1) for r in (single_rate, tuned_rate)]
    per_sample = {"targets": torch.zeros(N, dtype=torch.long), "final/surprisal": torch.zeros(N)}
    for name, rate, kl in (("best", rates[0], kl_single), ("tuned", rates[1], kl_tuned)):
        per_sample[f"{name}/correct1"] = torch.rand(K, N, generator=gen) < rate
        per_sample[f"{name}/kl"] = torch.full((K, N), float(kl)) + 0.1 * torch.rand(K, N, generator=gen)
        for q in ("correct5",):
            per_sample[f"{name}/{q}"] = per_sample[f"{name}/correct1"]
        for q in ("surprisal", "reverse_surprisal", "entropy", "ce"):
            per_sample[f"{name}/{q}"] = torch.ones(K, N)
    return EvalResult(K, N, 10, "test", [], per_sample)


def test_a_jump_far_below_the_tuned_lens_misses_every_part():
    bar = tuned_bar(_result([0.1] * 4, [0.5] * 4, 3.0, 1.0), "best")
    assert not bar["met"] and not bar["mean"]["held"] and bar["mean"]["verdict"] == "not held"
    assert bar["every_level"]["levels_not_held"] == [1, 2, 3] and not bar["kl"]["held"]
    assert bar["mean"]["ratio"] == pytest.approx(bar["mean"]["single"] / bar["mean"]["tuned"])
    # the margin is the mean paired difference, single - 0.9 x tuned
    r = _result([0.1] * 4, [0.5] * 4, 3.0, 1.0)
    c_s = r.samples("best", "precision@1").double().numpy()
    c_t = r.samples("tuned", "precision@1").double().numpy()
    assert bar["mean"]["margin"] == pytest.approx(float((c_s.mean(0) - 0.9 * c_t.mean(0)).mean()))
    lo, hi = bar["mean"]["ci"]
    assert lo <= bar["mean"]["margin"] <= hi


def test_level_0_counts_in_the_mean_but_not_in_the_per_level_part():
    bar = tuned_bar(_result([0.0, 0.5, 0.5, 0.5], [0.5] * 4, 1.0, 1.0), "best")
    assert bar["mean"]["ratio"] == pytest.approx(0.75, abs=0.03) and not bar["mean"]["held"]
    assert bar["every_level"]["held"] and not bar["met"]
    assert bar["levels"][0]["verdict"] == "not held"  # level 0 is reported ...
    assert bar["every_level"]["levels_not_held"] == []  # ... but is not part of the bar
    assert bar["kl"]["verdict"] == "held" and bar["kl"]["ratio"] == pytest.approx(1.0, abs=0.01)


def test_a_jump_as_good_as_the_tuned_lens_meets_the_bar():
    bar = tuned_bar(_result([0.5] * 4, [0.5] * 4, 1.0, 1.0), "best")
    assert bar["met"] and bar["mean"]["verdict"] == "held" and bar["every_level"]["lowest_ratio"] > 0.9


def test_a_close_call_is_inconclusive_and_not_held():
    bar = tuned_bar(_result([0.45] * 4, [0.5] * 4, 1.0, 1.0, N=300), "best")
    lo, hi = bar["mean"]["ci"]
    assert lo < 0 < hi and bar["mean"]["verdict"] == "inconclusive"
    assert not bar["mean"]["held"] and not bar["met"]  # held only where the interval supports it


def test_both_lenses_at_zero_is_inconclusive_not_held():
    bar = tuned_bar(_result([0.0] * 4, [0.0] * 4, 1.0, 1.0, N=20), "best")
    assert bar["mean"]["ci"] == [0.0, 0.0] and bar["mean"]["verdict"] == "inconclusive"
    assert bar["mean"]["ratio"] is None and bar["every_level"]["lowest_ratio"] is None and not bar["met"]
    assert np.isfinite(bar["mean"]["margin"])


def test_a_lens_not_evaluated_is_refused():
    with pytest.raises(ConfigError, match="ojfa"):
        tuned_bar(_result([0.1] * 4, [0.5] * 4, 1.0, 1.0), "ojfa")


def test_training_line_adds_the_warm_start_source():
    from onejump.experiment.report_tuned import _training_lines

    timings = {"train:tuned": 1663.0, "train:joint (kl-res-r16)": 1600.0, "train:joint (kl-res-warm-r16)": 1285.0,
               "train:joint (mse-r8)": 100.0}
    best = {"objective": "kl-res-warm", "rank": 16}
    line = _training_lines({"timings": timings}, best)[-1]
    assert "the tuned lens 1,663 s" in line and "the best single jump 2,885 s" in line and "kl-res jump" in line
    plain = _training_lines({"timings": {**timings, "train:joint (kl-res-r8)": 50.0}},
                            {"objective": "kl-res", "rank": 8})
    assert "best single jump 50 s." in plain[-1]
    assert _training_lines({"timings": {}}, best) == []

"""The lens frontier: Pareto marking (property test), the bars chosen on held-out rows only, and
`onejump frontier` end to end on a tiny run folder."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onejump.cli import main
from onejump.errors import ConfigError
from onejump.evaluation import bars as bars_module
from onejump.evaluation.bars import BARS, Candidate, preregister, verdict
from onejump.experiment.frontier import pareto_optimal

points = st.lists(st.tuples(st.integers(0, 50), st.integers(0, 20)), min_size=1, max_size=25)


def dominates(q, p, sign):
    return q[0] <= p[0] and sign * q[1] >= sign * p[1] and (q[0] < p[0] or sign * q[1] > sign * p[1])


@settings(max_examples=300, deadline=None)
@given(points, st.sampled_from(["higher", "lower"]), st.randoms(use_true_random=False))
def test_pareto_marks_exactly_the_undominated_points(pts, better, rnd):
    sign = 1 if better == "higher" else -1
    marks = pareto_optimal([p for p, _ in pts], [s for _, s in pts], better)
    for p, on in zip(pts, marks):
        assert on == (not any(dominates(q, p, sign) for q in pts))
    # every point off the frontier is dominated by one on it; the frontier is never empty
    front = [p for p, on in zip(pts, marks) if on]
    assert front
    assert all(any(dominates(q, p, sign) for q in front) for p, on in zip(pts, marks) if not on)
    # the marks do not depend on the order of the points
    order = list(range(len(pts)))
    rnd.shuffle(order)
    shuffled = pareto_optimal([pts[i][0] for i in order], [pts[i][1] for i in order], better)
    assert [shuffled[order.index(i)] for i in range(len(pts))] == marks


def test_pareto_on_the_frontier_a_cheaper_better_point_wins():
    assert pareto_optimal([0, 10, 100, 1000], [0.2, 0.3, 0.25, 0.4]) == [True, True, False, True]
    assert pareto_optimal([0, 10, 100], [5.0, 3.0, 3.0], "lower") == [True, True, False]
    with pytest.raises(ConfigError):
        pareto_optimal([1, 2], [1.0])


def test_verdict():
    assert verdict(["held", "held"]) == "held"
    assert verdict(["held", "inconclusive"]) == "inconclusive"
    assert verdict(["held", "missed", "inconclusive"]) == "missed"
    assert verdict([]) == "inconclusive"


class _Held:
    """An evaluation stand-in: mean precision@1 and KL per lens (constant over levels)."""

    split = "rows"
    num_samples = 7

    def __init__(self, scores):
        self.scores = scores
        self.lens_names = list(scores)

    def has(self, name, metric):
        return name in self.scores

    def metric(self, name, metric):
        import torch

        return torch.full((3,), self.scores[name][0 if metric == "precision@1" else 1], dtype=torch.float64)


def test_preregister_picks_by_held_out_scores_within_each_budget():
    tuned = [Candidate("tuned", 1000, False), Candidate("tuned-adam", 1000, False)]
    cands = [Candidate("small", 15, False), Candidate("big", 30, False), Candidate("jump", 8, True),
             Candidate("jump-big", 12, True)]
    held = _Held({"tuned": (0.5, 2.0), "tuned-adam": (0.49, 1.5), "small": (0.3, 3), "big": (0.9, 1),
                  "jump": (0.2, 4), "jump-big": (0.25, 4)})
    reg = preregister(held, cands, tuned, ojfa_parameters=5)
    assert reg["baseline"] == "tuned-adam"  # the lowest held-out KL, not the best precision
    compact, one = reg["bars"]["compact"], reg["bars"]["one-jump"]
    assert compact["budget"] == 20 and set(compact["eligible"]) == {"small", "jump", "jump-big"}
    assert compact["chosen"] == "small"  # "big" is better but over 2% of the tuned lens's parameters
    assert one["budget"] == 10 and one["eligible"] == ["jump"] and one["chosen"] == "jump"
    with pytest.raises(ConfigError):  # a test-split evaluation is refused
        preregister(type("T", (_Held,), {"split": "test"})(held.scores), cands, tuned, 5)
    nothing = preregister(held, [Candidate("big", 30, False)], tuned, 5)
    assert nothing["bars"]["compact"]["chosen"] is None


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_dir, corpus):
    out = tmp_path_factory.mktemp("frontier-run") / "r"
    assert main(["-q", "extract", "--model", str(tiny_dir), "--corpus", str(corpus), "--n-train", "56",
                 "--n-test", "20", "--out", str(out), "--device", "cpu"]) == 0
    return out


FRONTIER = ["-q", "frontier", "--ranks", "1,4", "--jump-ranks", "2", "--tuned-steps", "4", "--max-epochs", "1",
            "--device", "cpu"]


def test_frontier_end_to_end_and_the_bars_read_held_out_rows_only(run_dir, monkeypatch, capsys):
    from onejump.experiment import frontier as frontier_module
    from onejump.experiment.run import Run
    from onejump.lenses import Lens, LowRankLens

    calls = []
    real = frontier_module.evaluate

    def recording(store, lenses, **kw):
        calls.append({"split": kw.get("split", "test"), "rows": kw.get("rows"), "names": sorted(lenses)})
        return real(store, lenses, **kw)

    monkeypatch.setattr(frontier_module, "evaluate", recording)
    seen_by_registration = []
    real_pre = bars_module.preregister

    def spy(held, *a, **kw):
        seen_by_registration.append(list(calls))
        return real_pre(held, *a, **kw)

    monkeypatch.setattr(frontier_module, "preregister", spy)
    assert main([*FRONTIER, "--run", str(run_dir)]) == 0, capsys.readouterr().err
    data = json.loads((run_dir / "frontier" / "frontier.json").read_text())
    names = {p["name"] for p in data["points"]}
    assert names == {"logit", "lowrank-r1", "lowrank-r4", "jump-r2", "jtc", "tuned", "tuned-adam", "tuned-muon"}
    # the registration had seen one evaluation only, on held-out train rows, and the test split came after
    assert len(seen_by_registration) == 1 and len(seen_by_registration[0]) == 1
    first = seen_by_registration[0][0]
    store = Run(run_dir, device="cpu").store()
    held = set(np.asarray(first["rows"]).tolist())
    assert first["rows"] is not None and held <= set(store.indices("train").tolist())
    assert not held & set(store.indices("test").tolist())
    assert [c["split"] for c in calls] == ["test", "test"] and calls[1]["rows"] is None
    assert "jtc" not in first["names"] and "logit" not in first["names"]  # nothing held out for them
    # points: parameters, frontier marks, per-level curves, the recipe and training time of trained ones
    K, H = data["num_blocks"], data["hidden_size"]
    by = {p["name"]: p for p in data["points"]}
    assert by["logit"]["parameters"] == 0 and by["logit"]["pareto_precision"] and by["logit"]["pareto_kl"]
    assert by["lowrank-r4"]["parameters"] == K * (2 * H * 4 + 4 * H) and by["lowrank-r4"]["rank"] == 4
    assert by["tuned"]["parameters"] == K * (H * H + H)
    for p in data["points"]:
        assert len(p["precision@1"]) == len(p["kl"]) == K
        assert p["mean_precision@1_ci"][0] <= p["mean_precision@1"] <= p["mean_precision@1_ci"][1]
        if p["source"] == "frontier":
            assert p["train_seconds"] > 0 and p["train_cpu_seconds"] > 0 and p["config"] is not None
    marks = pareto_optimal([p["parameters"] for p in data["points"]],
                           [p["mean_precision@1"] for p in data["points"]])
    assert marks == [p["pareto_precision"] for p in data["points"]]
    # the bars: registered on held-out rows, checked on test with a verdict
    reg = json.loads((run_dir / "frontier" / "preregistration.json").read_text())
    assert reg == data["preregistration"] and reg["baseline"] in ("tuned", "tuned-adam", "tuned-muon")
    assert reg["bars"]["one-jump"]["chosen"] == "jump-r2"
    for bar in data["bars"].values():
        assert bar["verdict"] in ("held", "missed", "inconclusive")
    assert (run_dir / "frontier" / "frontier.png").stat().st_size > 0
    assert isinstance(Lens.load(run_dir / "frontier" / "points" / "lowrank-r4", store_lm := Run(run_dir).lm()),
                      LowRankLens)
    del store_lm
    # a rerun reuses every trained point
    stamps = {p: p.stat().st_mtime_ns for p in (run_dir / "frontier" / "points").glob("*/weights.safetensors")}
    assert main([*FRONTIER, "--run", str(run_dir)]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    again = json.loads((run_dir / "frontier" / "frontier.json").read_text())
    assert sorted(again["reused"]) == sorted(n for n in names if by[n]["source"] == "frontier")


def test_frontier_entry_and_errors(run_dir, tmp_path, capsys):
    from onejump.experiment.frontier import frontier_entry

    if not (run_dir / "frontier" / "frontier.json").is_file():
        assert main([*FRONTIER, "--run", str(run_dir)]) == 0
    entry = frontier_entry(run_dir)
    assert set(entry["bars"]) == {b.name for b in BARS} and entry["points"]
    assert frontier_entry(tmp_path) is None
    # an opened run: the frontier is a stage, refused once a lens it evaluated has changed since
    from onejump.errors import StageError
    from onejump.experiment.run import Run

    assert frontier_entry(Run(run_dir, device="cpu"))["points"] == entry["points"]
    config = run_dir / "frontier" / "points" / "lowrank-r1" / "config.json"
    text = config.read_text()
    config.write_text(text + " ")
    try:
        with pytest.raises(StageError, match="superseded"):
            frontier_entry(Run(run_dir, device="cpu"))
    finally:
        config.write_text(text)
    assert main(["-q", "frontier", "--run", str(tmp_path / "none")]) == 2
    assert "not an onejump run folder" in capsys.readouterr().err
    assert main(["-q", "frontier", "--run", str(run_dir), "--ranks", "0"]) == 2

"""Degenerate but valid runs give a report that tells the truth; a broken results.json is one line."""

import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from onejump.cli import main
from onejump.errors import OneJumpError
from onejump.experiment.claims import evaluate_claims
from onejump.experiment.compare import bar_summary, load_results, write_compare
from onejump.experiment.lens_table import canonical_results
from onejump.experiment.report import write_report

DOCS = Path(__file__).resolve().parent.parent / "docs" / "results"


@pytest.fixture(scope="module")
def smol():
    return canonical_results(json.loads((DOCS / "smollm2-135m" / "results.json").read_text()))


def _zero_tuned(smol):
    """The tuned lens right at no level, and the bar's ratios undefined (what tuned_bar writes then)."""
    r = copy.deepcopy(smol)
    K = len(r["levels"])
    t = r["methods"]["tuned"]
    t["precision@1"] = [0.0] * K
    t["precision@1_ci"] = [[0.0, 0.0]] * K
    t["mean_precision@1"] = 0.0
    bar = r["tuned_bar"]
    bar["mean"].update(tuned=0.0, ratio=None, verdict="inconclusive", held=False)
    for lv in bar["levels"]:
        lv.update(tuned=0.0, ratio=None)
    bar["every_level"]["lowest_ratio"] = None
    bar["kl"]["ratio"] = None
    bar["met"] = False
    return r


def _zero_everything(smol):
    """Every low-rank shortcut and the reference OJFA of the sweep at 0: a run that learnt nothing."""
    r = _zero_tuned(smol)
    K = len(r["levels"])
    for name in ("full", "ojfa", "joint", "arbitrary_mean"):
        r["methods"][name]["precision@1"] = [0.0] * K
        r["methods"][name]["mean_precision@1"] = 0.0
        if "precision@1_ci" in r["methods"][name]:
            r["methods"][name]["precision@1_ci"] = [[0.0, 0.0]] * K
    r["reuse"]["precision@1"] = [[0.0] * K for _ in range(K)]
    for name in ("ojfa_vs_full", "ojfa_vs_joint"):
        r["tests"][name].update(mean_diff=0.0, ci=[0.0, 0.0], p_value=1.0)
    r["beyond"]["bar"]["paper_ojfa_mean_precision@1"] = 0.0
    r["beyond"]["bar"]["precision_ratio"] = 1e12  # sweep.py divides by max(paper OJFA, 1e-12)
    return r


def _render(results, out):
    """What the pipeline does: the claims judged on the results (results.py), then the report rendered."""
    return write_report({**results, "claims": evaluate_claims(results)}, out)


def test_a_tuned_lens_at_zero_gives_a_report_saying_n_a(smol, tmp_path):
    md = _render(_zero_tuned(smol), tmp_path).read_text()
    one_jump = md.split("## One jump against the tuned lens", 1)[1].split("\n## ", 1)[0]
    assert "| mean | " in one_jump and "n/a" in one_jump and "inf" not in one_jump
    assert "fraction of it is undefined" in one_jump
    assert "n/a (the tuned lens's is 0)" in one_jump and "Bar **not" in one_jump
    assert (tmp_path / "tuned_vs_single.png").is_file() and (tmp_path / "results.json").is_file()


def test_a_run_that_learnt_nothing_claims_nothing_it_cannot_show(smol, tmp_path):
    r = _zero_everything(smol)
    md = _render(r, tmp_path).read_text()
    claims = {c["id"]: c for c in json.loads((tmp_path / "results.json").read_text())["claims"]}
    # 0.000 against 0.000 on 3000 rows that all agree: a 3-point gap is excluded, "at least as good" is not shown
    assert claims["ojfa_matches_full"]["verdict"] == "held" and "[-0.1, +0.1] points" in claims["ojfa_matches_full"][
        "ours"]
    assert claims["ojfa_at_least_joint"]["verdict"] == "inconclusive" and not claims["ojfa_at_least_joint"]["held"]
    assert claims["ojfa_beats_arbitrary"]["verdict"] == "inconclusive"
    assert claims["low_rank_below_60"]["verdict"] == "held"  # 0 of 3000 rows: far below 60%
    assert "1000000000000" not in md and "n/a (paper OJFA's mean precision@1 is 0)" in md


def test_compare_of_a_degenerate_run_is_inconclusive_not_held(smol, tmp_path):
    """0.000 against 0.000 on 20 test rows: no claim about the two is held."""
    r = _zero_everything(smol)
    r["data"]["n_test"] = 20
    for test in r["tests"].values():
        test["n"] = 20
    source = tmp_path / "zero.json"
    source.write_text(json.dumps(r))
    summary = write_compare([source], tmp_path / "out")
    (model,) = summary["models"]
    assert model["claims"]["ojfa_at_least_joint"]["verdict"] == "inconclusive"
    assert model["claims"]["ojfa_matches_full"]["verdict"] == "inconclusive"
    md = (tmp_path / "out" / "models.md").read_text()
    assert "+0.0 pts, held" not in md and "+0.0 pts, inconclusive (p = 1)" in md
    assert "n/a" in bar_summary(_zero_tuned(smol)["tuned_bar"])


@pytest.mark.parametrize("damage", ["methods.tuned.precision@1", "tests.ojfa_vs_full.ci"])
def test_a_results_json_with_a_hole_is_one_line_in_compare(smol, tmp_path, capsys, damage):
    r = copy.deepcopy(smol)
    part, *keys = damage.split(".")
    target = r[part]
    for k in keys[:-1]:
        target = target[k]
    target[keys[-1]] = "not a number"
    source = tmp_path / "bad.json"
    source.write_text(json.dumps(r))
    code = main(["-q", "compare", str(source), "--out", str(tmp_path / "never")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "never").exists()


_FIELDS = ["levels", "methods.ojfa.precision@1", "methods.full.precision@1_ci", "methods.identity.precision@1",
           "reuse.precision@1", "data.n_test", "tests.ojfa_vs_full.ci", "tests.ojfa_vs_joint.n",
           "parameters.reduction_factor", "methods.joint"]

_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True),
                  st.text(max_size=5), st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4),
                  st.lists(st.lists(st.floats(-2, 2), max_size=3), max_size=3))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(_FIELDS), junk=_JUNK)
@example(field="tests.ojfa_vs_full.ci", junk=[2.0, 2.0])  # a zero-width interval outside [-1, 1]
def test_any_damage_to_what_the_claims_read_is_one_error_or_a_valid_file(smol, tmp_path, field, junk):
    r = copy.deepcopy(smol)
    *parents, last = field.split(".")
    target = r
    for k in parents:
        target = target[k]
    target[last] = junk
    source = tmp_path / "damaged.json"
    source.write_text(json.dumps(r))
    try:
        _, loaded = load_results(source)
    except OneJumpError as exc:
        assert "\n" not in str(exc) and str(source) in str(exc)
        return
    for c in evaluate_claims(loaded):  # accepted: every claim gets a verdict
        assert c["verdict"] in ("held", "not held", "inconclusive")


@pytest.mark.parametrize(("field", "junk", "says"), [
    ("levels", [], "levels must be a non-empty list"),
    ("tests.ojfa_vs_full.ci", [0.1, -0.1], "tests.ojfa_vs_full.ci is [0.1, -0.1], not an interval"),
    ("methods.ojfa.precision@1", [2.0] * 30, "methods.ojfa.precision@1 holds 2.0, not a precision in [0, 1]"),
    ("reuse.precision@1", [], "reuse.precision@1 must be a 30 x 30 matrix"),
])
def test_a_damaged_results_json_is_one_line_in_compare(smol, tmp_path, capsys, field, junk, says):
    r = copy.deepcopy(smol)
    *parents, last = field.split(".")
    target = r
    for k in parents:
        target = target[k]
    target[last] = junk
    source = tmp_path / "bad.json"
    source.write_text(json.dumps(r))
    code = main(["-q", "compare", str(source), "--out", str(tmp_path / "never")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, err
    assert not (tmp_path / "never").exists()


def test_the_sweeps_bar_is_judged_by_its_intervals(smol):
    from onejump.experiment.claim_intervals import sweep_bar_verdicts

    assert sweep_bar_verdicts(smol) == {"params": "held", "precision": "held", "lens": "held", "bar": "held"}
    r = copy.deepcopy(smol)
    lens = r["beyond"]["references"]["identity"]["precision@1"]
    r["beyond"]["best"]["precision@1"][3] = lens[3] + 0.005  # above at level 3, by less than 3000 rows can tell
    assert sweep_bar_verdicts(r)["lens"] == "inconclusive" and sweep_bar_verdicts(r)["bar"] == "inconclusive"
    r["beyond"]["best"]["precision@1"][3] = max(0.0, lens[3] - 0.2)
    assert sweep_bar_verdicts(r)["lens"] == "not held" and sweep_bar_verdicts(r)["bar"] == "not held"
    r["beyond"]["best"]["precision@1"] = [0.0] * len(r["levels"])
    assert sweep_bar_verdicts(r)["precision"] == "not held"
    r["beyond"]["bar"]["parameter_ratio"] = 2.5
    assert sweep_bar_verdicts(r)["params"] == "not held"
    assert sweep_bar_verdicts({**smol, "beyond": None}) is None


@pytest.mark.parametrize("verdict", ["held", "inconclusive", "not held"])
def test_the_sweeps_printed_bar_is_the_reports(smol, tmp_path, verdict):
    """`onejump sweep`'s closing line and the report's bar table give the verdicts of the one judging function,
    also where a point estimate clears the bar and its interval does not (inconclusive)."""
    from onejump.cli.experiment import sweep_line
    from onejump.experiment.claim_intervals import sweep_bar_verdicts

    r = copy.deepcopy(smol)
    lens = r["beyond"]["references"]["identity"]["precision@1"]
    if verdict != "held":  # 0.005 above the logit lens at level 3: met on the point, not on 3000 rows' interval
        r["beyond"]["best"]["precision@1"][3] = lens[3] + 0.005 if verdict == "inconclusive" else lens[3] - 0.2
    assert sweep_bar_verdicts(r)["bar"] == verdict
    line = sweep_line(r)
    said = "NOT HELD" if verdict == "not held" else verdict
    assert f"; bar {said} (" in line and "95% intervals" in line
    write_report(r, tmp_path)
    assert f"| the bar: all three | - | {'**not held**' if verdict == 'not held' else verdict} |" in \
        (tmp_path / "report.md").read_text()
    assert sweep_line({**r, "beyond": None}) is None


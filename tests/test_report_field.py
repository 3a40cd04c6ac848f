"""The report's field-metrics table: every lens with a KL, and the sweep's best single jump when there is one."""

from onejump.experiment.report import _field_lines


def _results(beyond=None):
    m = {"kl": [2.0], "mean_kl": 2.0, "mean_cross_entropy": 5.0, "mean_entropy": 3.0}
    out = {"methods": {"identity": dict(m, mean_kl=9.0), "ojfa": m, "arbitrary_mean": {}},
           "final_cross_entropy": 3.5}
    if beyond is not None:
        out["beyond"] = beyond
    return out


def test_best_single_jump_gets_a_row_when_the_sweep_measured_its_kl():
    best = {"mean_kl": 2.647, "mean_cross_entropy": 5.729, "mean_entropy": 4.165}
    rows = [line for line in _field_lines(_results({"best": best})) if line.startswith("| ")]
    assert rows[-1] == "| best single jump | 2.647 | 5.729 | 4.165 |"
    assert len(rows) == 4  # header, identity, ojfa, best (arbitrary_mean has no KL)


def test_no_best_row_without_a_sweep_or_without_its_kl():
    for beyond in (None, {"best": None}, {"best": {"mean_precision@1": 0.3}}):
        assert not any("best single jump" in line for line in _field_lines(_results(beyond)))

"""The report's claims: held or not held where the 95% interval decides, inconclusive where it cannot."""

from onejump.experiment.claims import evaluate_claims


def _results(ojfa, full, joint, ci_full, ci_joint, n_test=3000, identity=0.1):
    """A minimal results dict; ``ci_*``: the paired test's 95% CI of OJFA minus the other (None: not recorded)."""
    K = 3
    per_level = {name: {"precision@1": [v] * K} for name, v in
                 (("ojfa", ojfa), ("full", full), ("identity", identity), ("joint", joint), ("arbitrary_mean", 0.1))}
    return {"methods": per_level, "levels": list(range(K)), "data": {"n_test": n_test},
            "parameters": {"full": 30, "ojfa": 10, "reduction_factor": 3.0},
            "reuse": {"precision@1": [[0.1] * K] * K},
            "selection": {"chosen": 0, "D": [1.0, 0.0, 0.0]},
            "tests": {"ojfa_vs_full": {"p_value": 0.5, "mean_diff": ojfa - full, "ci": ci_full, "n": n_test},
                      "ojfa_vs_joint": {"p_value": 0.5, "mean_diff": ojfa - joint, "ci": ci_joint, "n": n_test}}}


def _verdicts(results):
    return {c["id"]: c["verdict"] for c in evaluate_claims(results)}


def test_a_claim_is_held_only_where_its_interval_supports_it():
    v = _verdicts(_results(ojfa=0.10, full=0.20, joint=0.15, ci_full=[-0.12, -0.08], ci_joint=[-0.07, -0.03]))
    assert v["ojfa_matches_full"] == "not held" and v["ojfa_at_least_joint"] == "not held"
    v = _verdicts(_results(ojfa=0.10, full=0.20, joint=0.15, ci_full=[-0.2, 0.05], ci_joint=[-0.1, 0.2], n_test=40))
    assert v["ojfa_matches_full"] == "inconclusive" and v["ojfa_at_least_joint"] == "inconclusive"
    v = _verdicts(_results(ojfa=0.20, full=0.21, joint=0.15, ci_full=[-0.02, 0.0], ci_joint=[0.03, 0.07]))
    assert v["ojfa_matches_full"] == "held" and v["ojfa_at_least_joint"] == "held"
    claims = evaluate_claims(_results(ojfa=0.2, full=0.21, joint=0.1, ci_full=None, ci_joint=None, n_test=40))
    by_id = {c["id"]: c for c in claims}
    assert all(c["n_test"] == 40 for c in claims) and by_id["parameter_reduction"]["verdict"] == "held"
    # no CI recorded: nothing supports the claim, whatever the point estimate
    assert by_id["ojfa_matches_full"]["verdict"] == "inconclusive" and not by_id["ojfa_matches_full"]["held"]
    assert "no 95% CI recorded" in by_id["ojfa_matches_full"]["ours"]


def test_a_gap_within_tolerance_whose_ci_reaches_beyond_it_is_inconclusive():
    c = evaluate_claims(_results(ojfa=0.078, full=0.095, joint=0.08, ci_full=[-0.045, 0.011], ci_joint=[-0.03, 0.03],
                                 n_test=300))[0]
    assert c["id"] == "ojfa_matches_full" and c["verdict"] == "inconclusive" and not c["held"]
    assert "95% CI [-1.1, +4.5] points" in c["ours"]


def test_zero_against_zero_on_twenty_rows_is_inconclusive():
    """Every paired difference 0: the bootstrap CI is [0, 0], yet 20 rows cannot show "within 3 points"."""
    v = _verdicts(_results(ojfa=0.0, full=0.0, joint=0.0, ci_full=[0.0, 0.0], ci_joint=[0.0, 0.0], n_test=20,
                           identity=0.0))
    assert v["ojfa_matches_full"] == "inconclusive" and v["ojfa_at_least_joint"] == "inconclusive"
    assert v["ojfa_beats_identity_early"] == "inconclusive" and v["ojfa_beats_arbitrary"] == "inconclusive"
    v = _verdicts(_results(ojfa=0.0, full=0.0, joint=0.0, ci_full=[0.0, 0.0], ci_joint=[0.0, 0.0], n_test=100_000))
    assert v["ojfa_matches_full"] == "held"  # enough rows to exclude a 3-point gap
    assert v["ojfa_at_least_joint"] == "inconclusive"  # but never a difference just below 0


def test_exact_parameter_counts_are_held_or_not():
    r = _results(ojfa=0.2, full=0.2, joint=0.2, ci_full=None, ci_joint=None)
    r["parameters"]["reduction_factor"] = 2.5
    assert _verdicts(r)["parameter_reduction"] == "not held"


def test_timings_section_with_and_without_peak_memory():
    from onejump.experiment.report import timing_lines

    memory = {"peak_rss_mib": {"extract": 1234.4, "train:nnjtc": 2345.6},
              "method": {"extract": "stage peak", "train:nnjtc": "process peak so far"},
              "model_mib": 513.4, "model_parameters": 134_515_008, "model_dtype": "float32"}
    md = "\n".join(timing_lines({"timings": {"extract": 12.3, "train:nnjtc": 40.1, "report": 3.0}, "memory": memory}))
    assert "| extract | 12.3 | 1,234 |" in md and "| train:nnjtc | 40.1 | 2,346 * |" in md
    assert "| report | 3.0 | - |" in md and "process's peak up to the end" in md
    assert "model's own weights: 513 MiB (134.5M parameters in float32)" in md
    old = "\n".join(timing_lines({"timings": {"extract": 12.3}}))  # a results.json written before peaks
    assert "| extract | 12.3 |" in old and "RSS" not in old


def test_a_recorded_paired_test_replaces_the_per_level_bound():
    r = _results(ojfa=0.11, full=0.11, joint=0.11, ci_full=[-0.01, 0.01], ci_joint=[-0.01, 0.01])
    bound = {c["id"]: c for c in evaluate_claims(r)}["ojfa_beats_arbitrary"]
    assert bound["verdict"] == "inconclusive"  # one point above, but the bound assumes the worst correlation
    r["tests"]["ojfa_vs_arbitrary"] = {"p_value": 1e-4, "mean_diff": 0.01, "ci": [0.004, 0.016], "n": 3000}
    paired = {c["id"]: c for c in evaluate_claims(r)}["ojfa_beats_arbitrary"]
    assert paired["verdict"] == "held" and "95% CI [+0.4, +1.6] points" in paired["ours"]

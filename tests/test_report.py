"""The report's claims: held, not held, or inconclusive when the paired test cannot tell."""

from onejump.experiment.claims import evaluate_claims


def _results(ojfa, full, joint, p_full, p_joint, n_test=3000):
    K = 3
    per_level = {name: {"precision@1": [v] * K} for name, v in
                 (("ojfa", ojfa), ("full", full), ("identity", 0.1), ("joint", joint), ("arbitrary_mean", 0.1))}
    return {"methods": per_level, "levels": list(range(K)), "data": {"n_test": n_test},
            "parameters": {"full": 30, "ojfa": 10, "reduction_factor": 3.0},
            "reuse": {"precision@1": [[0.1] * K] * K},
            "selection": {"chosen": 0, "D": [1.0, 0.0, 0.0]},
            "tests": {"ojfa_vs_full": {"p_value": p_full, "mean_diff": ojfa - full},
                      "ojfa_vs_joint": {"p_value": p_joint, "mean_diff": ojfa - joint}}}


def _verdicts(results):
    return {c["id"]: c["verdict"] for c in evaluate_claims(results)}


def test_significant_gaps_refute_and_unclear_ones_are_inconclusive():
    v = _verdicts(_results(ojfa=0.10, full=0.20, joint=0.15, p_full=1e-4, p_joint=1e-3))
    assert v["ojfa_matches_full"] == "not held" and v["ojfa_at_least_joint"] == "not held"
    v = _verdicts(_results(ojfa=0.10, full=0.20, joint=0.15, p_full=0.3, p_joint=0.5, n_test=40))
    assert v["ojfa_matches_full"] == "inconclusive" and v["ojfa_at_least_joint"] == "inconclusive"
    v = _verdicts(_results(ojfa=0.20, full=0.21, joint=0.15, p_full=0.01, p_joint=0.01))
    assert v["ojfa_matches_full"] == "held" and v["ojfa_at_least_joint"] == "held"
    claims = evaluate_claims(_results(ojfa=0.2, full=0.21, joint=0.1, p_full=0.5, p_joint=0.5, n_test=40))
    by_id = {c["id"]: c for c in claims}
    assert all(c["n_test"] == 40 for c in claims) and by_id["parameter_reduction"]["verdict"] == "held"


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

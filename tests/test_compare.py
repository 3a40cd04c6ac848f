"""`onejump compare`: the claims per model, the single-jump table, the figure, and bad sources refused."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from onejump.cli import main
from onejump.experiment.claims import evaluate_claims
from onejump.experiment.compare import compare, write_compare
from onejump.experiment.lens_table import canonical_results

DOCS = Path(__file__).resolve().parent.parent / "docs" / "results"


def _real(name):
    """A committed results.json, its lens names read as the lens table's ids."""
    return canonical_results(json.loads((DOCS / name / "results.json").read_text()))


def _fake_wide(smol):
    """SmolLM2's results made into another model: wider, other weights, no sweep, OJFA at most 10 points lower at
    level 0."""
    r = copy.deepcopy(smol)
    r["model"].update(name="fake-1536", fingerprint="feedfacecafe0000", hidden_size=1536)
    r["methods"]["ojfa"]["precision@1"][0] = max(0.0, r["methods"]["ojfa"]["precision@1"][0] - 0.10)
    r["tests"]["ojfa_vs_full"].update(ci=[-0.09, -0.02], p_value=0.2)
    del r["beyond"]
    return r


@pytest.fixture
def sources(tmp_path):
    """A run folder (SmolLM2), a report folder (Gemma 3000/1000, older schema) and a results.json (a fake wide one)."""
    smol, gemma = _real("smollm2-135m"), _real("gemma3-270m-3000")
    run = tmp_path / "smol-run"  # a report kept in its folder (a copied tree, no run.json beside it)
    (run / "report").mkdir(parents=True)
    (run / "report" / "results.json").write_text(json.dumps(smol))
    (tmp_path / "gemma-report").mkdir()
    # as committed: a file that may still name the per-level lens full_nnjtc (read through the alias map)
    (tmp_path / "gemma-report" / "results.json").write_text((DOCS / "gemma3-270m-3000" / "results.json").read_text())
    fake = tmp_path / "fake.json"
    fake.write_text(json.dumps(_fake_wide(smol)))
    # given out of H order on purpose: the columns come sorted by H
    return [fake, run, tmp_path / "gemma-report"], [smol, gemma, _fake_wide(smol)]


def _table(md, heading):
    """The rows of the markdown table under ``heading``: {label: [cells]}."""
    block = md.split(heading, 1)[1].split("\n\n")
    rows = next(b for b in block if b.startswith("| |")).splitlines()[2:]
    return {r.split(" | ")[0].strip("| "): [c.strip(" |") for c in r.split(" | ")[1:]] for r in rows}


def _mean(r, name):
    return float(np.mean(r["methods"][name]["precision@1"]))


def _expected_gap_cell(r):
    gap = _mean(r, "full") - _mean(r, "ojfa")
    p = r["tests"]["ojfa_vs_full"]["p_value"]
    lo, hi = (-100 * c for c in reversed(r["tests"]["ojfa_vs_full"]["ci"]))  # full minus OJFA, in points
    verdict = "held" if hi <= 3 else "**not held**" if lo > 3 else "inconclusive"
    return f"{gap * 100:+.1f} pts, {verdict} (p = {p:.2g})"


def _expected_ceiling_cell(r):
    cands = [(max(r["methods"][n]["precision@1"]), n) for n in ("full", "ojfa", "joint")]
    top, name = max(cands)
    reuse = np.asarray(r["reuse"]["precision@1"])
    if reuse.max() > top:
        m, k = np.unravel_index(reuse.argmax(), reuse.shape)
        where, ci = f"jump {m}, level {k}", ""
    else:
        k = r["methods"][name]["precision@1"].index(top)
        lo, hi = r["methods"][name]["precision@1_ci"][k]
        where = f"{ {'full': 'full N-NJTC', 'ojfa': 'OJFA', 'joint': 'joint jump'}[name]}, level {k}"
        ci = f" [{lo:.3f}, {hi:.3f}]"
    return f"{max(top, reuse.max()):.3f}{ci} ({where}), {'held' if max(top, reuse.max()) <= 0.6 else 'not held'}"


def test_tables_hold_the_runs_numbers(sources, tmp_path):
    paths, (smol, gemma, fake) = sources
    summary = write_compare(paths, tmp_path / "out")
    assert [m["name"] for m in summary["models"]] == ["smollm2-135m", "gemma3-270m", "fake-1536"]
    md = (tmp_path / "out" / "models.md").read_text()
    assert "fake-1536<br>K = 30, H = 1536, r = 5<br>9000 / 3000" in md
    claims = _table(md, "## The paper's claims, per model")
    assert len(claims) == 6
    gap_row = next(v for k, v in claims.items() if k.startswith("OJFA within 3 points"))
    assert gap_row == [_expected_gap_cell(r) for r in (smol, gemma, fake)]
    assert gap_row[2].endswith("inconclusive (p = 0.2)")  # a gap the paired test cannot tell from noise
    k_fold = next(v for k, v in claims.items() if k.startswith("OJFA cuts"))
    assert k_fold == [f"{r['parameters']['reduction_factor']:.0f}x (K = {len(r['levels'])}), held"
                      for r in (smol, gemma, fake)]
    ceiling = next(v for k, v in claims.items() if k.startswith("No low-rank shortcut"))
    assert ceiling == [_expected_ceiling_cell(r) for r in (smol, gemma, fake)]  # Gemma's older file gets it too

    single = _table(md, "## The best single jump")
    best = np.asarray(smol["beyond"]["best"]["precision@1"])
    tuned = np.asarray(smol["methods"]["tuned"]["precision@1"])
    assert single["best single jump / logit lens"][0] == f"{best.mean() / _mean(smol, 'identity'):.2f}x"
    assert single["best single jump / tuned lens"][0] == f"{best.mean() / tuned.mean():.2f}x"
    assert single["exit levels where the best single jump reaches 0.8x the tuned lens"][0] == \
        f"{np.mean(best >= 0.8 * tuned):.0%}"
    assert single["tuned lens: mean KL (nats)"] == [f"{smol['methods']['tuned']['mean_kl']:.3f}", "n/a",
                                                   f"{fake['methods']['tuned']['mean_kl']:.3f}"]
    assert single["tuned lens: mean precision@1"][1] == "n/a"  # Gemma's run has no tuned lens
    assert single["best single jump / logit lens"][2] == "n/a"  # the fake run has no sweep

    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    fake_gap = saved["models"][2]["ojfa_gap"]["full"]
    assert fake_gap["ci_points"] == pytest.approx([2.0, 9.0])  # OJFA minus full, flipped, in points
    assert fake_gap["gap_points"] == pytest.approx(100 * (_mean(fake, "full") - _mean(fake, "ojfa")))
    assert saved["models"][1]["claims"]["low_rank_below_60"]["ci"] is not None
    png = (tmp_path / "out" / "ojfa_gap_vs_h.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000


def test_cli_compare(capsys, sources, tmp_path):
    paths, _ = sources
    code = main(["-q", "compare", *map(str, paths), "--out", str(tmp_path / "cli")])
    out = capsys.readouterr().out
    assert code == 0
    assert "gemma3-270m (K=18, H=640, r=6, 3000/1000): 3 of 6 claims held" in out
    assert {p.name for p in (tmp_path / "cli").iterdir()} == {"compare.json", "models.md", "ojfa_gap_vs_h.png"}


def _bad_sources(tmp_path, good):
    (tmp_path / "not-json.json").write_text("{ nope")
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something-else/1"}))
    (tmp_path / "half.json").write_text(json.dumps({"schema": "onejump-results/1", "model": {}}))
    no_h = json.loads(good.read_text())
    del no_h["model"]["hidden_size"]
    (tmp_path / "no-h.json").write_text(json.dumps(no_h))
    (tmp_path / "run-no-report").mkdir()
    (tmp_path / "run-no-report" / "run.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("x")
    return [
        ([tmp_path / "missing"], "does not exist"),
        ([tmp_path / "not-json.json"], "is not JSON"),
        ([tmp_path / "other.json"], "is not an onejump results.json"),
        ([tmp_path / "half.json"], "incomplete onejump results.json"),
        ([tmp_path / "no-h.json"], "it lacks model.hidden_size"),
        ([tmp_path / "run-no-report"], "has no report yet: run `onejump report"),
        ([tmp_path / "empty"], "holds no results.json"),
        ([good, good.parent], "on the same data"),  # the same run twice, as a folder and as a file
    ]


def test_bad_sources_one_line_nothing_written(capsys, sources, tmp_path):
    paths, _ = sources
    good = paths[1] / "report" / "results.json"
    for argv, message in _bad_sources(tmp_path, good):
        out = tmp_path / "never"
        code = main(["-q", "compare", *map(str, argv), paths[0].as_posix(), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert err.startswith("onejump compare: error: ") and message in err and len(err.strip().splitlines()) == 1
        assert not out.exists()
    code = main(["-q", "compare", str(paths[0]), "--out", str(tmp_path / "a-file")])
    assert code == 2 and "is a file" in capsys.readouterr().err


def _levels_results(per_method, reuse=0.1, K=3):
    """A minimal results dict: each low-rank method's precision@1 per level."""
    methods = {n: {"precision@1": [0.1] * K} for n in ("identity", "arbitrary_mean")}
    methods.update({n: {"precision@1": list(v), "precision@1_ci": [[x - 0.02, x + 0.02] for x in v]}
                    for n, v in per_method.items()})
    return {"methods": methods, "levels": list(range(K)), "data": {"n_test": 500},
            "parameters": {"full": 30, "ojfa": 10, "reduction_factor": 3.0},
            "reuse": {"precision@1": [[reuse] * K for _ in range(K)]},
            "selection": {"chosen": 0, "D": [1.0, 0.0, 0.0]}, "tests": {}}


def _ceiling(results):
    return next(c for c in evaluate_claims(results) if c["id"] == "low_rank_below_60")


def test_sixty_percent_claim():
    c = _ceiling(_levels_results({"full": [0.2, 0.65, 0.3], "ojfa": [0.1, 0.2, 0.3], "joint": [0.3] * 3}))
    assert not c["held"] and c["verdict"] == "not held"
    assert (c["method"], c["level"], c["value"]) == ("full", 1, 0.65)
    assert c["ci"] == pytest.approx([0.63, 0.67])
    c = _ceiling(_levels_results({"full": [0.2, 0.5, 0.3], "ojfa": [0.1, 0.2, 0.59], "joint": [0.3] * 3}))
    assert (c["method"], c["level"]) == ("ojfa", 2) and "0.590 [0.570, 0.610]" in c["ours"]
    assert not c["held"] and c["verdict"] == "inconclusive"  # below 60%, but its CI reaches over it
    c = _ceiling(_levels_results({"full": [0.2, 0.5, 0.3], "ojfa": [0.1, 0.2, 0.4], "joint": [0.3] * 3}))
    assert c["held"] and c["verdict"] == "held" and c["paper"] == "Sec. 7"
    c = _ceiling(_levels_results({"full": [0.2] * 3, "ojfa": [0.1] * 3, "joint": [0.3] * 3}, reuse=0.7))
    assert not c["held"] and c["method"] == "jump 0" and c["ci"] is None  # an arbitrary jump over 60%
    assert c["verdict"] == "not held"  # 350 of 500 rows: its Wilson interval lies above 60%
    c = _ceiling(_levels_results({"full": [0.2] * 3, "ojfa": [0.1] * 3, "joint": [0.3] * 3}, reuse=0.61))
    assert c["verdict"] == "inconclusive"
    c = _ceiling(_levels_results({"full": [0.2, 0.6, 0.2], "ojfa": [0.1] * 3, "joint": [0.3] * 3}))
    assert c["verdict"] == "inconclusive"  # exactly 60% is not over it, but its CI is


def test_compare_accepts_an_older_results_without_tuned_or_early_exit():
    summary = compare([DOCS / "gemma3-270m-3000"])
    (gemma,) = summary["models"]
    assert gemma["claims"]["low_rank_below_60"]["verdict"] in ("held", "not held")
    assert gemma["single_jump"]["tuned_lens"] is None and gemma["single_jump"]["best"] is not None


def test_a_report_whose_stages_were_redone_is_refused(capsys, tmp_path, tiny_dir, corpus):
    run = tmp_path / "r"
    args = ["-q", "run", "--model", str(tiny_dir), "--corpus", str(corpus), "--n-train", "40", "--n-test", "20",
            "--max-epochs", "1", "--rank", "2", "--no-tuned", "--out", str(run), "--device", "cpu"]
    assert main(args) == 0
    assert main(["-q", "compare", str(run), "--out", str(tmp_path / "ok")]) == 0
    assert main(["-q", "train", "--out", str(run), "--max-epochs", "1", "--rank", "2", "--no-tuned",
                 "--train-seed", "5", "--device", "cpu"]) == 0
    capsys.readouterr()
    for source in (run, run / "report"):  # keys, not modification times: the selection came from the old jumps
        out = tmp_path / "never"
        assert main(["-q", "compare", str(source), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "superseded" in err and f"onejump select --out {run}" in err and len(err.strip().splitlines()) == 1
        assert not out.exists()
    assert main(args + ["--train-seed", "5"]) == 0  # every stage redone: accepted
    assert main(["-q", "compare", str(run), "--out", str(tmp_path / "ok2")]) == 0


def test_a_run_folder_of_an_older_onejump_is_refused(capsys, tmp_path):
    run = tmp_path / "old"
    (run / "report").mkdir(parents=True)
    (run / "shortcuts" / "ojfa").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"data": {"model": "smollm2-135m", "corpus": "wiki", "n_train": 300}}))
    (run / "report" / "results.json").write_text(json.dumps(_real("smollm2-135m")))
    assert main(["-q", "compare", str(run), "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err.strip()
    assert "older onejump version" in err and f"onejump run --out {run}-new --model smollm2-135m" in err
    assert "--n-train 300" in err and len(err.splitlines()) == 1


def test_bar_summary_names_each_part():
    from onejump.experiment.compare import bar_summary

    assert bar_summary(None) is None
    bar = {"met": False, "mean": {"ratio": 0.86, "verdict": "not held"},
           "every_level": {"held": False, "lowest_ratio": 0.78, "levels_not_held": [2, 3]},
           "kl": {"ratio": 1.05, "verdict": "held"}}
    line = bar_summary(bar)
    assert line.startswith("not met: ") and "mean 0.86x (not held)" in line and "2 levels not held at 0.8x" in line
    assert "KL 1.05x (held)" in line

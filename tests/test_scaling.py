"""``onejump scaling``: lenses against training size on a tiny run, scored on the run's own test split."""

from __future__ import annotations

import json

import pytest

from onejump.cli.main import main

SCALING = ["-q", "scaling", "--steps", "3", "--val-sentences", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_dir, corpus):
    out = tmp_path_factory.mktemp("scaling-run") / "r"
    assert main(["-q", "run", "--model", str(tiny_dir), "--corpus", str(corpus), "--n-train", "40",
                 "--n-test", "20", "--out", str(out), "--max-epochs", "1", "--tuned-steps", "3",
                 "--device", "cpu"]) == 0
    return out


def test_sizes_hold_what_they_say(run_dir):
    from onejump.corpus.loaders import load_sentences, split_sentences
    from onejump.experiment.run import Run
    from onejump.experiment.scaling import size_texts

    run = Run(run_dir, device="cpu")
    args = run.data_args()
    split = split_sentences(load_sentences(args.corpus), args.n_train, args.n_test, seed=args.seed)
    train, test = [s.text for s in split.train], {s.text for s in split.test}
    assert size_texts(run, "train-all") == train
    everything = size_texts(run, "corpus-all")
    assert not set(everything) & test and set(train) <= set(everything) and len(everything) > len(train)
    assert size_texts(run, "corpus-all", max_sentences=7) == everything[:7]


def test_scaling_end_to_end_reuse_and_report(run_dir, capsys):
    from onejump.experiment.run import Run
    from onejump.experiment.scaling import scaling_entry

    assert main([*SCALING, "--run", str(run_dir)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    data = json.loads((run_dir / "scaling" / "scaling.json").read_text())
    keys = {p["key"] for p in data["points"]}
    # the run's paper-preset joint jump is MSE, not the residual KL jump: it is no point of the curves
    assert keys == {"tuned@rows", "per-level@rows", *(f"{lens}@{size}" for size in ("train-all", "corpus-all")
                                                      for lens in ("tuned", "joint-residual", "per-level"))}
    by = {p["key"]: p for p in data["points"]}
    assert data["n_test"] == 20 and by["tuned@rows"]["train_rows"] is not None
    # every position of the streamed sentences (minus the held-out ones) is a training row, seen once
    rows_train, rows_all = by["tuned@train-all"]["train_rows"], by["tuned@corpus-all"]["train_rows"]
    assert 36 < rows_train < rows_all and by["per-level@train-all"]["train_rows"] == rows_train
    assert by["tuned@train-all"]["tokens_seen"] == 3 * -(-rows_train // 3)  # 3 steps of ceil(rows / 3)
    K = data["num_blocks"]
    for p in data["points"]:
        assert len(p["precision@1"]) == len(p["kl"]) == K
        assert p["mean_precision@1_ci"][0] <= p["mean_precision@1"] <= p["mean_precision@1_ci"][1]
        assert p["train_seconds"] is None or p["train_seconds"] > 0
        if p["size"] != "rows":
            assert p["rows_per_s"] > 0 and p["recipe"]["num_steps"] == 3
    assert by["joint-residual@train-all"]["parameters"] < by["per-level@train-all"]["parameters"]
    assert (run_dir / "scaling" / "scaling.png").stat().st_size > 0
    assert "joint-residual@corpus-all" in printed and "logit" in printed
    # a rerun reuses every streamed lens
    stamps = {p: p.stat().st_mtime_ns for p in (run_dir / "scaling").glob("*/*/*/weights.safetensors")}
    assert len(stamps) == 6
    assert main([*SCALING, "--run", str(run_dir)]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # results.json and the report carry the curves, by training size
    assert main(["-q", "report", "--out", str(run_dir)]) == 0
    results = json.loads((run_dir / "report" / "results.json").read_text())
    assert set(results["scaling"]["sizes"]) == {"rows", "train-all", "corpus-all"}
    assert set(results["scaling"]["sizes"]["train-all"]["lenses"]) == {"tuned", "joint-residual", "per-level"}
    report = (run_dir / "report" / "report.md").read_text()
    assert "## Lenses against training size" in report and (run_dir / "report" / "scaling.png").is_file()
    assert scaling_entry(Run(run_dir, device="cpu"))["sizes"] == results["scaling"]["sizes"]


def test_scaling_refuses_bad_input(run_dir, tmp_path, capsys):
    assert main([*SCALING, "--run", str(run_dir), "--sizes", "rows,everything"]) == 2
    assert "sizes must be distinct names" in capsys.readouterr().err
    assert main([*SCALING, "--run", str(run_dir), "--max-sentences", "3"]) == 2
    assert "max_sentences" in capsys.readouterr().err
    assert main([*SCALING, "--run", str(tmp_path / "none")]) == 2
    assert "not an onejump run folder" in capsys.readouterr().err

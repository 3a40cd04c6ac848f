"""One metric registry: a metric added there reaches the evaluation, results.json and the report."""

import json

import pytest
import torch

from onejump.cli import main
from onejump.errors import ConfigError
from onejump.evaluation.metrics import METRICS, Metric, get_metric, metrics, register


def test_registry_names_each_metric_once_with_its_reduction():
    assert list(METRICS)[:4] == ["precision@1", "precision@5", "surprisal", "reverse_surprisal"]
    assert {m.name for m in metrics(field=True)} == {"kl", "cross_entropy", "entropy"}
    assert get_metric("cross_entropy").reduce == "nanmean" and get_metric("kl").header == "mean KL (nats)"
    with pytest.raises(ConfigError, match="unknown metric"):
        get_metric("vibes")
    with pytest.raises(ConfigError, match="already registered"):
        register(Metric("kl", "KL", "lower", quantity="kl"))
    with pytest.raises(ConfigError, match="exactly one"):
        register(Metric("toy", "toy", "lower"))


def test_a_toy_metric_reaches_results_json_and_the_report(tmp_path, tiny_dir, corpus, monkeypatch, capsys):
    toy = Metric("miss@1", "miss@1", "lower", derive=lambda get: (~get("correct1")).float(), headline=True,
                 table="main")
    monkeypatch.setitem(METRICS, toy.name, toy)
    out = tmp_path / "r"
    code = main(["-q", "run", "--model", str(tiny_dir), "--corpus", str(corpus), "--n-train", "32", "--n-test", "16",
                 "--max-epochs", "1", "--rank", "2", "--no-tuned", "--no-jtc", "--no-joint", "--out", str(out),
                 "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "report" / "results.json").read_text())
    for name, m in results["methods"].items():  # every lens, and the reuse matrix's arbitrary jump
        assert len(m["miss@1"]) == results["model"]["num_blocks"], name
        torch.testing.assert_close(torch.tensor(m["miss@1"]), 1 - torch.tensor(m["precision@1"]), msg=name)
        assert m["mean_miss@1"] == pytest.approx(1 - m["mean_precision@1"])
    report = (out / "report" / "report.md").read_text()
    assert "| method | mean precision@1 | mean precision@5 | mean surprisal (nats) | mean miss@1 |" in report
    row = next(line for line in report.splitlines() if line.startswith("| OJFA (one jump) |"))
    assert f"{results['methods']['ojfa']['mean_miss@1']:.3f}" in row

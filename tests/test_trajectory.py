"""Prediction trajectories, the `onejump lens` command, and tuned-lens-shaped aggregate metrics."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from onejump.cli import main
from onejump.errors import ConfigError
from onejump.evaluation.aggregate import aggregate_metrics, flatten_metrics, write_aggregate_metrics
from onejump.lenses import LogitLens, TunedLens
from onejump.model.loading import from_pretrained_model
from onejump.trajectory import PredictionTrajectory, hidden_states, trajectories, write_html

from .tiny import tiny_model, tiny_tokenizer

PROMPT = "the cat sat on the mat"


@pytest.fixture(scope="module")
def lm():
    return from_pretrained_model(tiny_model("llama"), tiny_tokenizer(), name="tiny-llama")


def tuned(lm, seed=0):
    gen = torch.Generator().manual_seed(seed)
    K, H = lm.num_blocks, lm.hidden_size
    return TunedLens(lm, torch.randn(K, H, H, generator=gen) * 0.1, torch.randn(K, H, generator=gen) * 0.1)


def test_hidden_states_end_at_the_models_output(lm):
    ids = lm.tokenizer(PROMPT)["input_ids"]
    h = hidden_states(lm, ids)
    assert h.shape == (lm.num_blocks + 1, len(ids), lm.hidden_size)
    with torch.no_grad():
        ref = lm.model(input_ids=torch.tensor([ids])).logits[0]
    torch.testing.assert_close(lm.adapter.head(h[-1]), ref, rtol=1e-4, atol=1e-4)


def test_trajectory_values(lm):
    logit, lens = trajectories([LogitLens(lm), tuned(lm)], lm, PROMPT, names=["logit", "tuned"])
    K, T = lm.num_blocks, len(lm.tokenizer(PROMPT)["input_ids"])
    for traj in (logit, lens):
        assert traj.probs.shape == traj.kl.shape == traj.entropy.shape == (K + 1, T)
        assert traj.topk_probs.shape == (K + 1, T, 5) and len(traj.top_tokens) == K + 1
        assert (traj.kl >= 0).all() and np.allclose(traj.kl[-1], 0, atol=1e-6)
        assert (traj.entropy >= -1e-6).all() and (np.diff(traj.topk_probs, axis=-1) <= 0).all()
        assert traj.level_labels[-1] == "output" and traj.input_tokens[0] == "t"
    # one cell against a direct computation
    ids = lm.tokenizer(PROMPT)["input_ids"]
    h = hidden_states(lm, ids)
    with torch.no_grad():
        q = torch.log_softmax(tuned(lm)(h[1, 2], 1), -1)
        p = torch.log_softmax(lm.adapter.head(h[-1, 2]), -1)
    assert lens.top_ids[1, 2] == int(q.argmax())
    assert lens.probs[1, 2] == pytest.approx(float(q.exp().max()), rel=1e-5)
    assert lens.kl[1, 2] == pytest.approx(float((p.exp() * (p - q)).sum()), rel=1e-4, abs=1e-6)
    assert lens.entropy[1, 2] == pytest.approx(float(-(q.exp() * q).sum()), rel=1e-4)
    single = PredictionTrajectory.from_lens(LogitLens(lm), lm, PROMPT)
    assert np.array_equal(single.top_ids, logit.top_ids) and single.lens_name == "logit"


def test_plot_and_html(lm, tmp_path):
    trajs = trajectories([LogitLens(lm), tuned(lm)], lm, PROMPT, names=["logit", "tuned <b>"])
    fig = trajs[0].plot("kl", others=trajs[1:])
    assert len([ax for ax in fig.axes if ax.images]) == 2
    fig.savefig(tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    page = write_html(trajs, tmp_path / "t.html", "entropy", title="demo").read_text()
    assert page.count("<table>") == 2 and "title='" in page and "tuned &lt;b&gt;" in page and "<script" not in page
    assert len(page) < 200_000
    with pytest.raises(ConfigError, match="unknown statistic"):
        trajs[0].plot("nope")
    other = trajectories([LogitLens(lm)], lm, "another prompt")[0]
    with pytest.raises(ConfigError, match="same prompt"):
        trajs[0].plot(others=[other])


@pytest.mark.parametrize("prompt, match", [("", "empty"), ("   ", "empty"), ("x" * 200, "at most 128")])
def test_bad_prompts(lm, prompt, match):
    with pytest.raises(ConfigError, match=match):
        trajectories([LogitLens(lm)], lm, prompt)


# ---- the command ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


def _run(capsys, *argv):
    code = main(["-q", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_lens_command(capsys, tiny_dir, corpus, tmp_path):
    run = tmp_path / "run"
    train = ["-q", "train", "--out", str(run), "--max-epochs", "1", "--rank", "2", "--no-joint", "--no-jtc",
             "--no-tuned", "--device", "cpu"]
    assert main(["-q", "extract", "--model", str(tiny_dir), "--corpus", str(corpus), "--n-train", "40", "--n-test",
                 "20", "--out", str(run), "--device", "cpu"]) == 0
    assert main(train) == 0 and main(["-q", "select", "--out", str(run), "--device", "cpu"]) == 0
    code, out, err = _run(capsys, "lens", "--prompt", PROMPT, "--run", run, "--lens", "ojfa",
                          "--compare", "logit", "--out", tmp_path / "out" / "grid.png")
    assert code == 0, err
    assert (tmp_path / "out" / "grid.png").read_bytes()[:4] == b"\x89PNG" and "ojfa vs logit" in out
    code, out, err = _run(capsys, "lens", "--prompt", PROMPT, "--model", tiny_dir, "--lens",
                          run / "lenses" / "nnjtc", "--statistic", "kl", "--out", tmp_path / "g.html")
    assert code == 0, err
    assert "<table>" in (tmp_path / "g.html").read_text()
    # the jumps trained again with another seed: the chosen jump came from the old ones, and every consumer
    # of the run's lenses refuses it in one line naming the command to run
    assert main(train + ["--train-seed", "5"]) == 0
    capsys.readouterr()
    for argv in (["lens", "--prompt", PROMPT, "--run", run, "--lens", "ojfa", "--out", tmp_path / "g2.png"],
                 ["generate", "--model", tiny_dir, "--lens", run, "--prompt", PROMPT, "--max-new-tokens", "2",
                  "--exit", "confidence", "--device", "cpu"],
                 ["evaluate", "--out", run, "--device", "cpu"], ["report", "--out", run, "--device", "cpu"]):
        code, out, err = _run(capsys, *argv)
        assert code != 0 and "superseded" in err and f"onejump select --out {run}" in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err
    code, out, err = _run(capsys, "lens", "--prompt", PROMPT, "--run", run, "--lens", "full",
                          "--out", tmp_path / "g3.png")
    assert code == 0, err  # the per-level jumps themselves are current


def test_lens_command_bad_input(capsys, tiny_dir, tmp_path):
    other = from_pretrained_model(tiny_model("llama", seed=1), tiny_tokenizer(), name="other")
    tuned(other).save_pretrained(tmp_path / "other-lens")
    cases = [
        (["--prompt", "", "--out", tmp_path / "a.png"], "empty"),
        (["--prompt", "x" * 300, "--out", tmp_path / "a.png"], "at most 128"),
        (["--prompt", PROMPT, "--lens", tmp_path / "other-lens", "--out", tmp_path / "a.png"], "another model"),
        (["--prompt", PROMPT, "--lens", "tuned", "--out", tmp_path / "a.png"], "--run"),
        (["--prompt", PROMPT, "--out", tmp_path / "a.jpg"], "or .html"),
        (["--prompt", PROMPT, "--lens", tmp_path / "missing" / "lens" / "dir", "--out", tmp_path / "a.png"],
         "neither a folder nor a hub id"),
    ]
    for argv, match in cases:
        code, _, err = _run(capsys, "lens", "--model", tiny_dir, *argv)
        assert code != 0 and match in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert not (tmp_path / "a.png").exists() and not (tmp_path / "a.jpg").exists()


def test_lens_command_exit_code_in_a_process(tiny_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "onejump.cli", "-q", "lens", "--model", str(tiny_dir), "--prompt",
                           "", "--out", str(tmp_path / "a.png")], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "empty" in proc.stderr


# ---- aggregate_metrics.json ------------------------------------------------------------------------


def test_aggregate_metrics_shape(tmp_path):
    metrics = {"logit": {"kl": [3.0, 2.0, 1.0], "ce": np.array([5.0, 4.0, 3.5]), "entropy": [4.0, 3.0, 2.0]},
               "tuned": {"kl": [1.0, 0.5, float("nan")]}}
    transfer = {"tuned": {"kl": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]}}
    path = write_aggregate_metrics(tmp_path, metrics, baseline={"ce": 3.0, "entropy": 2.5}, layer_transfer=transfer)
    obj = json.loads(path.read_text())
    assert path.name == "aggregate_metrics.json"
    assert obj["logit"]["kl"] == {"layer_0": 3.0, "layer_1": 2.0, "layer_2": 1.0}
    assert obj["baseline"] == {"ce": {"final": 3.0}, "entropy": {"final": 2.5}}
    flat = flatten_metrics(obj)
    assert flat["logit.ce.layer_1"] == 4.0 and flat["tuned.kl.layer_2"] is None
    assert flat["tuned.layer_transfer.kl.layer_1.layer_2"] == 6
    assert aggregate_metrics({"a": {"kl": [1.0]}}, scale=2.0)["a"]["kl"]["layer_0"] == 2.0
    for bad in ({"a": {"kl": [1.0], "ce": [1.0, 2.0]}}, {"a": {"precision": [1.0]}}, {"baseline": {"kl": [1.0]}}):
        with pytest.raises(ConfigError):
            aggregate_metrics(bad)


NOT_UTF8 = "\udcff\udcfe"


def test_lens_command_hostile_arguments(capsys, tiny_dir, tmp_path):
    """Bad arguments of every kind: an exit code and one line, never a traceback, nothing written."""
    from .test_cli import read_only

    (tmp_path / "file").write_text("x")
    (tmp_path / "binary").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "empty").mkdir()
    (tmp_path / "ro").mkdir()
    bad_tl = tmp_path / "bad-tl"
    bad_tl.mkdir()
    (bad_tl / "config.json").write_text(json.dumps({"d_model": 64, "num_hidden_layers": 3}))
    (bad_tl / "params.pt").write_bytes(b"\x80\x04K\x01.")  # a pickle of the int 1, not a tensor dict
    out = ["--out", tmp_path / "o.png"]
    cases = [["--prompt", NOT_UTF8, *out], ["--prompt", "ab", "--out", tmp_path / "file" / "below.png"],
             ["--prompt", "ab", "--out", tmp_path / "ro" / "x.png"], ["--prompt", "ab", "--out", ""],
             ["--prompt", "ab", "--lens", tmp_path / "file", *out],
             ["--prompt", "ab", "--lens", tmp_path / "binary", *out],
             ["--prompt", "ab", "--lens", tmp_path / "empty", *out], ["--prompt", "ab", "--lens", bad_tl, *out],
             ["--prompt", "ab", "--run", tmp_path / "file", *out],
             ["--prompt", "ab", "--run", tmp_path / "nothing", "--lens", "ojfa", *out],
             ["--prompt", "ab", "--run", tmp_path / "empty", "--lens", "best", *out],
             ["--prompt", "ab", "--compare", "tuned", *out], ["--prompt", "ab", "--statistic", "nope", *out],
             ["--prompt", "ab", "--device", "cuda:7", *out], ["--prompt", "ab", "--dtype", "int8", *out]]
    failures = []
    with read_only(tmp_path / "ro"):
        for case in cases:
            argv = ["lens", "--model", tiny_dir, *case]
            code, _, err = _run(capsys, *argv)
            lines = err.strip().splitlines()
            if code == 0 or len(lines) != 1 or "Traceback" in err or "internal error" in err:
                failures.append(f"{argv} -> {code}: {err.strip()[-300:]}")
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "o.png").exists() and not list((tmp_path / "ro").iterdir())
    code, _, err = _run(capsys, "lens", "--prompt", "ab", "--model", tmp_path / "empty", *out)
    assert code != 0 and len(err.strip().splitlines()) == 1

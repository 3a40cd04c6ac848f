"""Stages know their inputs: changing any upstream artefact makes every later stage recompute or refuse."""

import json
import shutil

import pytest

from onejump.cli import main

COMMON = ["--device", "cpu"]


@pytest.fixture()
def run_dir(tmp_path, tiny_dir, corpus):
    out = tmp_path / "r"
    assert main(["-q", "run", "--model", str(tiny_dir), "--corpus", str(corpus), "--n-train", "40", "--n-test", "20",
                 "--max-epochs", "2", "--batch-size", "16", "--rank", "2", "--out", str(out), *COMMON]) == 0
    return out


def _refused(capsys, command, run_dir, needle):
    assert main(["-q", command, "--out", str(run_dir), *COMMON]) != 0
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err, err
    return err


def test_retrained_jumps_make_selection_evaluation_and_report_stale(run_dir, capsys):
    report_before = (run_dir / "report" / "results.json").read_text()
    assert main(["-q", "train", "--out", str(run_dir), "--max-epochs", "3", "--batch-size", "16", "--rank", "2",
                 *COMMON]) == 0
    capsys.readouterr()
    _refused(capsys, "report", run_dir, "onejump select")  # the selection was made from the old jumps
    _refused(capsys, "evaluate", run_dir, "onejump select")
    assert main(["-q", "select", "--out", str(run_dir), *COMMON]) == 0
    capsys.readouterr()
    _refused(capsys, "report", run_dir, "onejump evaluate")  # the evaluation is older than the lenses
    assert main(["-q", "evaluate", "--out", str(run_dir), *COMMON]) == 0
    assert main(["-q", "report", "--out", str(run_dir), *COMMON]) == 0
    assert (run_dir / "report" / "results.json").read_text() != report_before


def test_replaced_joint_jump_or_selection_makes_the_evaluation_stale(run_dir, capsys, tmp_path):
    import onejump as oj

    shutil.copytree(run_dir / "lenses" / "joint", tmp_path / "joint-old")
    lm = oj.load_model(json.loads((run_dir / "run.json").read_text())["data"]["model"])
    store = oj.HiddenStateStore.open(run_dir / "store")
    joint = oj.train_joint_jump(store, lm, oj.TrainConfig(max_epochs=1, rank=2, seed=5), progress=False)
    joint.save(run_dir / "lenses" / "joint")
    _refused(capsys, "report", run_dir, "onejump evaluate")
    # putting the old lens back makes the old evaluation valid again: identities are of content
    shutil.rmtree(run_dir / "lenses" / "joint")
    shutil.copytree(tmp_path / "joint-old", run_dir / "lenses" / "joint")
    sel = json.loads((run_dir / "selection.json").read_text())
    select_rule = sel["rule"]
    assert main(["-q", "report", "--out", str(run_dir), *COMMON]) == 0
    # a selection made by another rule supersedes the evaluation
    other = "head" if select_rule == "paper" else "paper"
    assert main(["-q", "select", "--out", str(run_dir), "--select-rule", other, *COMMON]) == 0
    capsys.readouterr()
    _refused(capsys, "report", run_dir, "onejump evaluate")


def test_a_changed_store_retrains_everything(run_dir, capsys, tmp_path, tiny_dir, corpus):
    other = tmp_path / "other"
    assert main(["-q", "extract", "--model", str(tiny_dir), "--corpus", str(corpus), "--n-train", "40", "--n-test",
                 "20", "--seed", "1", "--out", str(other), *COMMON]) == 0
    weights = {k: (run_dir / "lenses" / k / "weights.safetensors").read_bytes() for k in ("nnjtc", "joint", "jtc")}
    shutil.rmtree(run_dir / "store")
    shutil.copytree(other / "store", run_dir / "store")
    capsys.readouterr()
    _refused(capsys, "report", run_dir, "onejump select")  # selection (and so evaluation) came from the old store
    assert main(["-q", "train", "--out", str(run_dir), "--max-epochs", "2", "--batch-size", "16", "--rank", "2",
                 *COMMON]) == 0
    for kind, before in weights.items():  # nothing was reused from the old store
        assert (run_dir / "lenses" / kind / "weights.safetensors").read_bytes() != before, kind


def test_a_sweep_of_another_store_is_refused_by_report(run_dir, capsys):
    sweep = run_dir / "sweep"
    sweep.mkdir()
    key = json.dumps({"store": "0" * 16, "fingerprint": "f", "config": {}, "version": 2})
    (sweep / "sweep.json").write_text(json.dumps({"configs": [{"key": key, "methods": {}}], "references": {}}))
    _refused(capsys, "report", run_dir, "onejump sweep")


def test_stages_run_by_separate_commands_keep_their_times_and_peaks(tmp_path, tiny_dir, corpus):
    out = tmp_path / "r"
    assert main(["-q", "extract", "--model", str(tiny_dir), "--corpus", str(corpus), "--n-train", "40",
                 "--n-test", "20", "--out", str(out), *COMMON]) == 0
    assert main(["-q", "train", "--out", str(out), "--max-epochs", "1", "--rank", "2", "--no-tuned", *COMMON]) == 0
    timings = json.loads((out / "timings.json").read_text())
    memory = json.loads((out / "memory.json").read_text())
    assert {"extract", "train:nnjtc"} <= set(timings) and set(timings) == set(memory["peak_rss_mib"])
    assert all(v > 0 for v in memory["peak_rss_mib"].values())
    assert set(memory["method"].values()) <= {"stage peak", "process peak so far"}


def test_a_run_folder_of_an_older_onejump_is_refused_by_every_command(tmp_path, tiny_dir, capsys):
    """A folder laid out before stage records (``shortcuts/``, a run.json without its format) is never read:
    one line naming the command that makes the run again, with the same data settings."""
    old = tmp_path / "old"
    (old / "shortcuts" / "ojfa").mkdir(parents=True)
    (old / "store").mkdir()
    (old / "run.json").write_text(json.dumps({"data": {"model": str(tiny_dir), "corpus": "c.txt", "n_train": 40,
                                                       "n_test": 20, "seed": 3}}))
    expected = f"onejump run --out {old}-new --model {tiny_dir} --corpus c.txt --n-train 40 --n-test 20 --seed 3"
    for argv in (["select", "--out", old], ["train", "--out", old], ["evaluate", "--out", old],
                 ["report", "--out", old], ["sweep", "--out", old],
                 ["lens", "--run", old, "--lens", "ojfa", "--prompt", "a b", "--out", tmp_path / "t.png"],
                 ["generate", "--model", tiny_dir, "--lens", old, "--prompt", "a b", "--exit", "confidence"]):
        assert main(["-q", *map(str, argv), *COMMON]) != 0
        err = capsys.readouterr().err.strip()
        assert "older onejump version" in err and expected in err and len(err.splitlines()) == 1, (argv, err)


def test_the_report_never_loads_the_model(run_dir, monkeypatch, capsys):
    import onejump.model.loading as loading

    def refuse(*args, **kwargs):
        raise AssertionError("the report loaded the model")

    monkeypatch.setattr(loading, "load_model", refuse)
    before = (run_dir / "report" / "results.json").read_text()
    assert main(["-q", "report", "--out", str(run_dir), *COMMON]) == 0, capsys.readouterr().err
    after = json.loads((run_dir / "report" / "results.json").read_text())
    old = json.loads(before)
    assert {k: v for k, v in after.items() if k not in ("timings", "memory")} == \
        {k: v for k, v in old.items() if k not in ("timings", "memory")}

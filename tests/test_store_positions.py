"""Stores of several positions per sentence: every position from one forward, N per sentence, the
per-split settings, the whole-sentence held-out split, the disk check, resuming and older stores."""

import json

import numpy as np
import pytest
import torch

from onejump import extract_plan
from onejump.errors import ConfigError, StoreError
from onejump.extract import extract, plan_batches, sample_positions
from onejump.model.loading import from_pretrained_model
from onejump.store import HiddenStateStore
from onejump.training.reader import _split, holdout_split

from .test_extract import SENTENCES
from .tiny import tiny_model, tiny_tokenizer

SPLITS = [0] * 16 + [1] * 8


@pytest.fixture(scope="module")
def lm():
    return from_pretrained_model(tiny_model("llama"), tiny_tokenizer(), name="tiny-llama")


@pytest.fixture(scope="module")
def all_store(lm, tmp_path_factory):
    return extract(lm, SENTENCES, tmp_path_factory.mktemp("all") / "s", splits=SPLITS, seed=3,
                   tokens_per_batch=200, max_batch_size=3, shard_size=40, progress=False,
                   positions={"train": "all", "test": "one"})


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_every_position_equals_the_prefix_forward(lm, all_store):
    store = all_store
    ids_of = [lm.tokenizer(s)["input_ids"] for s in SENTENCES]
    train = store.indices("train")
    assert len(train) == sum(len(ids_of[i]) - 1 for i in range(16))
    hidden = store.hidden()
    sid, pos = store.meta("sample_id"), store.meta("position")
    for i in range(16):  # every position 1..n-1 of each train sentence, once
        assert sorted(pos[sid == i].tolist()) == list(range(1, len(ids_of[i])))
    for row in train[::7]:
        prefix = torch.tensor([ids_of[int(sid[row])][: int(pos[row]) + 1]])
        with torch.no_grad():
            out = lm.model(prefix, output_hidden_states=True)
        for k in range(store.num_blocks):
            torch.testing.assert_close(hidden[row, k], out.hidden_states[k][0, -1], rtol=1e-5, atol=1e-5)
        assert int(store.meta("target")[row]) == int(out.logits[0, -1].argmax())
        assert store.prefix_tokens(int(row)) == prefix[0].tolist()
        full = ids_of[int(sid[row])]
        expected = full[int(pos[row]) + 1] if int(pos[row]) + 1 < len(full) else -1
        assert int(store.meta("next_token")[row]) == expected


def test_manifest_records_positions_and_sentences(all_store):
    m = all_store.manifest
    assert m["positions"] == {"train": "all", "test": "one"} and all_store.positions == m["positions"]
    assert m["n_train_sentences"] == 16 and m["n_test_sentences"] == 8 and m["n_test"] == 8
    assert m["forward_tokens"] < m["total_prefix_tokens"]  # one forward per sentence, not one per prefix
    plan = json.loads((all_store.path / "plan.json").read_text())
    assert plan["positions"] == m["positions"]
    assert len(np.unique(all_store.sentence_ids("train"))) == 16


def test_one_position_split_beside_all_equals_a_one_position_store(lm, all_store, tmp_path):
    one = extract(lm, SENTENCES, tmp_path / "one", splits=SPLITS, seed=3, tokens_per_batch=200,
                  max_batch_size=3, shard_size=40, progress=False)
    assert "positions" not in json.loads((tmp_path / "one" / "plan.json").read_text())
    assert one.positions == {"train": "one", "test": "one"}

    def keyed(store):
        rows = store.indices("test")
        order = np.argsort(store.meta("sample_id", "test"))
        return rows[order], store.meta("sample_id", "test")[order], store.meta("position", "test")[order]

    rows_a, sid_a, pos_a = keyed(all_store)
    rows_b, sid_b, pos_b = keyed(one)
    assert (sid_a == sid_b).all() and (pos_a == pos_b).all()
    assert [all_store.prefix_tokens(int(r)) for r in rows_a] == [one.prefix_tokens(int(r)) for r in rows_b]
    torch.testing.assert_close(all_store.read_rows(rows_a), one.read_rows(rows_b), rtol=1e-5, atol=1e-5)
    assert (all_store.targets()[torch.from_numpy(rows_a)] == one.targets()[torch.from_numpy(rows_b)]).all()


def test_n_per_sentence_is_distinct_seeded_and_leaves_one_draws_alone(lm):
    splits = [0] * len(SENTENCES)
    one = sample_positions(lm.tokenizer, SENTENCES, splits, seed=5)
    three = sample_positions(lm.tokenizer, SENTENCES, splits, seed=5, positions={"train": 3})
    assert three == sample_positions(lm.tokenizer, SENTENCES, splits, seed=5, positions=3)
    assert three != sample_positions(lm.tokenizer, SENTENCES, splits, seed=6, positions=3)
    for i in range(len(SENTENCES)):
        got = [s.position for s in three if s.sample_id == i]
        assert len(got) == 3 and got == sorted(set(got)) and min(got) >= 1
    mixed = sample_positions(lm.tokenizer, SENTENCES, [0] * 12 + [1] * 12, seed=5, positions={"train": "all"})
    assert [s.position for s in mixed if s.split == 1] == [s.position for s in one[12:]]
    short = sample_positions(lm.tokenizer, ["Hi there."], [0], seed=0, positions=500)
    assert [s.position for s in short] == list(range(1, len(lm.tokenizer("Hi there.")["input_ids"])))


@pytest.mark.parametrize("bad", ["none", 0, -2, "1.5", 2.0, True])
def test_bad_positions_are_refused(lm, bad):
    with pytest.raises(ConfigError, match="positions"):
        sample_positions(lm.tokenizer, SENTENCES, [0] * len(SENTENCES), seed=0, positions=bad)
    with pytest.raises(ConfigError, match="split"):
        extract_plan.positions_per_split({"val": "all"})


def test_batches_hold_whole_sentences_within_budget(lm):
    samples = sample_positions(lm.tokenizer, SENTENCES, [0] * len(SENTENCES), seed=0, positions="all")
    batches = plan_batches(samples, tokens_per_batch=120, max_batch_size=3)
    assert sorted(i for b in batches for i in b) == list(range(len(samples)))
    for b in batches:
        sentences = {samples[i].sample_id for i in b}
        assert len(sentences) <= 3
        assert all(sum(s.sample_id == j for s in samples) == sum(samples[i].sample_id == j for i in b)
                   for j in sentences)
        longest = max(samples[i].length for i in b)
        assert len(sentences) * longest <= max(120, longest)


def test_holdout_is_whole_sentences(all_store):
    kept, held = holdout_split(all_store, 0.25, seed=1)
    sid = all_store.meta("sample_id")
    assert not set(sid[kept]) & set(sid[held])
    assert len(set(sid[held])) == 4  # a quarter of the 16 train sentences, with all their rows
    assert sorted(np.concatenate([kept, held]).tolist()) == all_store.indices("train").tolist()
    for s in set(sid[held]):
        assert set(np.nonzero(sid == s)[0]) <= set(held.tolist())
    assert (np.diff(kept) > 0).all() and (np.diff(held) > 0).all()


@pytest.mark.parametrize("fraction,seed", [(0.12, 0), (0.1, 3), (0.5, 7), (0.0, 0)])
def test_holdout_of_one_position_store_is_the_seeded_row_split(lm, tmp_path_factory, fraction, seed):
    store = extract(lm, SENTENCES, tmp_path_factory.mktemp("one") / "s", splits=SPLITS, seed=3,
                    tokens_per_batch=64, max_batch_size=3, shard_size=6, progress=False)
    rows = store.indices("train")
    tr, va = _split(len(rows), fraction, seed)  # what training held out before stores kept several positions
    kept, held = holdout_split(store, fraction, seed)
    assert np.array_equal(kept, rows[tr.numpy()]) and np.array_equal(held, rows[va.numpy()])


def test_store_that_does_not_fit_is_refused_before_any_forward(lm, tmp_path, monkeypatch):
    class Usage:
        free = 64 << 10

    monkeypatch.setattr(extract_plan.shutil, "disk_usage", lambda path: Usage)
    forwards = []
    monkeypatch.setattr(lm.adapter, "base", lambda **kw: forwards.append(kw))
    with pytest.raises(StoreError, match=r"needs .* GB .* rows x 4 levels x 64 in float16.* free"):
        extract(lm, SENTENCES, tmp_path / "s", positions="all", store_dtype="float16", progress=False)
    assert not forwards and not (tmp_path / "s").exists()
    need = extract_plan.store_bytes(sample_positions(lm.tokenizer, SENTENCES, [0] * 24, 0, "all"), 4, 64,
                                    torch.float16)
    assert need > 24 * 4 * 64 * 2  # many rows per sentence


def test_resume_of_all_positions_in_half_precision_is_byte_identical(lm, tmp_path):
    kw = dict(splits=SPLITS, seed=0, tokens_per_batch=120, max_batch_size=3, shard_size=30, progress=False,
              positions={"train": "all", "test": 2}, store_dtype="bfloat16")
    extract(lm, SENTENCES, tmp_path / "full", **kw)
    calls = []

    def stop_after_two(i, n):
        calls.append(i)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(lm, SENTENCES, tmp_path / "part", on_shard=stop_after_two, **kw)
    store = extract(lm, SENTENCES, tmp_path / "part", **kw)
    assert _files(tmp_path / "full") == _files(tmp_path / "part")
    assert store.hidden("train").dtype == torch.float32 and store.manifest["dtype"] == "bfloat16"
    assert len(store.indices("test")) == 16  # two positions of each of the 8 test sentences
    with pytest.raises(StoreError, match="another run"):  # other positions, same folder
        extract(lm, SENTENCES, tmp_path / "part", **{**kw, "positions": "one"})


def test_store_without_positions_opens_as_one_position(lm, tmp_path):
    extract(lm, SENTENCES, tmp_path / "s", seed=0, progress=False)
    path = tmp_path / "s" / "manifest.json"
    manifest = json.loads(path.read_text())
    for key in ("positions", "n_train_sentences", "n_test_sentences", "forward_tokens"):
        manifest.pop(key)
    path.write_text(json.dumps(manifest))
    store = HiddenStateStore.open(tmp_path / "s")
    assert store.positions == {"train": "one", "test": "one"}
    kept, held = holdout_split(store, 0.2, 0)
    tr, va = _split(24, 0.2, 0)
    assert np.array_equal(kept, tr.numpy()) and np.array_equal(held, va.numpy())


def test_cli_positions_and_torchrun_equal_single(tmp_path, capsys):
    import os
    import shutil
    import subprocess
    import sys

    from onejump.cli import main

    model_dir = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    corpus = tmp_path / "c.txt"
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    corpus.write_text("\n".join(" ".join(words[(i + j) % 12] for j in range(8 + i % 5)).capitalize() + "."
                                for i in range(60)) + "\n")
    common = ["-q", "extract", "--model", str(model_dir), "--corpus", str(corpus), "--n-train", "12",
              "--n-test", "6", "--device", "cpu", "--shard-size", "150", "--tokens-per-batch", "200",
              "--train-positions", "all", "--test-positions", "3", "--store-dtype", "float16"]
    assert main([*common[:-6], "--train-positions", "some", "--out", str(tmp_path / "bad")]) == 2
    assert "--train-positions" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "single")]) == 0
    single = HiddenStateStore.open(tmp_path / "single" / "store")
    assert single.positions == {"train": "all", "test": 3} and single.manifest["n_test"] == 18
    assert json.loads((tmp_path / "single" / "run.json").read_text())["data"]["train_positions"] == "all"
    env = {**os.environ, "ONEJUMP_BACKEND": "gloo", "OMP_NUM_THREADS": "1"}
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    multi = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "onejump.cli", *common,
                            "--out", str(tmp_path / "multi")], capture_output=True, text=True, env=env, timeout=280)
    assert multi.returncode == 0, multi.stderr[-2000:]
    assert len(single.manifest["shards"]) > 2
    assert _files(tmp_path / "single" / "store") == _files(tmp_path / "multi" / "store")


def test_out_of_core_training_holds_out_whole_sentences(lm, all_store):
    from onejump.evaluation.selection import holdout_rows
    from onejump.training.config import TrainConfig
    from onejump.training.fit import _prepare, train_joint, train_jumps
    from onejump.training.tuned import TunedTrainConfig, _sources

    cfg = TrainConfig(rank=2, max_epochs=2, patience=2, batch_size=16, lr=1e-2, buffer_samples=48)
    _, train, val, _ = _prepare(all_store, cfg, "cpu")
    assert not train.resident and len(train.blocks) > 1  # streamed through the buffer, shard by shard
    kept, held = holdout_split(all_store, cfg.val_fraction, cfg.seed)
    assert np.array_equal(train.rows, kept) and np.array_equal(val.rows, held)
    sid = all_store.meta("sample_id")
    assert not set(sid[train.rows]) & set(sid[val.rows])
    tuned_train, tuned_val = _sources(all_store, TunedTrainConfig(buffer_samples=48, val_rows=0))
    assert np.array_equal(tuned_train.rows, kept) and np.array_equal(tuned_val.rows, held)
    assert set(holdout_rows(all_store, cfg.val_fraction, cfg.seed, max_rows=5)) <= set(held.tolist())
    bank, hist = train_jumps(all_store, cfg, progress=False)
    assert np.isfinite(hist.val_loss).all() and hist.n_train == len(kept) and hist.n_val == len(held)
    _, joint = train_joint(all_store, cfg, progress=False)
    assert np.isfinite(joint.val_loss).all()


def test_run_trains_and_reports_on_a_store_of_several_positions(tiny_dir, corpus, tmp_path):
    from onejump.cli import main

    out = tmp_path / "r"
    code = main(["-q", "run", "--model", str(tiny_dir), "--corpus", str(corpus), "--n-train", "30", "--n-test", "12",
                 "--device", "cpu", "--max-epochs", "1", "--tuned-steps", "2", "--train-positions", "3",
                 "--out", str(out)])
    assert code == 0
    store = HiddenStateStore.open(out / "store")
    assert store.positions == {"train": 3, "test": "one"} and store.manifest["n_train"] == 90
    assert store.manifest["n_test"] == 12 and (out / "report" / "results.json").is_file()

"""Streaming training: steps of exactly T positions, every lens from one forward, resume after a kill."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from onejump.errors import ConfigError, CorpusError
from onejump.lenses.base import Lens
from onejump.model.loading import load_model
from onejump.training.stream_data import StepPlanner, StreamText, usable_sentences, val_rows
from onejump.training.streaming import StreamConfig, train_streaming
from onejump.training.tuned import TunedTrainConfig

from .conftest import WORDS


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(8, 12, (1,), generator=rng))
        words = (WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=rng))
        out.append(" ".join(words).capitalize() + ".")
    return out


def _small(**kw) -> StreamConfig:
    base = dict(lenses=("tuned", "per-level", "joint", "joint-residual"), tokens_per_step=96, num_steps=4,
                micro_rows=40, tokens_per_batch=512, val_sentences=3, eval_every=2)
    cfg = StreamConfig(**{**base, **kw})
    cfg.jumps.kl_negatives = 16
    cfg.tuned.kl_negatives = 16
    return cfg


@pytest.fixture(scope="module")
def lm(tiny_dir):
    return load_model(str(tiny_dir), device="cpu")


def test_steps_hold_exactly_T_positions_never_position_0(lm):
    text = StreamText.from_texts(_texts(20), val_sentences=4, seed=0)
    planner = StepPlanner(text, lm.tokenizer, 100)
    seen = []
    for _ in range(12):  # more than one pass over the 16 train sentences
        rows = planner.next_step()
        assert len(rows) == 100
        assert all(1 <= r.position < len(r.ids) for r in rows)
        seen += [(r.ids, r.position) for r in rows]
    first_pass = {(ids, p) for ids in (planner.encode(t) for t in text.train) for p in range(1, len(ids))}
    assert set(seen) >= first_pass  # the first pass visited every position of every train sentence
    assert planner.cursor.epoch >= 1
    held = val_rows(text, lm.tokenizer)
    assert {r.ids for r in held}.isdisjoint({r[0] for r in seen})  # whole sentences held out
    assert len(held) == sum(len(planner.encode(t)) - 1 for t in text.val)


def test_split_matches_the_corpus_rules():
    texts = _texts(10) + ["Too short.", _texts(1)[0]]
    assert len(usable_sentences(texts)) == 10
    with pytest.raises(CorpusError):
        StreamText.from_texts(texts, val_sentences=10, seed=0)


def test_every_lens_trains_and_loads(lm, tmp_path):
    lenses = train_streaming(lm, StreamText.from_texts(_texts(30), 3, 0), tmp_path, _small(), progress=False,
                             corpus={"source": "test"})
    assert set(lenses) == {"tuned", "per-level", "joint", "joint-residual"}
    for name, lens in lenses.items():
        loaded = Lens.load(tmp_path / name, lm)
        rec = loaded.extra["streaming"]
        assert rec["tokens_seen"] == 4 * 96 and rec["tokens_per_step"] == 96 and rec["corpus"]["source"] == "test"
        assert rec["recipe"]["tuned"]["optimizer" if "optimizer" in rec["recipe"]["tuned"] else "lr"] is not None
        assert rec["history"]["steps"] == [0, 2, 4]
        val = rec["history"]["val"][name]
        assert all(v == v for v in val), (name, val)
        # trained: the held-out loss fell (the residual jump starts at the logit lens, already close here)
        assert val[-1] < val[0] * (1.02 if name == "joint-residual" else 1), (name, val)
        h = torch.randn(5, lm.hidden_size)
        assert torch.equal(loaded(h, 1), lens(h, 1))
    assert not (tmp_path / "stream-checkpoint.safetensors").exists()


def test_muon_and_mse_options(lm, tmp_path):
    cfg = _small(lenses=("tuned", "joint"), tuned=TunedTrainConfig(init="zero", optimizer="muon"))
    cfg.jumps.optimizer, cfg.jumps.objective = "muon", "mse"
    lenses = train_streaming(lm, StreamText.from_texts(_texts(30), 3, 0), tmp_path, cfg, progress=False)
    rec = lenses["joint"].extra["streaming"]
    assert rec["recipe"]["tuned"]["optimizer"] == "muon" and rec["recipe"]["jumps"]["optimizer"] == "muon"
    tuned = lenses["tuned"].extra["streaming"]["history"]["val"]["tuned"]
    assert tuned[-1] < tuned[0]  # Muon lowered the tuned lens's held-out KL
    assert rec["history"]["val"]["joint"][-1] != rec["history"]["val"]["joint"][0]  # the MSE jump moved
    with pytest.raises(ConfigError):
        _small(lenses=("tuned", "nope")).validate()


def test_interrupted_run_resumes_to_the_same_lenses(lm, tmp_path):
    text = StreamText.from_texts(_texts(30), 3, 0)
    cfg = _small(num_steps=5)
    train_streaming(lm, text, tmp_path / "whole", cfg, progress=False)

    def kill(step):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_streaming(lm, text, tmp_path / "cut", cfg, progress=False, checkpoint_every=1, on_step=kill)
    assert (tmp_path / "cut" / "stream-checkpoint.safetensors").is_file()
    train_streaming(lm, text, tmp_path / "cut", cfg, progress=False, checkpoint_every=1)
    for name in cfg.lenses:
        a = load_file(tmp_path / "whole" / name / "weights.safetensors")
        b = load_file(tmp_path / "cut" / name / "weights.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        ha = json.loads((tmp_path / "whole" / name / "config.json").read_text())["extra"]["streaming"]["history"]
        hb = json.loads((tmp_path / "cut" / name / "config.json").read_text())["extra"]["streaming"]["history"]
        assert ha == hb


def test_cli_stream_train_single_and_torchrun_agree(tiny_dir, corpus, tmp_path):
    args = ["-q", "stream-train", "--model", str(tiny_dir), "--corpus", str(corpus), "--device", "cpu",
            "--lenses", "tuned,per-level", "--tokens-per-step", "128", "--steps", "3", "--micro-rows", "32",
            "--tokens-per-batch", "512", "--val-sentences", "4", "--kl-negatives", "16"]
    env = {**os.environ, "ONEJUMP_BACKEND": "gloo", "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "onejump.cli", *args, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, env=env, timeout=280)
    assert single.returncode == 0, single.stderr[-2000:]
    again = subprocess.run([sys.executable, "-m", "onejump.cli", *args, "--out", str(tmp_path / "one")],
                           capture_output=True, text=True, env=env, timeout=280)
    assert again.returncode == 0 and "already trained" in again.stdout, again.stderr[-2000:]
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    multi = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "onejump.cli", *args,
                            "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=280)
    assert multi.returncode == 0, multi.stderr[-2000:]
    one = load_file(tmp_path / "one" / "tuned" / "weights.safetensors")
    two = load_file(tmp_path / "two" / "tuned" / "weights.safetensors")
    assert one["weight"].abs().max() > 0
    for k in one:  # the same gradients, summed over two ranks instead of one process's batches
        assert torch.allclose(one[k], two[k], atol=1e-5, rtol=1e-4), k
    cfg = json.loads((tmp_path / "two" / "per-level" / "config.json").read_text())["extra"]["streaming"]
    assert cfg["world_size"] == 2 and cfg["tokens_seen"] == 3 * 128


def test_streamed_rows_are_the_rows_of_a_store_of_every_position(lm, tmp_path):
    from onejump.extract import extract
    from onejump.training.streaming import _Forward

    texts = usable_sentences(_texts(8))
    store = extract(lm, texts, tmp_path / "store", positions="all", progress=False)
    rows_h = next(store.iter_chunks(None, 10_000))
    sid, pos = store.meta("sample_id"), store.meta("position")
    stored = {(int(sid[r]), int(pos[r])): h for r, h in zip(*rows_h)}
    text = StreamText(train=texts[:1], val=texts, seed=0)
    rows = val_rows(text, lm.tokenizer)
    assert len(rows) == len(stored)  # every position 1..n-1 of every sentence, as the store keeps them
    fwd = _Forward(lm, _small(micro_rows=1000), 4, with_targets=False)
    got = {}
    from onejump.training.stream_data import forward_batches

    for batch in forward_batches(rows, 512, 64):
        for _, xm, _ in fwd.micro_batches(rows, batch, None):
            got.update({(rows[i].sample_id, rows[i].position): x for i, x in zip(batch, xm)})
    assert got.keys() == stored.keys()
    assert max(float((got[k] - stored[k]).abs().max()) for k in got) < 1e-4


@pytest.mark.real
def test_real_smollm2_tuned_lens_from_the_stream(tmp_path):
    from onejump.corpus.loaders import load_sentences

    real = load_model("smollm2-135m", device="cpu")
    texts = [s.text for s in load_sentences("wikipedia-offline", max_documents=20)]
    cfg = StreamConfig(lenses=("tuned",), tokens_per_step=128, num_steps=3, val_sentences=2, eval_every=3)
    cfg.tuned.kl_negatives = 256
    lens = train_streaming(real, StreamText.from_texts(texts, 2, 0), tmp_path, cfg, progress=False)["tuned"]
    val = lens.extra["streaming"]["history"]["val"]["tuned"]
    assert val[-1] < val[0]  # three steps of tuned-lens's SGD from the logit lens lower the held-out KL
    assert Lens.load(tmp_path / "tuned", real).extra["streaming"]["tokens_seen"] == 384

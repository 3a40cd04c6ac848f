import json
import os

import numpy as np
import pytest
import torch

from onejump.errors import CorpusError, NumericalError, StoreError
from onejump.extract import extract, plan_batches, sample_positions
from onejump.model.loading import from_pretrained_model
from onejump.store import HiddenStateStore, write_shard

from .tiny import tiny_model, tiny_tokenizer

SENTENCES = [
    "The cat sat on the mat and looked around.",
    "A quick brown fox jumps over the lazy dog!",
    "Paris is the capital of France.",
    "It rained all day in the small town by the sea.",
    "Numbers like 42 and 7 appear here too.",
    "Short one here.",
    "Another sentence, with commas, and more words in it.",
    "The end is near, said nobody at all.",
] * 3


@pytest.fixture(scope="module")
def lm():
    return from_pretrained_model(tiny_model("llama"), tiny_tokenizer(), name="tiny-llama")


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_positions_never_zero_and_seeded(lm):
    a = sample_positions(lm.tokenizer, SENTENCES, [0] * len(SENTENCES), seed=1)
    b = sample_positions(lm.tokenizer, SENTENCES, [0] * len(SENTENCES), seed=1)
    c = sample_positions(lm.tokenizer, SENTENCES, [0] * len(SENTENCES), seed=2)
    assert a == b and a != c
    for s, text in zip(a, SENTENCES):
        n = len(lm.tokenizer(text)["input_ids"])
        assert 1 <= s.position <= n - 1 and len(s.tokens) == s.position + 1


def test_batches_respect_budget_and_cover_all(lm):
    samples = sample_positions(lm.tokenizer, SENTENCES, [0] * len(SENTENCES), seed=0)
    batches = plan_batches(samples, tokens_per_batch=64, max_batch_size=5)
    assert sorted(i for b in batches for i in b) == list(range(len(samples)))
    for b in batches:
        assert len(b) <= 5 and len(b) * max(len(samples[i].tokens) for i in b) <= max(64, len(samples[b[0]].tokens))


def test_store_matches_full_sentence_forward(lm, tmp_path):
    splits = [0] * 16 + [1] * 8
    store = extract(lm, SENTENCES, tmp_path / "s", splits=splits, seed=3, tokens_per_batch=100,
                    max_batch_size=4, shard_size=5, progress=False)
    assert store.num_samples == 24 and store.num_levels == 4 and len(store.indices("test")) == 8
    hidden = store.hidden()
    for row in range(store.num_samples):
        sid = int(store.meta("sample_id")[row])
        pos = int(store.meta("position")[row])
        ids = torch.tensor([lm.tokenizer(SENTENCES[sid])["input_ids"]])
        out = lm.model(ids, output_hidden_states=True)
        for k in range(3):
            torch.testing.assert_close(hidden[row, k], out.hidden_states[k][0, pos], rtol=1e-4, atol=1e-4)
        assert int(store.meta("target")[row]) == int(out.logits[0, pos].argmax())
        assert store.prefix_tokens(row) == ids[0, : pos + 1].tolist()
        torch.testing.assert_close(lm.adapter.head(hidden[row, 3]), out.logits[0, pos], rtol=1e-4, atol=1e-4)


def test_resume_is_byte_identical(lm, tmp_path):
    kw = dict(splits=[0] * 24, seed=0, tokens_per_batch=64, max_batch_size=4, shard_size=4, progress=False)
    extract(lm, SENTENCES, tmp_path / "full", **kw)
    calls = []

    def stop_after_two(i, n):
        calls.append(i)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract(lm, SENTENCES, tmp_path / "part", on_shard=stop_after_two, **kw)
    assert not (tmp_path / "part" / "manifest.json").exists()
    with pytest.raises(StoreError, match="unfinished"):
        HiddenStateStore.open(tmp_path / "part")
    # a half-written shard (temporary file) left behind by a kill is ignored
    (tmp_path / "part" / ".shard-00002.safetensors.tmp").write_bytes(b"garbage")
    extract(lm, SENTENCES, tmp_path / "part", **kw)
    assert not (tmp_path / "part" / ".shard-00002.safetensors.tmp").exists()  # cleaned up on resume
    assert _files(tmp_path / "full") == _files(tmp_path / "part")


def test_other_run_in_folder_is_refused(lm, tmp_path):
    extract(lm, SENTENCES, tmp_path / "s", seed=0, progress=False)
    with pytest.raises(StoreError, match="another run"):
        extract(lm, SENTENCES, tmp_path / "s", seed=1, progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("hi")
    with pytest.raises(StoreError, match="not empty"):
        extract(lm, SENTENCES, tmp_path / "junk", progress=False)
    with pytest.raises(StoreError, match="another model"):
        HiddenStateStore.open(tmp_path / "s", fingerprint="0" * 16)


def test_truncated_corrupt_and_escaping_stores_are_refused(lm, tmp_path):
    extract(lm, SENTENCES, tmp_path / "s", seed=0, shard_size=8, progress=False)
    shard = tmp_path / "s" / "shard-00000.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])
    with pytest.raises(StoreError, match="truncated"):
        HiddenStateStore.open(tmp_path / "s")
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    shard.write_bytes(bytes(flipped))
    with pytest.raises(StoreError, match="corrupt"):
        HiddenStateStore.open(tmp_path / "s")
    shard.write_bytes(data)
    HiddenStateStore.open(tmp_path / "s")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    manifest["shards"][0]["file"] = "../../etc/passwd"
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="outside"):
        HiddenStateStore.open(tmp_path / "s")
    (tmp_path / "s" / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="JSON"):
        HiddenStateStore.open(tmp_path / "s")


def test_wrong_shape_is_refused(lm, tmp_path):
    extract(lm, SENTENCES, tmp_path / "s", seed=0, progress=False)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    manifest["hidden_size"] = 65
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="shape"):
        HiddenStateStore.open(tmp_path / "s")


def test_fp16_overflow_is_caught(tmp_path):
    hidden = torch.full((2, 3, 4), 1e6).to(torch.float16)
    tensors = {"hidden": hidden, "sample_id": torch.tensor([5, 6]), "split": torch.zeros(2, dtype=torch.int8),
               "position": torch.ones(2, dtype=torch.int64), "target": torch.zeros(2, dtype=torch.int64),
               "tokens": torch.zeros(4, dtype=torch.int32), "token_offsets": torch.tensor([0, 2, 4])}
    with pytest.raises(NumericalError, match="sample 5, level 0"):
        write_shard(tmp_path, 0, tensors)
    assert not any(tmp_path.iterdir())


def test_store_dtypes(lm, tmp_path):
    s32 = extract(lm, SENTENCES, tmp_path / "a", seed=0, progress=False)
    s16 = extract(lm, SENTENCES, tmp_path / "b", seed=0, store_dtype="bfloat16", progress=False)
    torch.testing.assert_close(s16.hidden(), s32.hidden(), rtol=2e-2, atol=2e-2)
    assert os.path.getsize(tmp_path / "b" / "shard-00000.safetensors") < os.path.getsize(
        tmp_path / "a" / "shard-00000.safetensors")


def test_chunks_equal_whole(lm, tmp_path):
    store = extract(lm, SENTENCES, tmp_path / "s", splits=[0, 1] * 12, seed=0, shard_size=5, progress=False)
    whole = store.hidden("test")
    parts = torch.cat([h for _, h in store.iter_chunks("test", chunk_size=3)])
    torch.testing.assert_close(parts, whole)
    rows = np.concatenate([r for r, _ in store.iter_chunks("test", chunk_size=3)])
    assert (rows == store.indices("test")).all()


def test_too_short_sentence(lm, tmp_path):
    with pytest.raises(CorpusError, match="fewer than 2 tokens"):
        extract(lm, ["ok fine", "x"], tmp_path / "s", progress=False)
    with pytest.raises(CorpusError):
        extract(lm, [], tmp_path / "s2", progress=False)


def test_second_writer_is_refused(tmp_path):
    from onejump.io import folder_lock

    with folder_lock(tmp_path / "out"):
        with pytest.raises(StoreError, match="another onejump process"):
            with folder_lock(tmp_path / "out"):
                pass
    with folder_lock(tmp_path / "out"):  # released: free again
        pass


def test_disk_full_keeps_finished_shards(lm, tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    kw = dict(seed=0, shard_size=6, max_batch_size=4, progress=False)
    real_save = safetensors.torch.save_file
    calls = {"n": 0}

    def flaky_save(tensors, path, *a, **k):  # what safetensors raises when the disk fills up
        calls["n"] += 1
        if calls["n"] == 3:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save(tensors, path, *a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", flaky_save)
    with pytest.raises(StoreError, match="disk full"):
        extract(lm, SENTENCES, tmp_path / "s", **kw)
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert "shard-00001.safetensors" in names and "shard-00002.safetensors" not in names
    assert not [n for n in names if n.startswith(".shard-")]  # no half-written file left
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    extract(lm, SENTENCES, tmp_path / "s", **kw)
    extract(lm, SENTENCES, tmp_path / "ref", **kw)
    assert _files(tmp_path / "s") == _files(tmp_path / "ref")


def test_sigkill_then_rerun_is_identical(tmp_path):
    """Kill the CLI with SIGKILL at several points; each rerun completes to the uninterrupted bytes."""
    import signal
    import subprocess
    import sys
    import time

    model_dir = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(SENTENCES * 4) + "\n".join(f"Sentence number {i} is here and it is long enough."
                                                           for i in range(80)))
    def cmd(out):
        return [sys.executable, "-m", "onejump.cli", "-q", "extract", "--model", str(model_dir), "--corpus",
                str(corpus), "--n-train", "60", "--n-test", "20", "--shard-size", "4", "--tokens-per-batch", "64",
                "--device", "cpu", "--out", str(out)]

    assert subprocess.run(cmd(tmp_path / "ref"), capture_output=True).returncode == 0
    out = tmp_path / "killed"
    for wait_shards in (1, 5, 12):
        proc = subprocess.Popen(cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and len(list(out.glob("store/shard-*.json"))) < wait_shards:
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert subprocess.run(cmd(out), capture_output=True).returncode == 0
    assert _files(tmp_path / "ref" / "store") == _files(out / "store")


def test_kill_while_writing_manifest_or_record_leaves_nothing_behind(tmp_path):
    """A kill during the last atomic writes (manifest, stage record) leaves temporaries; the rerun removes
    them and ends with the uninterrupted bytes."""
    import shutil

    from onejump.cli import main

    model_dir = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"Sentence number {i} is here and it is long enough." for i in range(40)))

    def run(out):
        return main(["-q", "extract", "--model", str(model_dir), "--corpus", str(corpus), "--n-train", "20",
                     "--n-test", "10", "--shard-size", "4", "--device", "cpu", "--out", str(out)])

    assert run(tmp_path / "ref") == 0
    for lost in ("manifest.json", "stage.json"):
        out = tmp_path / f"killed-{lost}"
        shutil.copytree(tmp_path / "ref", out)
        store = out / "store"
        (store / "stage.json").unlink()
        if lost == "manifest.json":
            (store / "manifest.json").rename(store / ".manifest.json.k1ll3d00")
        (store / ".stage.json.k1ll3d01").write_text('{"stage": "st')
        (store / ".shard-00001.safetensors.k1ll3d02").write_bytes(b"half")
        assert run(out) == 0
        assert _files(tmp_path / "ref" / "store") == _files(store)


def test_next_token_is_the_sentences_real_next_token(lm, tmp_path):
    short = ["ab", "abc", "A b.", "xy"] * 4  # two- and three-token sentences: the last position is often drawn
    texts = SENTENCES + short
    store = extract(lm, texts, tmp_path / "s", seed=4, shard_size=7, progress=False)
    assert store.has_next_tokens
    nxt = store.next_tokens()
    for row in range(store.num_samples):
        ids = lm.tokenizer(texts[int(store.meta("sample_id")[row])])["input_ids"]
        pos = int(store.meta("position")[row])
        assert int(nxt[row]) == (ids[pos + 1] if pos + 1 < len(ids) else -1)
    assert store.manifest["n_without_next_token"] == int((nxt < 0).sum()) > 0
    assert (store.next_tokens("train") == nxt[store.indices("train")]).all()


def _as_old_store(folder):
    """Rewrite a store the way onejump wrote it before it recorded next tokens."""
    from safetensors.torch import load_file, save_file

    from onejump.io import sha256_file

    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["shards"]:
        path = folder / entry["file"]
        tensors = load_file(path)
        tensors.pop("next_token")
        save_file(tensors, path)
        entry.update(bytes=path.stat().st_size, sha256=sha256_file(path))
        (folder / entry["file"].replace(".safetensors", ".json")).write_text(json.dumps(entry))
    for name in ("manifest.json", "plan.json"):
        data = json.loads((folder / name).read_text()) if name == "plan.json" else manifest
        data.pop("next_token", None)
        data.pop("n_without_next_token", None)
        (folder / name).write_text(json.dumps(data, indent=1))


def test_store_before_next_tokens_still_opens(lm, tmp_path):
    new = extract(lm, SENTENCES, tmp_path / "s", seed=0, progress=False)
    hidden = new.hidden()
    _as_old_store(tmp_path / "s")
    old = HiddenStateStore.open(tmp_path / "s")
    assert not old.has_next_tokens
    torch.testing.assert_close(old.hidden(), hidden)
    assert (old.targets() == new.targets()).all()
    with pytest.raises(StoreError, match=r"before onejump recorded .* `onejump extract --out"):
        old.next_tokens()
    again = extract(lm, SENTENCES, tmp_path / "s", seed=0, progress=False)  # a finished old store is reused
    assert again.identity == old.identity
    (tmp_path / "s" / "manifest.json").unlink()  # unfinished and old: refused with a way out
    with pytest.raises(StoreError, match="older onejump"):
        extract(lm, SENTENCES, tmp_path / "s", seed=0, progress=False)


def test_readers_verify_bytes_once_per_process(lm, tmp_path, monkeypatch):
    import onejump.store as store_mod

    extract(lm, SENTENCES, tmp_path / "s", seed=0, shard_size=8, max_batch_size=4, progress=False)
    hashed = []
    real = store_mod.sha256_file
    monkeypatch.setattr(store_mod, "sha256_file", lambda p: hashed.append(p.name) or real(p))
    store = HiddenStateStore.open(tmp_path / "s", verify=False)
    assert hashed == []  # opening alone hashes nothing
    store.read_rows(np.arange(3))
    assert sorted(hashed) == sorted(p.name for p in (tmp_path / "s").glob("shard-*.safetensors"))
    n = len(hashed)
    HiddenStateStore.open(tmp_path / "s", verify=False).hidden()  # same process, unchanged files: no rehash
    assert len(hashed) == n
    shard = tmp_path / "s" / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # one changed bit in the hidden states, size kept
    shard.write_bytes(bytes(data))
    for read in (lambda s: s.read_rows(np.arange(2)), lambda s: next(s.iter_chunks("train")),
                 lambda s: s.hidden(), lambda s: s.targets(), lambda s: s.next_tokens(), lambda s: s.indices("test"),
                 lambda s: s.prefix_tokens(0)):
        with pytest.raises(StoreError, match="shard-00001.safetensors .* corrupt"):
            read(HiddenStateStore.open(tmp_path / "s", verify=False))


def test_manifest_counts_must_match_the_shards(lm, tmp_path):
    extract(lm, SENTENCES, tmp_path / "s", splits=[0] * 16 + [1] * 8, seed=0, progress=False)
    good = (tmp_path / "s" / "manifest.json").read_text()
    for key, value in (("n_train", 17), ("n_test", 0), ("total_prefix_tokens", 1), ("n_without_next_token", 99)):
        manifest = json.loads(good)
        manifest[key] = value
        (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(StoreError, match=f"manifest says {key} = {value}"):
            HiddenStateStore.open(tmp_path / "s", verify=False)


def test_identity_is_a_content_key(lm, tmp_path):
    a = extract(lm, SENTENCES, tmp_path / "a", seed=0, progress=False)
    b = extract(lm, SENTENCES, tmp_path / "b", seed=0, progress=False)
    c = extract(lm, SENTENCES, tmp_path / "c", seed=1, progress=False)
    assert a.identity == b.identity == HiddenStateStore.open(tmp_path / "a").identity
    assert c.identity != a.identity and len(a.identity) == 16

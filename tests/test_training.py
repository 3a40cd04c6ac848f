import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from onejump.errors import ConfigError, NumericalError, StoreError
from onejump.io import sha256_file
from onejump.lenses.jumps import JumpBank
from onejump.store import FORMAT, VERSION, HiddenStateStore, write_shard
from onejump.training.config import TrainConfig
from onejump.training.fit import _prepare, train_joint, train_jumps, train_jumps_looped
from onejump.training.objectives import mse_loss
from onejump.training.reader import _Task

from .test_selection import FakeStore


def linear_store(n=96, K=3, H=10, seed=0) -> FakeStore:
    """Levels are noisy linear images of a latent; h^K is a rank-3 function of it (learnable)."""
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, H, generator=gen)
    levels = [latent @ torch.randn(H, H, generator=gen) + 0.1 * torch.randn(n, H, generator=gen) + k
              for k in range(K)]
    final = latent @ torch.randn(H, 3, generator=gen) @ torch.randn(3, H, generator=gen) * 2
    return FakeStore(torch.stack([*levels, final], 1))


FAST = dict(rank=2, max_epochs=6, patience=3, batch_size=16, lr=1e-2)


def bank_val_loss(store, bank, config):
    """Recompute each jump's validation loss (Eq. 2) with the returned bank."""
    from onejump.training.reader import _split

    x = store.hidden("train")
    _, va = _split(x.shape[0], config.val_fraction, config.seed)
    K = store.num_blocks
    with torch.no_grad():
        out = bank.eval()(x[va, :K]) if bank.num_jumps == K else None
    return ((out - x[va, K][:, None]) ** 2).sum(-1).mean(0)


def test_training_is_deterministic_and_seeded():
    store = linear_store()
    a, ha = train_jumps(store, TrainConfig(**FAST), progress=False)
    b, hb = train_jumps(store, TrainConfig(**FAST), progress=False)
    c, _ = train_jumps(store, TrainConfig(**FAST, seed=1), progress=False)
    for k, v in a.tensors().items():
        assert torch.equal(v, b.tensors()[k])
    assert ha.val_loss == hb.val_loss
    assert not torch.equal(a.A, c.A)


def test_each_jump_keeps_its_best_epoch():
    store = linear_store()
    cfg = TrainConfig(**{**FAST, "max_epochs": 8})
    bank, hist = train_jumps(store, cfg, progress=False)
    assert bank.num_jumps == 3 and bank.rank == 2 and not bank.training
    assert len(hist.val_loss) == hist.epochs_run and len(hist.val_loss[0]) == 3
    val = torch.tensor(hist.val_loss)
    for j in range(3):
        best = hist.best_epoch[j]
        assert hist.best_val_loss[j] == pytest.approx(float(val[: best + 1, j].min()))
        assert float(val[best, j]) == hist.best_val_loss[j]
    torch.testing.assert_close(bank_val_loss(store, bank, cfg).double(), torch.tensor(hist.best_val_loss,
                               dtype=torch.float64), rtol=1e-4, atol=1e-4)
    # training helped: better than the initial bank
    init = JumpBank(3, store.hidden_size, 2, seed=cfg.seed)
    init_loss = bank_val_loss(store, init, cfg)
    assert (bank_val_loss(store, bank, cfg) < init_loss).all()
    assert hist.target_energy > 0 and hist.n_train + hist.n_val == 96
    assert set(hist.to_dict()) >= {"train_loss", "val_loss", "best_epoch", "config"}


def test_batched_equals_looped():
    store = linear_store()
    cfg = TrainConfig(**FAST)
    batched, hb = train_jumps(store, cfg, progress=False)
    looped, hl = train_jumps_looped(store, cfg, progress=False)
    for k, v in batched.tensors().items():
        torch.testing.assert_close(v, looped.tensors()[k], rtol=1e-4, atol=1e-5)
    assert hb.best_epoch == hl.best_epoch
    torch.testing.assert_close(torch.tensor(hb.best_val_loss), torch.tensor(hl.best_val_loss), rtol=1e-4, atol=1e-6)


def test_joint_jump():
    store = linear_store()
    bank, hist = train_joint(store, TrainConfig(**FAST), progress=False)
    assert bank.num_jumps == 1 and bank.levels == [-1] and hist.kind == "joint"
    assert hist.n_train == 86 * 3 and hist.n_val == 10 * 3
    assert all(len(v) == 1 for v in hist.val_loss)


def test_nan_input_names_level_and_sample():
    store = linear_store()
    store._hidden[5, 1, 2] = float("nan")
    with pytest.raises(NumericalError, match="level 1, sample row 5"):
        train_jumps(store, TrainConfig(**FAST), progress=False)
    with pytest.raises(NumericalError, match="level 1"):
        train_joint(store, TrainConfig(**FAST), progress=False)


def test_diverging_loss_is_caught():
    store = linear_store()
    with pytest.raises(NumericalError, match="loss of jump"):
        train_jumps(store, TrainConfig(**{**FAST, "lr": 1e30}), progress=False)


@pytest.mark.parametrize("bad", [dict(objective="kl"), dict(batch_size=1), dict(lr=0), dict(val_fraction=1.0),
                                 dict(max_epochs=0), dict(buffer_samples=8)])
def test_bad_config(bad):
    with pytest.raises(ConfigError):
        train_jumps(linear_store(), TrainConfig(**{**FAST, **bad}), progress=False)


def test_without_validation_split():
    store = linear_store()
    bank, hist = train_jumps(store, TrainConfig(**{**FAST, "val_fraction": 0.0, "max_epochs": 3}), progress=False)
    assert hist.n_val == 0 and hist.epochs_run == 3


# ---- streaming from a sharded store -----------------------------------------------------------------


def sharded_store(folder, fake: FakeStore, shard_size: int, split: np.ndarray | None = None) -> HiddenStateStore:
    """Write ``fake``'s hidden states as a real store of several shards (as extraction does)."""
    x = fake._hidden
    n = x.shape[0]
    split = np.zeros(n, np.int64) if split is None else np.asarray(split)
    infos = []
    for i, s in enumerate(range(0, n, shard_size)):
        m = min(n, s + shard_size) - s
        infos.append(write_shard(folder, i, {
            "hidden": x[s:s + m].contiguous(), "sample_id": torch.arange(s, s + m),
            "split": torch.from_numpy(split[s:s + m]).to(torch.int8), "position": torch.zeros(m, dtype=torch.int64),
            "target": torch.zeros(m, dtype=torch.int64), "tokens": torch.zeros(m, dtype=torch.int32),
            "token_offsets": torch.arange(m + 1, dtype=torch.int64)}))
    (folder / "manifest.json").write_text(json.dumps({
        "format": FORMAT, "version": VERSION, "fingerprint": "fake", "num_levels": x.shape[1],
        "hidden_size": x.shape[2], "dtype": "float32", "num_samples": n, "shards": infos}))
    return HiddenStateStore.open(folder)


def same_weights(a: JumpBank, b: JumpBank) -> bool:
    return all(torch.equal(v, b.tensors()[k]) for k, v in a.tensors().items())


def test_store_reads_rows_in_any_order(tmp_path):
    fake = linear_store(n=50)
    store = sharded_store(tmp_path, fake, 7)
    rows = np.array([49, 3, 4, 5, 20, 8, 7, 0, 21])
    torch.testing.assert_close(store.read_rows(rows), fake._hidden[rows], rtol=0, atol=0)
    out = torch.zeros(20, 4, 10)
    assert store.read_rows(rows[:3], out=out).data_ptr() == out.data_ptr()
    groups = store.rows_by_shard(rows)
    assert [g.tolist() for g in groups] == [[0, 3, 4, 5], [7, 8], [20], [21], [49]]


def test_epoch_sees_every_example_once(tmp_path):
    """Per-level and joint epochs with a buffer smaller than the split: every example once, full batches,
    inputs/targets/rows consistent, the buffer never over its size, another order each epoch."""
    fake = linear_store(n=200)
    store = sharded_store(tmp_path, fake, 23)
    cfg, tr, va, _ = _prepare(store, TrainConfig(**{**FAST, "batch_size": 20, "buffer_samples": 50}), "cpu")
    assert not tr.resident and len(tr) == 180 and len(va) == 20
    assert all(len(rows) <= 50 for _, rows, _ in tr.buffers(torch.Generator().manual_seed(0)))
    x = fake._hidden
    gen = torch.Generator().manual_seed(0)
    task = _Task(tr, [0, 1, 2], 3)
    orders = []
    for _ in range(2):
        seen = []
        for inp, tgt, rows in task.batches(20, gen):
            assert len(rows) == 20
            assert torch.equal(inp, x[rows, :3]) and torch.equal(tgt, x[rows, 3])
            seen += rows.tolist()
        assert sorted(seen) == tr.rows.tolist()  # 180 = 9 batches of 20: nothing dropped
        orders.append(seen)
    assert orders[0] != orders[1]
    joint = _Task(tr, None, 3)
    pairs = []
    for inp, tgt, rows in joint.batches(60, gen):
        assert len(rows) == 60 and torch.equal(tgt, x[rows, 3])
        level = (inp[:, 0, None] == x[rows, :3]).all(-1).float().argmax(-1)
        assert torch.equal(inp[:, 0], x[rows, level])
        pairs += list(zip(rows.tolist(), level.tolist()))
    assert sorted(pairs) == [(r, k) for r in tr.rows.tolist() for k in range(3)]
    # an epoch that does not divide into batches drops fewer than one batch, each example at most once
    seen = [r for _, _, rows in task.batches(32, gen) for r in rows.tolist()]
    assert len(seen) == 160 and len(set(seen)) == 160


def test_reused_batches_and_chunk_views_hold_the_same_examples(tmp_path):
    """batches(reuse=True) yields the batches of batches() in one buffer; validation chunks are views."""
    fake = linear_store(n=200)
    store = sharded_store(tmp_path, fake, 23)
    _, tr, va, _ = _prepare(store, TrainConfig(**{**FAST, "batch_size": 20, "buffer_samples": 50}), "cpu")
    task = _Task(tr, [0, 1, 2], 3)
    fresh = [tuple(t.clone() for t in b) for b in task.batches(20, torch.Generator().manual_seed(3))]
    reused, pointers = [], set()
    for b in task.batches(20, torch.Generator().manual_seed(3), reuse=True):
        reused.append(tuple(t.clone() for t in b))
        pointers.add(b[0].data_ptr())
    assert len(reused) == len(fresh) and all(all(map(torch.equal, a, b)) for a, b in zip(fresh, reused))
    assert len(pointers) < len(reused)  # one buffer served several batches
    x = fake._hidden
    chunks = list(_Task(va, [0, 1, 2], 3).chunks(7))
    rows = torch.cat([c[2] for c in chunks])
    assert rows.tolist() == va.rows.tolist()
    assert all(torch.equal(inp, x[r, :3]) and torch.equal(tgt, x[r, 3]) for inp, tgt, r in chunks)


def test_streaming_trains_and_is_deterministic(tmp_path):
    fake = linear_store(n=200)
    store = sharded_store(tmp_path, fake, 23)
    cfg = TrainConfig(**{**FAST, "buffer_samples": 40})
    a, ha = train_jumps(store, cfg, progress=False)
    b, hb = train_jumps(store, cfg, progress=False)
    c, _ = train_jumps(store, replace(cfg, seed=1), progress=False)
    assert same_weights(a, b) and ha.val_loss == hb.val_loss and not torch.equal(a.A, c.A)
    assert np.isfinite(ha.val_loss).all() and ha.n_train == 180 and ha.n_val == 20
    init_loss = bank_val_loss(fake, JumpBank(3, 10, 2, seed=0), cfg)
    assert (bank_val_loss(fake, a, cfg) < init_loss).all()
    torch.testing.assert_close(bank_val_loss(fake, a, cfg).double(), torch.tensor(ha.best_val_loss,
                               dtype=torch.float64), rtol=1e-4, atol=1e-4)
    looped, hl = train_jumps_looped(store, cfg, progress=False)
    for k, v in a.tensors().items():
        torch.testing.assert_close(v, looped.tensors()[k], rtol=1e-4, atol=1e-5)
    assert hl.best_epoch == ha.best_epoch
    j, hj = train_joint(store, cfg, progress=False)
    j2, _ = train_joint(store, cfg, progress=False)
    assert same_weights(j, j2) and np.isfinite(hj.val_loss).all() and hj.n_train == 180 * 3
    # target energy streamed over validation buffers = computed in memory
    _, full = train_jumps(fake, cfg, progress=False)
    assert ha.target_energy == pytest.approx(full.target_energy, rel=1e-9)


def test_full_buffer_is_in_memory_training_whatever_the_sharding(tmp_path):
    """With the split in one buffer, the batches are one permutation of the split in store order: the same
    weights from an in-memory store, one shard, many shards, or a buffer that holds the training part only."""
    fake = linear_store(n=120)
    (tmp_path / "one").mkdir()
    (tmp_path / "many").mkdir()
    stores = [fake, sharded_store(tmp_path / "one", fake, 120), sharded_store(tmp_path / "many", fake, 17)]
    for train in (train_jumps, train_joint):
        ref, href = train(fake, TrainConfig(**FAST), progress=False)
        for store in stores:
            for buffer in (16384, 110):  # 110: not resident, but the 108 training rows fit in one buffer
                bank, hist = train(store, TrainConfig(**{**FAST, "buffer_samples": buffer}), progress=False)
                assert same_weights(ref, bank) and hist.val_loss == href.val_loss


def test_loss_fn_gets_store_rows(tmp_path):
    """``loss_fn(bank, inp, tgt, rows)``: rows are global store rows of the train split (test rows interleaved)."""
    fake = linear_store(n=150)
    split = (np.arange(150) % 5 == 2).astype(np.int64)
    store = sharded_store(tmp_path, fake, 23, split)
    train_rows = set(store.indices("train").tolist())
    calls = []

    def loss_fn(bank, inp, tgt, rows):
        assert rows.dtype == torch.long and rows.shape == (inp.shape[0],) and tgt.shape == (inp.shape[0], 10)
        assert set(rows.tolist()) <= train_rows
        assert torch.equal(tgt, fake._hidden[rows, 3])
        calls.append((bank.training, inp.shape[1]))
        return mse_loss(bank, inp, tgt, rows)

    cfg = TrainConfig(**{**FAST, "max_epochs": 2, "buffer_samples": 32})
    bank, hist = train_jumps(store, cfg, progress=False, loss_fn=loss_fn)
    ref, href = train_jumps(store, cfg, progress=False)
    assert same_weights(bank, ref) and hist.val_loss == href.val_loss
    assert set(calls) == {(True, 3), (False, 3)}
    calls.clear()
    train_joint(store, cfg, progress=False, loss_fn=loss_fn)
    assert set(calls) == {(True, 1), (False, 1)}


def test_nan_in_a_streamed_shard_names_its_row(tmp_path):
    fake = linear_store(n=200)
    fake._hidden[157, 2, 4] = float("inf")
    with pytest.raises(NumericalError, match="non-finite hidden state"):
        sharded_store(tmp_path, fake, 23)  # the store refuses to write it ...
    fake._hidden[157, 2, 4] = 0.0
    store = sharded_store(tmp_path, fake, 23)
    bad = store._shards[6]  # ... so corrupt a finished shard the way a bad disk or fp16 cast would
    tensors = load_file(str(bad.path))
    tensors["hidden"][157 - 138, 2, 4] = float("nan")
    save_file(tensors, str(bad.path))
    with pytest.raises(StoreError, match="corrupt"):  # a changed shard is refused before it is read ...
        train_jumps(HiddenStateStore.open(tmp_path, verify=False), TrainConfig(**FAST), progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())  # ... so record its hash, as a store
    entry = manifest["shards"][6]                                      # written with a NaN by another tool would
    entry.update(bytes=bad.path.stat().st_size, sha256=sha256_file(bad.path))
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    store = HiddenStateStore.open(tmp_path, verify=False)
    with pytest.raises(NumericalError, match="level 2, sample row 157"):
        train_jumps(store, TrainConfig(**{**FAST, "buffer_samples": 40}), progress=False)

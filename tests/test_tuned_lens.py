"""The tuned lens: starts at the logit lens, training lowers the KL, files, tuned-lens's folder format, the hub."""

import json
import pickle

import pytest
import torch

from onejump.errors import ConfigError, LensFileError
from onejump.extract import extract
from onejump.lenses import Lens, LogitLens, TunedLens
from onejump.lenses.jumps import JumpBank
from onejump.lenses.tuned_format import export_tuned_lens, import_tuned_lens, read_tuned_lens_folder
from onejump.model.loading import from_pretrained_model
from onejump.training.objectives import head_targets
from onejump.training.tuned import TunedTrainConfig, train_tuned_lens

from .test_selection import random_sentences
from .tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def lm():
    return from_pretrained_model(tiny_model("llama"), tiny_tokenizer(), name="tiny-llama")


@pytest.fixture(scope="module")
def store(lm, tmp_path_factory):
    n = 120
    return extract(lm, random_sentences(n, seed=3), tmp_path_factory.mktemp("tuned") / "s",
                   splits=[0] * (n - 20) + [1] * 20, seed=0, shard_size=32, progress=False)


def random_tuned(lm, seed=0, scale=0.05):
    gen = torch.Generator().manual_seed(seed)
    K, H = lm.num_blocks, lm.hidden_size
    return TunedLens(lm, torch.randn(K, H, H, generator=gen) * scale, torch.randn(K, H, generator=gen) * 0.1)


def random_bank(lm, num_jumps, residual, seed=1):
    bank = JumpBank(num_jumps, lm.hidden_size, 4, residual=residual, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bank.running_mean.copy_(torch.randn(bank.running_mean.shape, generator=gen))
        bank.running_var.copy_(torch.rand(bank.running_var.shape, generator=gen) + 0.5)
        bank.bn_weight.copy_(1 + 0.2 * torch.randn(bank.bn_weight.shape, generator=gen))
        bank.bn_bias.copy_(torch.randn(bank.bn_bias.shape, generator=gen))
    return bank.eval()


def hidden(lm, n=6, seed=0):
    return torch.randn(n, lm.hidden_size, generator=torch.Generator().manual_seed(seed)) * 2


def exact_kl(lm, lens, store):
    """Mean KL(p_final || p_lens) per level over the store's train rows, with the full head."""
    x = store.hidden("train").float()
    K = lm.num_blocks
    with torch.no_grad():
        logp = torch.log_softmax(lm.adapter.head(x[:, K]), -1)
        out = []
        for k in range(K):
            logq = torch.log_softmax(lens(x[:, k], k), -1)
            out.append(float((logp.exp() * (logp - logq)).sum(-1).mean()))
    return torch.tensor(out)


def test_starts_at_the_logit_lens_and_counts_parameters(lm):
    lens, logit = TunedLens(lm), LogitLens(lm)
    K, H, V = lm.num_blocks, lm.hidden_size, lm.adapter.vocab_size
    h = hidden(lm)
    for k in range(K):
        assert torch.equal(lens(h, k), logit(h, k))
    assert lens.num_parameters == K * (H * H + H)
    assert lens.logits_cost() == H * H + H * V
    with pytest.raises(LensFileError):
        lens(h, K)


def test_translate_is_every_level_at_once(lm):
    lens = random_tuned(lm)
    x = torch.randn(5, lm.num_blocks, lm.hidden_size)
    batched = lens.translate(x)
    for k in range(lm.num_blocks):
        torch.testing.assert_close(batched[:, k], lens.transform(x[:, k], k))


def test_training_lowers_the_kl(lm, store):
    before = exact_kl(lm, TunedLens(lm), store)
    config = TunedTrainConfig(batch_size=16, num_steps=60, eval_every=10, val_fraction=0, kl_negatives=0,
                              init="zero")
    lens, hist = train_tuned_lens(store, lm, config, progress=False)
    after = exact_kl(lm, lens, store)
    assert (after < before).all(), (before, after)
    assert float(after.sum()) < 0.8 * float(before.sum())
    assert hist.steps_run == 60 and hist.n_val == 0
    # same seed, same translators
    again, _ = train_tuned_lens(store, lm, config, progress=False)
    assert torch.equal(again.weight, lens.weight) and torch.equal(again.bias, lens.bias)


def test_early_stopping_keeps_each_levels_best(lm, store):
    config = TunedTrainConfig(batch_size=16, num_steps=80, eval_every=10, patience=2, kl_negatives=32,
                              init="zero")
    targets = head_targets(store, lm.adapter, top_k=config.kl_top_k, progress=False)
    lens, hist = train_tuned_lens(store, lm, config, progress=False, targets=targets)
    assert hist.n_val > 0 and hist.steps[0] == 0
    for k in range(lm.num_blocks):
        vals = [v[k] for v in hist.val_kl]
        assert hist.best_val_kl[k] == min(vals)
        assert hist.best_step[k] == hist.steps[vals.index(min(vals))]
        if hist.best_step[k] == 0:  # never beaten: the level keeps the logit lens
            assert not lens.weight[k].any() and not lens.bias[k].any()


def test_jtc_start_is_the_least_squares_map_of_the_training_rows(lm, store):
    """init="jtc": evaluation 0 is JTC fitted on the training rows alone (never on the held-out ones)."""
    from onejump.lenses.jtc import LinearJTC
    from onejump.training.reader import _split, _train_rows
    from onejump.training.tuned import _initial_lens, _sources

    config = TunedTrainConfig(batch_size=16, num_steps=1, init="jtc")
    train_src, val_src = _sources(store, config)
    rows = _train_rows(store)
    tr, va = _split(len(rows), config.val_fraction, config.seed)
    assert sorted(train_src.rows.tolist()) == sorted(rows[tr.numpy()].tolist()) and len(va) > 0
    start = _initial_lens(lm, store, config, train_src)
    jtc = LinearJTC.fit(store, rows=rows[tr.numpy()])
    h = store.hidden("test")
    for k in range(lm.num_blocks):
        torch.testing.assert_close(start.transform(h[:, k], k), jtc(h[:, k], k), rtol=1e-4, atol=1e-4)
    everything = LinearJTC.fit(store)  # the whole train split: another map
    assert not torch.allclose(everything.W, jtc.W)
    # trained from there, each level keeps a translator at least as good on held-out KL as its start
    lens, hist = train_tuned_lens(store, lm, TunedTrainConfig(batch_size=16, num_steps=40, eval_every=10,
                                                              init="jtc"), progress=False)
    assert all(best <= first for best, first in zip(hist.best_val_kl, hist.val_kl[0]))
    # the zero start keeps the stage identity of lenses trained before the choice existed
    old = TunedTrainConfig(init="zero", val_rows=0).to_dict()
    assert "init" not in old and "val_rows" not in old
    assert TunedTrainConfig().to_dict()["init"] == "jtc" and TunedTrainConfig(init="zero").to_dict()["val_rows"] == 256


@pytest.mark.parametrize("bad", [dict(lr=0), dict(momentum=1.0), dict(num_steps=0), dict(val_fraction=1.0),
                                 dict(batch_size=64, buffer_samples=32), dict(init="identity")])
def test_bad_config(bad, lm, store):
    with pytest.raises(ConfigError):
        train_tuned_lens(store, lm, TunedTrainConfig(**bad), progress=False)


def test_save_load_round_trip_and_fingerprint(lm, tmp_path):
    lens = random_tuned(lm)
    lens.save_pretrained(tmp_path / "lens")
    back = Lens.from_pretrained(tmp_path / "lens", lm)
    assert isinstance(back, TunedLens)
    h = hidden(lm)
    for k in range(lm.num_blocks):
        assert torch.equal(back(h, k), lens(h, k))
    other = from_pretrained_model(tiny_model("llama", seed=1), tiny_tokenizer(), name="other")
    with pytest.raises(LensFileError, match="another model"):
        Lens.from_pretrained(tmp_path / "lens", other)


def test_tuned_lens_export_import_is_identical(lm, tmp_path):
    lens = random_tuned(lm)
    export_tuned_lens(lens, tmp_path / "tl", lm)
    assert sorted(p.name for p in (tmp_path / "tl").iterdir()) == ["config.json", "onejump.json", "params.pt"]
    config = json.loads((tmp_path / "tl" / "config.json").read_text())
    assert config["d_model"] == lm.hidden_size and config["num_hidden_layers"] == lm.num_blocks
    back = Lens.from_pretrained(tmp_path / "tl", lm)  # a tuned-lens folder is imported
    h = hidden(lm)
    for k in range(lm.num_blocks):
        assert torch.equal(back(h, k), lens(h, k))


@pytest.mark.parametrize("residual", [True, False])
def test_jumps_are_tuned_lens_translators(lm, tmp_path, residual):
    K = lm.num_blocks
    h = hidden(lm)
    bank = random_bank(lm, K, residual)
    export_tuned_lens(bank, tmp_path / "bank", lm)
    lens = import_tuned_lens(tmp_path / "bank", lm)
    for k in range(K):
        torch.testing.assert_close(lens(h, k), lm.adapter.head(bank.apply(h, k)), rtol=1e-4, atol=1e-4)
    single = random_bank(lm, 1, residual, seed=5)  # one jump read at every level (OJFA)
    export_tuned_lens(single, tmp_path / "single", lm)
    lens = import_tuned_lens(tmp_path / "single", lm)
    for k in range(K):
        torch.testing.assert_close(lens(h, k), lm.adapter.head(single.apply(h, 0)), rtol=1e-4, atol=1e-4)


def test_logit_lens_exports_as_zero_translators(lm, tmp_path):
    export_tuned_lens(LogitLens(lm), tmp_path / "z", lm)
    _, weight, bias = read_tuned_lens_folder(tmp_path / "z")
    assert not weight.any() and not bias.any()


def test_tuned_lens_package_reads_our_export(lm, tmp_path):
    try:
        import tuned_lens
    except ImportError as exc:
        reason = f"the optional tuned-lens package is not installed ({exc}); pip install 'onejump[tuned-lens]'"
        print(reason)
        pytest.skip(reason)
    lens = random_tuned(lm)
    export_tuned_lens(lens, tmp_path / "tl", lm)
    theirs = tuned_lens.TunedLens.from_model_and_pretrained(lm.model, str(tmp_path / "tl"))
    bank = random_bank(lm, lm.num_blocks, residual=True)
    export_tuned_lens(bank, tmp_path / "bank", lm)
    theirs_bank = tuned_lens.TunedLens.from_model_and_pretrained(lm.model, str(tmp_path / "bank"))
    h = hidden(lm)
    with torch.no_grad():
        for k in range(lm.num_blocks):
            torch.testing.assert_close(theirs(h, idx=k), lens(h, k), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(theirs_bank(h, idx=k), lm.adapter.head(bank.apply(h, k)), rtol=1e-4,
                                       atol=1e-4)


class Evil:
    def __reduce__(self):
        return (print, ("this ran",))


def _bad_params(lm, K, H):
    good = {f"{k}.{n}": torch.zeros((H, H) if n == "weight" else (H,)) for k in range(K) for n in ("weight", "bias")}
    missing = dict(good)
    del missing[f"{K - 1}.bias"]
    extra = dict(good, **{f"{K}.weight": torch.zeros(H, H)})
    shape = dict(good, **{"0.weight": torch.zeros(H, H + 1)})
    return {"missing": (missing, "missing"), "extra": (extra, "unexpected"), "shape": (shape, "shape"),
            "not a tensor": (dict(good, **{"0.bias": [0.0] * H}), "plain dict"),
            "a list": ([torch.zeros(H)], "plain dict")}


@pytest.mark.parametrize("case", ["missing", "extra", "shape", "not a tensor", "a list", "pickle", "garbage",
                                  "no params"])
def test_bad_tuned_lens_folders_are_refused(lm, tmp_path, case):
    K, H = lm.num_blocks, lm.hidden_size
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"d_model": H, "num_hidden_layers": K, "bias": True}))
    if case == "pickle":
        (folder / "params.pt").write_bytes(pickle.dumps({"0.weight": Evil()}))
        match = "holds Python objects \\(never unpickled"
    elif case == "garbage":
        (folder / "params.pt").write_bytes(b"not a torch file at all")
        match = "not a plain dict of tensors onejump can read safely"
    elif case == "no params":
        match = "params.pt missing"
    else:
        state, match = _bad_params(lm, K, H)[case]
        torch.save(state, folder / "params.pt")
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(LensFileError, match=match):
        import_tuned_lens(folder, lm)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_tuned_lens_folder_of_another_model_is_refused(lm, tmp_path):
    export_tuned_lens(random_tuned(lm), tmp_path / "tl", lm)
    other = from_pretrained_model(tiny_model("llama", seed=1), tiny_tokenizer(), name="other")
    with pytest.raises(LensFileError, match="another model"):
        import_tuned_lens(tmp_path / "tl", other)
    (tmp_path / "tl" / "onejump.json").unlink()  # a folder tuned-lens wrote: its unembedding hash decides
    with pytest.raises(LensFileError, match="another unembedding"):
        import_tuned_lens(tmp_path / "tl", other)
    assert isinstance(import_tuned_lens(tmp_path / "tl", lm), TunedLens)
    K, H = lm.num_blocks + 1, lm.hidden_size  # a lens for a deeper model
    folder = tmp_path / "deeper"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"d_model": H, "num_hidden_layers": K}))
    torch.save({f"{k}.{n}": torch.zeros((H, H) if n == "weight" else (H,)) for k in range(K)
                for n in ("weight", "bias")}, folder / "params.pt")
    with pytest.raises(LensFileError, match="layers of width"):
        import_tuned_lens(folder, lm)


def test_hub_download_and_upload(lm, tmp_path, monkeypatch):
    import huggingface_hub

    hub = tmp_path / "hub"
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create", repo_id))
            (hub / repo_id).mkdir(parents=True, exist_ok=True)

        def upload_folder(self, folder_path, repo_id, **kwargs):
            import shutil

            calls.append(("upload", repo_id))
            shutil.copytree(folder_path, hub / repo_id, dirs_exist_ok=True)
            return f"commit of {repo_id}"

    def fake_download(repo_id, revision=None, cache_dir=None):
        if not (hub / repo_id).is_dir():
            raise huggingface_hub.errors.RepositoryNotFoundError(f"404 Client Error: {repo_id} not found")
        return str(hub / repo_id)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    lens = random_tuned(lm)
    assert lens.push_to_hub("someone/tiny-tuned") == "commit of someone/tiny-tuned"
    assert calls == [("create", "someone/tiny-tuned"), ("upload", "someone/tiny-tuned")]
    back = Lens.from_pretrained("someone/tiny-tuned", lm)
    h = hidden(lm)
    assert torch.equal(back(h, 1), lens(h, 1))
    lens.push_to_hub("someone/tiny-tl", format="tuned-lens")
    assert (hub / "someone" / "tiny-tl" / "params.pt").is_file()
    assert torch.equal(Lens.from_pretrained("someone/tiny-tl", lm)(h, 2), lens(h, 2))
    with pytest.raises(LensFileError, match="could not be fetched"):
        Lens.from_pretrained("someone/missing", lm)
    with pytest.raises(LensFileError, match="neither a folder nor a hub id"):
        Lens.from_pretrained(tmp_path / "no" / "such" / "folder", lm)


def test_aggregate_metrics_of_an_evaluation(lm, store, tmp_path):
    from onejump.evaluation import evaluate
    from onejump.evaluation.aggregate import flatten_metrics, metrics_of_result, write_aggregate_metrics

    result = evaluate(store, {"logit": LogitLens(lm), "tuned": random_tuned(lm)}, progress=False)
    path = write_aggregate_metrics(tmp_path, **metrics_of_result(result))
    flat = flatten_metrics(json.loads(path.read_text()))
    K = lm.num_blocks
    for lens in ("logit", "tuned"):
        for metric, key in (("kl", "kl"), ("entropy", "entropy"), ("ce", "cross_entropy")):
            assert [flat[f"{lens}.{metric}.layer_{k}"] for k in range(K)] == pytest.approx(
                result.metric(lens, key).tolist())
    assert flat["baseline.ce.final"] == pytest.approx(result.final_cross_entropy)


def test_validation_scores_a_seeded_subset_of_the_held_out_rows(store):
    from onejump.training.reader import _split, _train_rows
    from onejump.training.tuned import _sources

    rows = _train_rows(store)
    _, va = _split(len(rows), 0.5, 0)
    held_out = set(rows[va.numpy()].tolist())
    train_src, val_src = _sources(store, TunedTrainConfig(val_fraction=0.5, val_rows=5, batch_size=4))
    picked = val_src.rows.tolist()
    assert len(picked) == 5 and set(picked) <= held_out and not set(picked) & set(train_src.rows.tolist())
    assert len(train_src.rows) == len(rows) - len(held_out)  # the unscored held-out rows stay out of training
    _, again = _sources(store, TunedTrainConfig(val_fraction=0.5, val_rows=5, batch_size=4))
    assert again.rows.tolist() == picked
    _, every = _sources(store, TunedTrainConfig(val_fraction=0.5, val_rows=0, batch_size=4))
    assert set(every.rows.tolist()) == held_out

"""The Lens interface: every lens reads logits through the model's head, saves, loads and counts its numbers."""

import json

import pytest
import torch

from onejump.errors import LensFileError
from onejump.lenses import JTCLens, Lens, LinearJTC, LogitLens, OneJump, PerLevelLens
from onejump.lenses.jumps import jump_parameter_count
from onejump.model.loading import from_pretrained_model

from .test_selection import random_bank
from .tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def lm():
    return from_pretrained_model(tiny_model("llama"), tiny_tokenizer(), name="tiny-llama")


def _lenses(lm):
    K, H = lm.num_blocks, lm.hidden_size
    gen = torch.Generator().manual_seed(3)
    jtc = LinearJTC(torch.randn(K, H + 1, H, generator=gen) * 0.1)
    residual = random_bank(1, H, 3, seed=5)
    residual.residual = True
    return {"logit": LogitLens(lm), "ojfa": PerLevelLens(lm, random_bank(K, H, 4, seed=9)).jump(1),
            "joint": OneJump(lm, random_bank(1, H, 4, seed=2)), "residual": OneJump(lm, residual),
            "per-level": PerLevelLens(lm, random_bank(K, H, 4, seed=9)), "jtc": JTCLens(lm, jtc)}


@torch.no_grad()
def test_forward_is_head_of_transform(lm):
    h = torch.randn(5, lm.hidden_size) * 3
    for name, lens in _lenses(lm).items():
        for level in range(lm.num_blocks):
            ref = lm.adapter.head(lens.transform(h, level))
            torch.testing.assert_close(lens(h, level), ref, atol=1e-4, rtol=1e-4, msg=name)
        assert lens(h[None], 0).shape == (1, 5, lm.adapter.vocab_size)  # any leading shape


@torch.no_grad()
def test_jumps_transform_as_the_bank_does(lm):
    K, H = lm.num_blocks, lm.hidden_size
    bank = random_bank(K, H, 4, seed=9)
    per_level = PerLevelLens(lm, bank)
    h = torch.randn(4, H)
    for k in range(K):
        torch.testing.assert_close(per_level.transform(h, k), bank.apply(h, k))
        torch.testing.assert_close(per_level.jump(2).transform(h, k), bank.apply(h, 2))
    assert per_level.jump(2).trained_at == 2


def test_parameter_counts_as_the_paper_counts(lm):
    K, H = lm.num_blocks, lm.hidden_size
    lenses = _lenses(lm)
    assert lenses["logit"].num_parameters == 0
    assert lenses["ojfa"].num_parameters == jump_parameter_count(H, 4) == 2 * H * 4 + 4 * H
    assert lenses["per-level"].num_parameters == K * jump_parameter_count(H, 4)
    assert lenses["jtc"].num_parameters == K * (H * H + H)
    assert lenses["ojfa"].logits_cost() < lenses["logit"].logits_cost() < lenses["residual"].logits_cost()


@torch.no_grad()
def test_save_load_round_trip(lm, tmp_path):
    h = torch.randn(3, lm.hidden_size)
    for name, lens in _lenses(lm).items():
        folder = lens.save(tmp_path / name)
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg["kind"] == lens.kind and cfg["fingerprint"] == lm.fingerprint
        again = Lens.load(folder, lm)
        assert type(again) is type(lens) and again.num_parameters == lens.num_parameters
        for level in (0, lm.num_blocks - 1):
            assert torch.equal(again(h, level), lens(h, level)), name
    assert Lens.load(tmp_path / "ojfa", lm).trained_at == 1
    with pytest.raises(LensFileError, match="not a PerLevelLens"):
        PerLevelLens.load(tmp_path / "ojfa", lm)


def test_load_refuses_another_model_and_changed_weights(lm, tmp_path):
    folder = _lenses(lm)["ojfa"].save(tmp_path / "j")
    other = from_pretrained_model(tiny_model("llama", seed=1), tiny_tokenizer(), name="tiny-llama-2")
    with pytest.raises(LensFileError, match="another model"):
        Lens.load(folder, other)
    raw = bytearray((folder / "weights.safetensors").read_bytes())
    raw[-1] ^= 1
    (folder / "weights.safetensors").write_bytes(bytes(raw))
    with pytest.raises(LensFileError, match="sha256"):
        Lens.load(folder, lm)
    with pytest.raises(LensFileError, match="not a lens folder"):
        Lens.load(tmp_path, lm)


def test_bad_levels_and_shapes_are_refused(lm):
    lens = _lenses(lm)["ojfa"]
    h = torch.randn(2, lm.hidden_size)
    for bad in (-1, lm.num_blocks, 1.0, True):
        with pytest.raises(LensFileError, match="exit level"):
            lens(h, bad)
    with pytest.raises(LensFileError, match="hidden width"):
        lens(torch.randn(2, lm.hidden_size + 1), 0)
    with pytest.raises(LensFileError, match="K="):
        PerLevelLens(lm, random_bank(2, lm.hidden_size, 4))

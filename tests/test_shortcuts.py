import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from onejump.errors import LensFileError
from onejump.lenses.jtc import LinearJTC
from onejump.lenses.jumps import JumpBank, default_rank, jump_parameter_count

from .test_selection import FakeStore, random_bank


@pytest.mark.parametrize("H,r,K,per_jump,total", [
    (1600, 16, 48, 57_600, 2_764_800),  # GPT2-XL: 57.6K per jump, 2.76M for all 48
    (3072, 30, 32, 196_608, 6_291_456),  # Phi-3-mini: 196.6K / 6.29M
    (4096, 40, 32, 344_064, 11_010_048),  # Llama-2-7B: 344.06K / 11.01M
])
def test_parameter_counts_match_paper(H, r, K, per_jump, total):
    assert default_rank(H) == r
    assert jump_parameter_count(H, r) == per_jump
    assert K * per_jump == total
    assert round(per_jump / 1000, 2) in (57.6, 196.61, 344.06)
    assert round(total / 1e6, 2) in (2.76, 6.29, 11.01)


def test_bank_parameter_count_is_its_tensors():
    bank = JumpBank(4, 50, 3)
    assert bank.parameters_per_jump() == sum(t.numel() for t in bank.tensors().values()) // 4
    assert bank.parameter_count() == 4 * jump_parameter_count(50, 3)
    assert JumpBank(2, 576).rank == 5 and JumpBank(1, 64).rank == 1


@pytest.mark.parametrize("rank", [0, -1, 13, 2.5, True])
def test_bad_rank(rank):
    with pytest.raises(LensFileError, match="rank"):
        JumpBank(2, 12, rank)


def test_init_is_seeded():
    a, b, c = JumpBank(3, 20, 2, seed=1), JumpBank(3, 20, 2, seed=1), JumpBank(3, 20, 2, seed=2)
    for k, v in a.tensors().items():
        assert torch.equal(v, b.tensors()[k])
    assert not torch.equal(a.A, c.A)
    assert a.A.abs().max() <= 1 / 20 ** 0.5 and a.B.abs().max() <= 1 / 2 ** 0.5


def separate_modules(bank: JumpBank) -> list[nn.Module]:
    mods = []
    for j in range(bank.num_jumps):
        bn = nn.BatchNorm1d(bank.hidden_size, eps=bank.eps, momentum=bank.momentum)
        lin_a = nn.Linear(bank.hidden_size, bank.rank, bias=False)
        lin_b = nn.Linear(bank.rank, bank.hidden_size, bias=False)
        with torch.no_grad():
            bn.weight.copy_(bank.bn_weight[j])
            bn.bias.copy_(bank.bn_bias[j])
            bn.running_mean.copy_(bank.running_mean[j])
            bn.running_var.copy_(bank.running_var[j])
            lin_a.weight.copy_(bank.A[j].T)
            lin_b.weight.copy_(bank.B[j].T)
        mods.append(nn.Sequential(bn, lin_a, lin_b))
    return mods


def test_forward_equals_separate_batchnorm1d():
    bank = random_bank(3, 16, 4, seed=2)
    mods = separate_modules(bank)
    h = torch.randn(32, 3, 16) * 3 + 1
    bank.train()
    for m in mods:
        m.train()
    y = bank(h)
    for j, m in enumerate(mods):
        torch.testing.assert_close(y[:, j], m(h[:, j]), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bank.running_mean[j], m[0].running_mean)
        torch.testing.assert_close(bank.running_var[j], m[0].running_var)
    bank.eval()
    for j, m in enumerate(mods):
        m.eval()
        torch.testing.assert_close(bank(h)[:, j], m(h[:, j]), atol=1e-5, rtol=1e-5)
        # reuse at another level's input: jump j's own statistics (Eq. 3)
        torch.testing.assert_close(bank.apply(h[:, 0], j, level=0), m(h[:, 0]), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bank.project(h[:, 1], j) @ bank.B[j], m(h[:, 1]), atol=1e-5, rtol=1e-5)
    with pytest.raises(LensFileError):
        bank(h[:, :2])
    with pytest.raises(LensFileError, match="jump index"):
        bank.apply(h[:, 0], 3)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(1, 40), st.floats(0.01, 100.0))
def test_folded_parameters_equal_the_unfolded_jump(seed, J, H, scale):
    r = int(torch.randint(1, H + 1, (1,), generator=torch.Generator().manual_seed(seed)))
    bank = random_bank(J, H, r, seed=seed % 1000)
    h = torch.randn(7, H, generator=torch.Generator().manual_seed(seed)) * scale
    a, c = bank.folded_parameters()
    for j in range(J):
        ref = bank.apply(h, j).detach()
        tol = 1e-4 * (1 + ref.abs().max())
        code = h @ a[j] + c[j]
        torch.testing.assert_close(code @ bank.B[j].detach(), ref, atol=float(tol), rtol=1e-4)
        torch.testing.assert_close(code, bank.project(h, j).detach(), atol=float(tol), rtol=1e-4)


def test_select_copies_jumps():
    bank = random_bank(4, 10, 2, seed=1)
    one = bank.select(2)
    assert one.num_jumps == 1 and one.levels == [2]
    h = torch.randn(5, 10)
    torch.testing.assert_close(one.apply(h, 0), bank.apply(h, 2))


def test_linear_jtc_recovers_affine_map():
    gen = torch.Generator().manual_seed(0)
    n, K, H = 200, 3, 6
    x = torch.randn(n, K, H, generator=gen, dtype=torch.float64)
    w = torch.randn(H, H, generator=gen, dtype=torch.float64)
    b = torch.randn(H, generator=gen, dtype=torch.float64)
    target = x[:, 1] @ w + b
    store = FakeStore(torch.cat([x, target[:, None]], 1))
    jtc = LinearJTC.fit(store, chunk_size=17)
    assert jtc.W.shape == (K, H + 1, H) and jtc.parameter_count() == K * (H * H + H)
    torch.testing.assert_close(jtc.W[1, :H], w.float(), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(jtc.W[1, H], b.float(), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(jtc(x[:5, 1].float(), 1), target[:5].float(), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(jtc.apply_all(x[:5].float())[:, 1], target[:5].float(), atol=1e-3, rtol=1e-3)
    other = LinearJTC.fit(store, chunk_size=1000)
    torch.testing.assert_close(jtc.W, other.W, atol=1e-5, rtol=1e-5)
    with pytest.raises(LensFileError):
        jtc(x[:, 0].float(), K)


# ---- files ---------------------------------------------------------------------------------------


def test_old_shortcut_folders_are_refused_with_what_to_do(tmp_path):
    """The shortcut format run folders held before lens files is not read: one line says to retrain."""
    from onejump.lenses import Lens
    from onejump.model.loading import from_pretrained_model

    from .tiny import tiny_model, tiny_tokenizer

    lm = from_pretrained_model(tiny_model("llama"), tiny_tokenizer(), name="tiny-llama")
    folder = tmp_path / "nnjtc"
    folder.mkdir()
    bank = random_bank(lm.num_blocks, lm.hidden_size, 2, seed=4)
    save_file(bank.tensors(), str(folder / "weights.safetensors"))
    (folder / "shortcuts.json").write_text(json.dumps({"format": "onejump-shortcuts", "version": 1, "kind": "nnjtc",
                                                       "weights": "weights.safetensors"}))
    with pytest.raises(LensFileError) as err:
        Lens.load(folder, lm)
    message = str(err.value)
    assert "\n" not in message and "old shortcut format" in message and "onejump train --out" in message

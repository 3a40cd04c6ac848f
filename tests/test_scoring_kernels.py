"""The fast kernels give what the plain PyTorch they replace gives: the same indices, counts and
errors exactly, the same losses and gradients to float rounding."""

import copy

import pytest
import torch

from onejump.errors import NumericalError
from onejump.evaluation.scoring import _count_above, _max_argmax, require_finite
from onejump.lenses.jumps import JumpBank
from onejump.training.objectives import low_rank_mse, mse_loss


@pytest.mark.parametrize("V", [1, 7, 63, 64, 65, 1000, 4096])
def test_block_argmax_is_max_with_its_first_index(V):
    g = torch.Generator().manual_seed(V)
    for trial in range(12):
        x = torch.randn(6, V, generator=g)
        if trial % 3 == 0:
            x = x.round()  # many ties
        if trial % 4 == 0:
            x[1] = 2.0  # a row tied everywhere
        if V > 3 and trial % 5 == 0:
            x[2, -1] = x[3, V // 2] = x[3, -1] = 99.0  # the maximum in the tail block, and twice
        want = x.max(1)
        got = _max_argmax(x)
        assert torch.equal(got[0], want.values) and torch.equal(got[1], want.indices)


def test_count_above_is_the_boolean_count():
    x = torch.randn(5, 777).round()
    level = x[:, 3:4]
    assert torch.equal(_count_above(x, level, torch.empty_like(x)), (x > level).sum(1).float())


def test_require_finite_names_the_bad_value_and_passes_an_overflowing_sum():
    h = torch.ones(4, 3, 8)
    require_finite(torch.full((4, 3, 8), 3e38), range(4))  # the sum overflows; every value is finite
    h[2, 1, 5] = float("nan")
    with pytest.raises(NumericalError, match="level 1, sample row 12"):
        require_finite(h, [10, 11, 12, 13])


@pytest.mark.parametrize("J,N,training", [(6, 40, True), (6, 40, False), (1, 90, True)])
def test_low_rank_mse_is_the_forward_mse(J, N, training):
    H = 32
    bank = JumpBank(J, H, 3, seed=2)
    with torch.no_grad():
        bank.bn_weight.uniform_(0.5, 1.5)
        bank.bn_bias.normal_()
        bank.running_mean.normal_()
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(N, J, H, generator=g) * 3 + 1, torch.randn(N, H, generator=g) * 5
    ref_bank, new_bank = copy.deepcopy(bank).train(training), copy.deepcopy(bank).train(training)
    ref = (ref_bank(x) - t.unsqueeze(1)).pow(2).sum(-1).mean(0)
    new = low_rank_mse(new_bank, x, t)
    torch.testing.assert_close(new, ref, rtol=1e-5, atol=0)
    ref.sum().backward()
    new.sum().backward()
    for (name, a), (_, b) in zip(ref_bank.named_parameters(), new_bank.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5 * float(a.grad.abs().max()), msg=name)
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(new_bank, name), getattr(ref_bank, name), rtol=1e-5, atol=1e-6)


def test_mse_loss_keeps_the_forward_for_residual_banks():
    bank = JumpBank(2, 16, 2, residual=True)
    x, t = torch.randn(8, 2, 16), torch.randn(8, 16)
    torch.testing.assert_close(mse_loss(bank, x, t, None), (bank(x) - t.unsqueeze(1)).pow(2).sum(-1).mean(0))

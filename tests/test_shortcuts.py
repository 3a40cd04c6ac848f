import json
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from onejump.errors import NumericalError, ShortcutError
from onejump.lenses.files import CONFIG_NAME, WEIGHTS_NAME, load_shortcuts
from onejump.lenses.jtc import LinearJTC
from onejump.lenses.jumps import JumpBank, default_rank, jump_parameter_count

from .legacy_files import save_shortcuts
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
    with pytest.raises(ShortcutError, match="rank"):
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
    with pytest.raises(ShortcutError):
        bank(h[:, :2])
    with pytest.raises(ShortcutError, match="jump index"):
        bank.apply(h[:, 0], 3)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(1, 40), st.floats(0.01, 100.0))
def test_fold_equals_unfolded(seed, J, H, scale):
    r = int(torch.randint(1, H + 1, (1,), generator=torch.Generator().manual_seed(seed)))
    bank = random_bank(J, H, r, seed=seed % 1000)
    h = torch.randn(7, H, generator=torch.Generator().manual_seed(seed)) * scale
    for j in range(J):
        folded = bank.fold(j)
        ref = bank.apply(h, j).detach()
        tol = 1e-4 * (1 + ref.abs().max())
        torch.testing.assert_close(folded(h), ref, atol=float(tol), rtol=1e-4)
        torch.testing.assert_close(folded.project(h), bank.project(h, j).detach(), atol=float(tol), rtol=1e-4)


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
    with pytest.raises(ShortcutError):
        jtc(x[:, 0].float(), K)


# ---- files ---------------------------------------------------------------------------------------


def saved_bank(tmp_path, **kw):
    bank = random_bank(3, 12, 2, seed=4)
    args = dict(kind="nnjtc", model="tiny", fingerprint="abc123", levels=[0, 1, 2], rank=2)
    args.update(kw)
    return bank, save_shortcuts(tmp_path / "sc", bank, **args)


def test_save_load_roundtrip(tmp_path):
    bank, folder = saved_bank(tmp_path, chosen_jump=1, extra={"note": "x"})
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    loaded, cfg = load_shortcuts(folder, fingerprint="abc123")
    assert cfg["kind"] == "nnjtc" and cfg["rank"] == 2 and cfg["chosen_jump"] == 1 and cfg["extra"] == {"note": "x"}
    for k, v in bank.tensors().items():
        assert torch.equal(v, loaded.tensors()[k])
    assert not loaded.training
    # the JSON file itself is accepted too
    load_shortcuts(folder / CONFIG_NAME)


def test_jtc_roundtrip(tmp_path):
    jtc = LinearJTC(torch.randn(3, 7, 6))
    save_shortcuts(tmp_path / "j", jtc, kind="jtc", model="m", fingerprint="f", levels=[0, 1, 2], rank=None)
    loaded, cfg = load_shortcuts(tmp_path / "j")
    assert cfg["kind"] == "jtc" and torch.equal(loaded.W, jtc.W)


def test_pickle_files_are_refused(tmp_path):
    bank = JumpBank(1, 4, 1)
    torch.save(bank.state_dict(), tmp_path / "jumps.pt")
    with pytest.raises(ShortcutError, match="pickle"):
        load_shortcuts(tmp_path / "jumps.pt")
    (tmp_path / "weights.bin").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ShortcutError, match="pickle"):
        load_shortcuts(tmp_path / "weights.bin")
    # pickle bytes under an innocent name
    (tmp_path / "sneaky.json").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ShortcutError, match="pickle"):
        load_shortcuts(tmp_path / "sneaky.json")
    with pytest.raises(ShortcutError, match="pickle"):
        save_shortcuts(tmp_path / "out.pt", bank, kind="joint", model="m", fingerprint="f", levels=[-1], rank=1)
    with pytest.raises(ShortcutError, match="not found"):
        load_shortcuts(tmp_path / "missing")


def _edit_config(folder, **changes):
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    cfg.update(changes)
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))


def test_other_model_is_refused(tmp_path):
    _, folder = saved_bank(tmp_path)
    with pytest.raises(ShortcutError, match="another model"):
        load_shortcuts(folder, fingerprint="ffff0000")


def test_outside_file_is_refused(tmp_path):
    _, folder = saved_bank(tmp_path)
    (tmp_path / "evil.safetensors").write_bytes((folder / WEIGHTS_NAME).read_bytes())
    _edit_config(folder, weights="../evil.safetensors")
    with pytest.raises(ShortcutError, match="outside"):
        load_shortcuts(folder)


def test_rank_and_shape_mismatch_are_refused(tmp_path):
    _, folder = saved_bank(tmp_path)
    _edit_config(folder, rank=3)
    with pytest.raises(ShortcutError, match="rank"):
        load_shortcuts(folder)
    _edit_config(folder, rank=2, hidden_size=13)
    with pytest.raises(ShortcutError, match="shape"):
        load_shortcuts(folder)
    _edit_config(folder, hidden_size=12, num_jumps=2, levels=[0, 1])
    with pytest.raises(ShortcutError, match="shape"):
        load_shortcuts(folder)


def test_dtype_corruption_and_nan_are_refused(tmp_path):
    bank, folder = saved_bank(tmp_path)
    save_file({k: v.half() for k, v in bank.tensors().items()}, str(folder / WEIGHTS_NAME))
    _edit_config(folder, sha256=None)
    with pytest.raises(ShortcutError, match="dtype"):
        load_shortcuts(folder)
    bank, folder = saved_bank(tmp_path)
    data = bytearray((folder / WEIGHTS_NAME).read_bytes())
    data[-3] ^= 0xFF
    (folder / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(ShortcutError, match="corrupt"):
        load_shortcuts(folder)
    tensors = bank.tensors()
    tensors["A"][0, 0, 0] = float("nan")
    save_file(tensors, str(folder / WEIGHTS_NAME))
    _edit_config(folder, sha256=None)
    with pytest.raises(NumericalError):
        load_shortcuts(folder)
    with torch.no_grad():
        bank.A[0, 0, 0] = float("inf")
    with pytest.raises(NumericalError):
        save_shortcuts(tmp_path / "x", bank, kind="nnjtc", model="m", fingerprint="f", levels=[0, 1, 2], rank=2)
    (folder / CONFIG_NAME).write_text("{oops")
    with pytest.raises(ShortcutError, match="JSON"):
        load_shortcuts(folder)


def test_save_checks_arguments(tmp_path):
    bank = JumpBank(3, 12, 2)
    with pytest.raises(ShortcutError, match="rank"):
        save_shortcuts(tmp_path / "a", bank, kind="nnjtc", model="m", fingerprint="f", levels=[0, 1, 2], rank=3)
    with pytest.raises(ShortcutError, match="kind"):
        save_shortcuts(tmp_path / "a", bank, kind="magic", model="m", fingerprint="f", levels=[0, 1, 2], rank=2)
    with pytest.raises(ShortcutError, match="exactly one"):
        save_shortcuts(tmp_path / "a", bank, kind="ojfa", model="m", fingerprint="f", levels=[0, 1, 2], rank=2)


def test_residual_flag_must_be_boolean(tmp_path):
    _, folder = saved_bank(tmp_path)
    _edit_config(folder, residual="yes")
    with pytest.raises(ShortcutError, match="residual"):
        load_shortcuts(folder)
    _edit_config(folder, residual=True)
    assert load_shortcuts(folder).module.residual

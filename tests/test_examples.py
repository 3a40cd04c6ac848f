"""The examples run: examples/quickstart.py end to end on a tiny model and a lens saved for it."""

import runpy
from pathlib import Path

import pytest

from onejump.lenses import OneJump
from onejump.lenses.jumps import JumpBank
from onejump.model.loading import load_model

EXAMPLES = Path(__file__).parents[1] / "examples"


def test_quickstart_runs_on_a_tiny_model(tiny_dir, tmp_path, monkeypatch, capsys):
    lm = load_model(str(tiny_dir))
    bank = JumpBank(1, lm.hidden_size, 4, levels=[-1], residual=True, seed=0).eval()
    OneJump(lm, bank, trained_at=-1).save_pretrained(tmp_path / "lens")
    monkeypatch.setenv("ONEJUMP_MODEL", str(tiny_dir))
    monkeypatch.setenv("ONEJUMP_LENS", str(tmp_path / "lens"))
    monkeypatch.setenv("ONEJUMP_OUT", str(tmp_path / "out"))
    runpy.run_path(str(EXAMPLES / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert (tmp_path / "out" / "trajectory.png").stat().st_size > 0
    assert "identical to plain greedy: True" in out
    assert out.count("\n") > lm.num_blocks  # the comparison table has a row per level


@pytest.mark.real
def test_quickstart_runs_on_the_shipped_lens(tmp_path, monkeypatch, capsys):
    from onejump.lenses import shipped as shipped_lenses

    if not any(s.model == "smollm2-135m" for s in shipped_lenses.shipped()):
        pytest.skip("no lens ships for smollm2-135m")
    monkeypatch.setenv("ONEJUMP_OUT", str(tmp_path / "out"))
    runpy.run_path(str(EXAMPLES / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "its card: precision@1" in out and "identical to plain greedy: True" in out

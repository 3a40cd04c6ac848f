"""Training saves its state as it goes; an interrupted training resumes to the uninterrupted result."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from onejump.training.checkpoint import Checkpoint
from onejump.training.config import TrainConfig
from onejump.training.fit import train_joint, train_jumps
from onejump.training.objectives import mse_loss

from .test_training import linear_store

CFG = dict(rank=2, max_epochs=7, patience=7, batch_size=16, lr=1e-2)


class Stop(KeyboardInterrupt):
    pass


def _stopping_loss(after: int):
    calls = [0]

    def loss(bank, inp, tgt, rows, *levels):
        if torch.is_grad_enabled():
            calls[0] += 1
            if calls[0] > after:
                raise Stop
        return mse_loss(bank, inp, tgt, rows, *levels)

    return loss


def _epochs(path: Path) -> int:
    with safe_open(str(path), framework="pt") as fh:
        return json.loads(fh.metadata()["onejump_checkpoint_state"])["epochs"]


@pytest.mark.parametrize("trainer", [train_jumps, train_joint])
@pytest.mark.parametrize("after", [3, 11, 24])
def test_interrupted_training_resumes_to_the_same_result(tmp_path, trainer, after):
    store = linear_store()
    config = TrainConfig(**CFG)
    ref, ref_hist = trainer(store, config, progress=False)
    ckpt = tmp_path / "jumps.ckpt"
    with pytest.raises(Stop):
        trainer(store, config, progress=False, loss_fn=_stopping_loss(after), checkpoint=ckpt)
    assert ckpt.is_file() == (after >= 5)  # 4 training batches an epoch (after the held-out rows)
    got, hist = trainer(store, config, progress=False, checkpoint=ckpt)
    for k, v in ref.tensors().items():
        assert torch.equal(v, got.tensors()[k]), k
    assert hist.val_loss == ref_hist.val_loss and hist.best_epoch == ref_hist.best_epoch
    assert not ckpt.exists()  # removed once training ends


def test_checkpoint_of_another_training_is_ignored(tmp_path):
    store = linear_store()
    ckpt = tmp_path / "jumps.ckpt"
    with pytest.raises(Stop):
        train_jumps(store, TrainConfig(**CFG), progress=False, loss_fn=_stopping_loss(10), checkpoint=ckpt)
    other = TrainConfig(**{**CFG, "lr": 5e-3})
    ref, _ = train_jumps(store, other, progress=False)
    got, _ = train_jumps(store, other, progress=False, checkpoint=ckpt)
    assert all(torch.equal(v, got.tensors()[k]) for k, v in ref.tensors().items())
    ckpt.write_bytes(b"not a safetensors file")
    assert Checkpoint(ckpt, "any").load() is None


SCRIPT = textwrap.dedent("""
    import sys, time
    import torch
    from safetensors.torch import save_file
    from onejump.training.config import TrainConfig
    from onejump.training.fit import train_jumps
    from onejump.training.objectives import mse_loss
    from tests.test_training import linear_store

    def slow(bank, inp, tgt, rows):
        time.sleep(0.03)
        return mse_loss(bank, inp, tgt, rows)

    torch.set_num_threads(1)
    bank, hist = train_jumps(linear_store(), TrainConfig(rank=2, max_epochs=12, patience=12, batch_size=16, lr=1e-2),
                             progress=False, loss_fn=slow, checkpoint=sys.argv[1] if sys.argv[1] != "-" else None)
    save_file(bank.tensors(), sys.argv[2])
""")


def test_sigkill_at_several_points_then_rerun_is_identical(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)]), "OMP_NUM_THREADS": "1"}

    def cmd(ckpt, out):
        return [sys.executable, str(script), str(ckpt), str(out)]

    assert subprocess.run(cmd("-", tmp_path / "ref.safetensors"), env=env).returncode == 0
    ckpt, out = tmp_path / "run.ckpt", tmp_path / "got.safetensors"
    seen = []
    for target in (1, 4, 8):
        proc = subprocess.Popen(cmd(ckpt, out), env=env)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if ckpt.is_file():
                try:
                    if _epochs(ckpt) >= target:
                        break
                except Exception:  # noqa: BLE001 - caught between write and rename
                    pass
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen.append(_epochs(ckpt))
    assert seen == sorted(seen) and seen[0] >= 1 and not out.exists()
    assert subprocess.run(cmd(ckpt, out), env=env).returncode == 0
    ref, got = load_file(tmp_path / "ref.safetensors"), load_file(out)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert not ckpt.exists()


def test_interrupted_tuned_lens_resumes_to_the_same_result(tmp_path):
    from onejump.extract import extract
    from onejump.model.loading import from_pretrained_model
    from onejump.training.tuned import TunedTrainConfig, train_tuned_lens

    from .test_selection import random_sentences
    from .tiny import tiny_model, tiny_tokenizer

    lm = from_pretrained_model(tiny_model("llama"), tiny_tokenizer(), name="tiny-llama")
    n = 60
    store = extract(lm, random_sentences(n, seed=3), tmp_path / "s", splits=[0] * (n - 10) + [1] * 10, seed=0,
                    shard_size=16, progress=False)
    # 50 train rows in batches of 8: an epoch is 6 steps, so checkpoints (every 4) fall inside epochs
    config = TunedTrainConfig(batch_size=8, num_steps=22, eval_every=5, patience=50, kl_negatives=16, init="zero",
                              buffer_samples=24)
    ref, ref_hist = train_tuned_lens(store, lm, config, progress=False)
    ckpt = tmp_path / "tuned.ckpt"
    import onejump.training.tuned as tuned_mod

    real_step = tuned_mod._step
    def stopping_after(stop_at):
        calls = [0]

        def stopping(*args, **kwargs):
            calls[0] += 1
            if calls[0] > stop_at:
                raise Stop
            return real_step(*args, **kwargs)

        return stopping

    for stop_at in (5, 13):
        tuned_mod._step = stopping_after(stop_at)
        try:
            with pytest.raises(Stop):
                train_tuned_lens(store, lm, config, progress=False, checkpoint=ckpt, checkpoint_every=4)
        finally:
            tuned_mod._step = real_step
        assert ckpt.is_file()
    got, hist = train_tuned_lens(store, lm, config, progress=False, checkpoint=ckpt, checkpoint_every=4)
    assert torch.equal(got.weight, ref.weight) and torch.equal(got.bias, ref.bias)
    same = json.dumps([hist.val_kl, hist.train_kl, hist.steps, hist.best_step])  # NaN where no step was taken yet
    assert same == json.dumps([ref_hist.val_kl, ref_hist.train_kl, ref_hist.steps, ref_hist.best_step])
    assert not ckpt.exists()


def test_the_interrupt_message_is_the_running_steps():
    from onejump.interrupts import current, on_interrupt

    assert current("the command's") == "the command's"
    with on_interrupt("train jumps: nothing kept yet") as kept:
        assert current("the lenses so far are kept") == "train jumps: nothing kept yet; the lenses so far are kept"
        kept.say("train jumps: 2 finished epochs kept in P")
        with on_interrupt("the corpus was still being read, nothing was written yet", alone=True):
            assert current("finished shards are kept") == "the corpus was still being read, nothing was written yet"
        assert current("x").startswith("train jumps: 2 finished epochs kept in P; x")
    assert current("the command's") == "the command's"


def test_training_interrupt_message_names_the_checkpoint(tmp_path):
    from onejump.interrupts import current

    store = linear_store()
    seen = []

    def loss(bank, inp, tgt, rows, *levels):
        if torch.is_grad_enabled():
            seen.append(current("cli"))
        return mse_loss(bank, inp, tgt, rows, *levels)

    train_jumps(store, TrainConfig(**{**CFG, "max_epochs": 2}), progress=False, loss_fn=loss,
                checkpoint=tmp_path / "c.ckpt")
    assert seen[0] == "train jumps: nothing kept yet (its state is saved after every epoch); cli"
    assert seen[-1] == f"train jumps: 1 finished epoch kept in {tmp_path / 'c.ckpt'}; cli"

"""Every model type in transformers' causal-LM auto mapping, built tiny, through the adapter and its probe.

Each row of docs/architectures.md is checked here against the installed transformers: a type the
doc calls verified must build, pass the probe and reproduce its logits through the head on an input
the probe never saw; a refused one must be refused on one line naming it; a skipped one skips.
"""

from pathlib import Path

import pytest
import torch

from onejump.cli import main
from onejump.errors import ArchitectureMismatchError, UnsupportedArchitectureError
from onejump.model.adapter import ArchitectureAdapter
from onejump.model.architectures import build, causal_lm_types, read_statuses
from onejump.model.fingerprint import weights_fingerprint

from .tiny import tiny_model, tiny_tokenizer

DOC = Path(__file__).resolve().parents[1] / "docs" / "architectures.md"
RECORDED = read_statuses(DOC)
TYPES = causal_lm_types()


def _levels_and_logits(model, adapter, ids):
    caps = {}
    handles = adapter.level_hooks(lambda k, h: caps.__setitem__(k, h.detach().clone()))
    try:
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return caps, out.logits


@pytest.mark.parametrize("model_type", TYPES)
def test_every_causal_lm_type(model_type):
    recorded = RECORDED.get(model_type)
    model, skipped = build(model_type)
    if skipped is not None:
        assert recorded in (None, "skipped"), f"docs/architectures.md says {recorded}: {skipped.detail}"
        pytest.skip(skipped.detail)
    try:
        adapter = ArchitectureAdapter.from_model(model)
    except UnsupportedArchitectureError as exc:
        message = str(exc)
        assert "\n" not in message and f"'{model.config.model_type}'" in message
        assert recorded in (None, "refused"), f"docs/architectures.md says {recorded}, now: {message}"
        return
    assert recorded in (None, "verified"), f"docs/architectures.md says {recorded}, now verified"
    # another input than the probe's: two rows, nine positions
    vocab = min(adapter.vocab_size, model.get_input_embeddings().weight.shape[0])
    ids = torch.randint(1, vocab, (2, 9), generator=torch.Generator().manual_seed(1))
    caps, logits = _levels_and_logits(model, adapter, ids)
    assert sorted(caps) == list(range(adapter.num_blocks + 1))
    assert all(h.shape == (2, 9, adapter.hidden_size) for h in caps.values())
    torch.testing.assert_close(adapter.head(caps[adapter.num_blocks]), logits, rtol=1e-5, atol=1e-5)


def test_doc_covers_the_mapping_and_verifies_at_least_100():
    assert set(RECORDED) == set(TYPES), "regenerate: python -m onejump.model.architectures --out docs/architectures.md"
    assert sum(status == "verified" for status in RECORDED.values()) >= 100


def _softcapped_llama():
    """A Llama whose config names a soft-cap the model never applies: the adapter's head would."""
    model = tiny_model("llama")
    model.config.final_logit_softcapping = 2.0
    return model


def test_a_head_that_differs_is_refused_on_one_line():
    with pytest.raises(ArchitectureMismatchError) as info:
        ArchitectureAdapter.from_model(_softcapped_llama())
    message = str(info.value)
    assert "\n" not in message and "'llama'" in message and "logits" in message


def test_probe_changes_nothing_the_model_computes():
    model = tiny_model("gemma2")
    model.train()
    model.model.layers[1].eval()  # a mixed set of modes is restored as it was
    modes = [m.training for m in model.modules()]
    before = weights_fingerprint(model)
    with torch.no_grad():  # transformers installs its own output-recording hooks on first use
        model(input_ids=torch.ones(1, 2, dtype=torch.long), output_hidden_states=True)
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    ids = torch.randint(1, 90, (1, 8))
    ArchitectureAdapter.from_model(model)
    assert [m.training for m in model.modules()] == modes
    assert weights_fingerprint(model) == before
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == hooks
    model.eval()
    plain = ArchitectureAdapter.from_model(model, verify=False)
    caps, logits = _levels_and_logits(model, plain, ids)
    checked = ArchitectureAdapter.from_model(model)
    again, logits_again = _levels_and_logits(model, checked, ids)
    assert all(torch.equal(caps[k], again[k]) for k in caps) and torch.equal(logits, logits_again)


def test_refused_model_folder_is_one_line_through_the_cli(capsys, tmp_path, corpus):
    folder = tmp_path / "refused"
    _softcapped_llama().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    capsys.readouterr()  # saving's progress bars
    code = main(["-q", "extract", "--model", str(folder), "--corpus", str(corpus), "--n-train", "40", "--n-test", "20",
                 "--out", str(tmp_path / "store"), "--device", "cpu"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("onejump extract: error:"), err
    assert "architecture 'llama'" in err and "refused" in err and "logits" in err

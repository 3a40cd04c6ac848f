import pytest
import torch
from torch import nn

from onejump.errors import ModelLoadError, UnsupportedArchitectureError
from onejump.model.adapter import ArchitectureAdapter, apply_norm_params
from onejump.model.fingerprint import weights_fingerprint
from onejump.model.loading import from_pretrained_model, load_model

from .tiny import ARCHS, tiny_model, tiny_tokenizer


def _capture(model, ids):
    adapter = ArchitectureAdapter.from_model(model)
    caps = {}
    handles = adapter.level_hooks(lambda k, h: caps.__setitem__(k, h.detach().clone()))
    try:
        out = model(ids, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return adapter, caps, out


@pytest.mark.parametrize("arch", ARCHS)
def test_head_of_last_level_equals_model_logits(arch):
    model = tiny_model(arch)
    ids = torch.randint(4, 90, (2, 11))
    adapter, caps, out = _capture(model, ids)
    K = model.config.num_hidden_layers
    assert adapter.num_blocks == K
    assert sorted(caps) == list(range(K + 1))
    torch.testing.assert_close(adapter.head(caps[K]), out.logits, rtol=1e-5, atol=1e-5)
    # level 0 is what enters block 1 = transformers' hidden_states[0] (after any embedding scaling)
    torch.testing.assert_close(caps[0], out.hidden_states[0])
    # intermediate levels agree with output_hidden_states
    for k in range(1, K):
        torch.testing.assert_close(caps[k], out.hidden_states[k])


@pytest.mark.parametrize("arch", ARCHS)
def test_norm_params_reproduce_final_norm(arch):
    model = tiny_model(arch)
    adapter = ArchitectureAdapter.from_model(model)
    params = adapter.norm_params()
    x = torch.randn(5, adapter.hidden_size) * 4
    torch.testing.assert_close(apply_norm_params(params, x), adapter.apply_norm(x), rtol=1e-4, atol=1e-4)
    expected = {"gpt2": "layernorm", "gpt_neox": "layernorm", "opt": "layernorm"}.get(arch, "rmsnorm")
    assert params.kind == expected


def test_softcap_is_part_of_head():
    model = tiny_model("gemma2")
    adapter = ArchitectureAdapter.from_model(model)
    assert adapter.logit_softcap == 5.0
    h = torch.randn(3, adapter.hidden_size) * 50
    assert adapter.head(h).abs().max() <= 5.0


def test_unknown_architecture_is_a_clear_error():
    class Weird(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "weirdnet"})()

    with pytest.raises(UnsupportedArchitectureError, match="weirdnet"):
        ArchitectureAdapter.from_model(Weird())


def test_missing_part_is_named():
    model = tiny_model("llama")
    model.lm_head = None
    with pytest.raises(UnsupportedArchitectureError, match="unembedding"):
        ArchitectureAdapter.from_model(model)


def test_fingerprint_is_stable_and_distinguishes_models():
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    assert weights_fingerprint(a) == weights_fingerprint(tiny_model("llama", seed=0))
    assert weights_fingerprint(a) != weights_fingerprint(b)
    assert weights_fingerprint(a) == weights_fingerprint(a.to(torch.bfloat16).float())


def test_local_folder_round_trip(tmp_path):
    model, tok = tiny_model("qwen2"), tiny_tokenizer()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    lm = load_model(str(tmp_path / "m"))
    assert lm.num_blocks == 3 and lm.hidden_size == 64
    assert lm.fingerprint == from_pretrained_model(model, tok).fingerprint


@pytest.mark.parametrize("name", ["no-such-alias", "/no/such/dir", "./missing.gguf"])
def test_bad_model_names(name):
    with pytest.raises(ModelLoadError):
        load_model(name)


def test_bad_dtype_and_device():
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model("smollm2-135m", dtype="int3")
    with pytest.raises(ModelLoadError, match="device"):
        load_model("smollm2-135m", device="tpu9")

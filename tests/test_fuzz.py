"""Bounded fuzzing of the store reader: random bytes in place of its files give StoreError, nothing else."""

import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onejump.errors import StoreError
from onejump.extract import extract
from onejump.model.loading import from_pretrained_model
from onejump.store import HiddenStateStore

from .test_extract import SENTENCES
from .tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def good_store(tmp_path_factory):
    lm = from_pretrained_model(tiny_model("llama"), tiny_tokenizer(), name="tiny")
    path = tmp_path_factory.mktemp("fuzz") / "s"
    extract(lm, SENTENCES[:8], path, seed=0, progress=False)
    return path


def _copy(src, dst):
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048), target=st.sampled_from(["manifest.json", "shard-00000.safetensors"]),
       keep_size=st.booleans())
def test_random_bytes_are_refused(good_store, tmp_path, data, target, keep_size):
    store = _copy(good_store, tmp_path / "fz")
    path = store / target
    original = path.read_bytes()
    if keep_size and target.endswith(".safetensors"):
        data = (data * (len(original) // max(1, len(data)) + 1))[: len(original)] if data else original
    path.write_bytes(data)
    if data == original:  # hypothesis may hand back the file itself: it must still open
        assert HiddenStateStore.open(store).num_samples == 8
        return
    with pytest.raises(StoreError):
        HiddenStateStore.open(store)
    with pytest.raises(StoreError):  # opened without hashing, the first read still refuses it
        HiddenStateStore.open(store, verify=False).hidden()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["num_levels", "hidden_size", "dtype", "shards", "num_samples", "format", "version"]),
       value=st.one_of(st.none(), st.integers(-5, 10**6), st.text(max_size=8), st.lists(st.integers(), max_size=3)))
def test_random_manifest_values_are_refused_or_consistent(good_store, tmp_path, key, value):
    store = _copy(good_store, tmp_path / "fm")
    manifest = json.loads((store / "manifest.json").read_text())
    manifest[key] = value
    (store / "manifest.json").write_text(json.dumps(manifest))
    try:
        opened = HiddenStateStore.open(store)
    except StoreError:
        return
    assert opened.hidden().shape[0] == opened.num_samples

"""Each lens shipped with onejump, re-measured: on a few hundred of its test sentences its precision@1 lies
within its card's interval (widened for the smaller sample), and it is refused for other weights."""

import pytest

from onejump.lenses import shipped as shipped_lenses
from onejump.lenses.card import interval_at, read_evaluation

SENTENCES = 300


def _installed(alias):
    from onejump.errors import ModelLoadError
    from onejump.model.loading import load_model

    try:
        return load_model(alias)
    except ModelLoadError as exc:
        pytest.skip(f"{alias} is not installed here: {exc}")


@pytest.mark.real
@pytest.mark.parametrize("shipped", shipped_lenses.shipped(), ids=lambda s: s.id)
def test_shipped_lenses_match_their_cards(shipped, tmp_path):
    from onejump.corpus import load_sentences, split_sentences
    from onejump.evaluation import evaluate
    from onejump.extract import extract
    from onejump.lenses import Lens

    lm = _installed(shipped.model)
    lens = Lens.from_pretrained(shipped.id, lm)
    ev = read_evaluation(shipped.config)
    sample = ev["sample"]
    split = split_sentences(load_sentences(sample["corpus"]), sample["n_train"], sample["n_test"],
                            seed=sample["seed"])
    texts = [s.text for s in split.test[:SENTENCES]]  # sentences the lens never trained on
    store = extract(lm, texts, tmp_path / "store", splits=[1] * len(texts), seed=1, progress=False)
    p1 = float(evaluate(store, {"lens": lens}, split="test", field_metrics=False, progress=False)
               .metric("lens", "precision@1").mean())
    low, high = interval_at(ev, len(texts))
    assert low <= p1 <= high, f"{shipped.id}: precision@1 {p1:.4f} outside the card's {low:.4f}..{high:.4f}"


@pytest.mark.real
@pytest.mark.parametrize("shipped", shipped_lenses.shipped(), ids=lambda s: s.id)
def test_shipped_lenses_refuse_other_weights(shipped):
    import torch

    from onejump.errors import LensFileError
    from onejump.lenses import Lens
    from onejump.model.loading import from_pretrained_model

    lm = _installed(shipped.model)
    alone = Lens.from_pretrained(shipped.model if shipped.name == shipped_lenses.DEFAULT_NAME else shipped.id)
    assert alone.lm.fingerprint == shipped.fingerprint  # the id alone loads the model too
    with torch.no_grad():
        lm.model.get_output_embeddings().weight[0, 0] += 1.0
    try:
        other = from_pretrained_model(lm.model, lm.tokenizer, name=shipped.model)
        assert other.fingerprint != shipped.fingerprint
        with pytest.raises(LensFileError, match="refused|another model"):
            Lens.from_pretrained(shipped.id, other)
    finally:
        with torch.no_grad():
            lm.model.get_output_embeddings().weight[0, 0] -= 1.0

"""Lens cards (README.md next to a lens), hub repositories holding several lenses, lenses shipped with the package."""

import json
import shutil

import pytest
import torch

from onejump.errors import ConfigError, LensFileError
from onejump.evaluation.card_entry import evaluation_card
from onejump.extract import extract
from onejump.lenses import Lens, LogitLens, OneJump
from onejump.lenses import shipped as shipped_lenses
from onejump.lenses.card import card_info, interval_at, read_evaluation
from onejump.lenses.hub import split_hub_source
from onejump.lenses.jumps import JumpBank
from onejump.model.loading import from_pretrained_model

from .test_selection import random_sentences
from .tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def lm():
    return from_pretrained_model(tiny_model("llama"), tiny_tokenizer(), name="tiny-llama")


@pytest.fixture(scope="module")
def store(lm, tmp_path_factory):
    n = 80
    return extract(lm, random_sentences(n, seed=5), tmp_path_factory.mktemp("cards") / "s",
                   splits=[0] * (n - 40) + [1] * 40, seed=0, shard_size=32, progress=False)


def jump(lm, seed=0):
    torch.manual_seed(seed)
    bank = JumpBank(1, lm.hidden_size, 4, levels=[-1], residual=True)
    with torch.no_grad():
        for p in bank.parameters():
            p.normal_(0, 0.1)
    return OneJump(lm, bank.eval(), trained_at=-1)


def header(text):
    assert text.startswith("---\n")
    return text.split("---\n")[1]


def test_card_written_with_what_is_known_and_nothing_else(lm, tmp_path):
    folder = jump(lm).save_pretrained(tmp_path / "j")
    text = (folder / "README.md").read_text()
    head = header(text)
    assert "library_name: onejump" in head and "onejump-jump" in head
    assert "base_model" not in head and "license" not in head and "datasets" not in head  # unknown: left out
    assert "## Evaluation" not in text and "## Reproduce" not in text and "## Recipe" not in text
    assert lm.fingerprint in text and "parameters held at inference" in text


def test_card_with_evaluation_recipe_and_command_round_trips(lm, store, tmp_path):
    from onejump.evaluation import evaluate

    lens = jump(lm)
    result = evaluate(store, {"jump": lens, "logit": LogitLens(lm)}, progress=False)
    ev = evaluation_card(result, "jump", n_boot=200)
    assert ev["sentences"] == 40 and len(ev["precision@1"]) == lm.num_blocks and len(ev["kl"]) == lm.num_blocks
    m = ev["precision@1_mean"]
    assert m["low"] <= m["mean"] <= m["high"]
    assert m["mean"] == pytest.approx(float(result.metric("jump", "precision@1").mean()), abs=1e-4)
    info = {"base_model": "someone/tiny", "license": "mit", "datasets": "someone/text", "train_rows": 40,
            "recipe": {"objective": "kl", "rank": 4}, "command": "onejump run --preset best", "evaluation": ev}
    folder = lens.save_pretrained(tmp_path / "j", card=info)
    text = (folder / "README.md").read_text()
    head = header(text)
    for line in ("base_model: someone/tiny", "license: mit", "- someone/text"):
        assert line in head
    assert "onejump run --preset best" in text and "| objective" not in text and "- objective: kl" in text
    assert f"{m['mean']:.4f}" in text and f"| {lm.num_blocks - 1} |" in text
    back = Lens.from_pretrained(folder, lm)
    assert back.extra["card"]["evaluation"] == ev  # the card's facts travel in config.json
    assert read_evaluation(json.loads((folder / "config.json").read_text())) == ev
    with pytest.raises(ConfigError, match="unknown card field"):
        card_info(lens, {"accuracy": 1.0})
    with pytest.raises(ConfigError, match="not in this evaluation"):
        evaluation_card(result, "tuned")


def test_interval_widens_for_fewer_sentences():
    ev = {"sentences": 3000, "precision@1_mean": {"mean": 0.5, "low": 0.48, "high": 0.52}}
    low, high = interval_at(ev, 300)
    assert high - low == pytest.approx(0.04 * (3000 / 300 + 1) ** 0.5)
    assert interval_at(ev, 3) == (0.0, 1.0)
    with pytest.raises(ConfigError):
        interval_at(ev, 0)


def test_hub_sources_with_subfolders():
    assert split_hub_source("me/lenses") == ("me/lenses", None)
    assert split_hub_source("me/lenses/smollm2/best") == ("me/lenses", "smollm2/best")
    for bad in ("lenses", "me/../x", "me/lenses/../../etc", "me//x"):
        assert split_hub_source(bad) is None


def test_one_hub_repository_holds_several_lenses(lm, tmp_path, monkeypatch):
    import huggingface_hub

    hub = tmp_path / "hub"
    seen = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            (hub / repo_id).mkdir(parents=True, exist_ok=True)

        def upload_folder(self, folder_path, repo_id, path_in_repo=None, **kwargs):
            shutil.copytree(folder_path, hub / repo_id / (path_in_repo or ""), dirs_exist_ok=True)
            return "ok"

    def fake_download(repo_id, revision=None, cache_dir=None, allow_patterns=None):
        seen.append(allow_patterns)
        if not (hub / repo_id).is_dir():
            raise huggingface_hub.errors.RepositoryNotFoundError(f"404 Client Error: {repo_id} not found")
        return str(hub / repo_id)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    a, b = jump(lm, 0), jump(lm, 1)
    a.push_to_hub("me/tiny-lenses", subfolder="jump-a", card={"command": "made by a test"})
    b.push_to_hub("me/tiny-lenses", subfolder="jump-b")
    assert "made by a test" in (hub / "me" / "tiny-lenses" / "jump-a" / "README.md").read_text()
    h = torch.randn(3, lm.hidden_size)
    for name, lens in (("jump-a", a), ("jump-b", b)):
        back = Lens.from_pretrained(f"me/tiny-lenses/{name}", lm)
        assert torch.equal(back(h, 1), lens(h, 1))
    assert seen == [["jump-a/*"], ["jump-b/*"]]  # only the named folder is fetched
    assert torch.equal(Lens.from_pretrained("me/tiny-lenses", lm, subfolder="jump-b")(h, 0), b(h, 0))
    with pytest.raises(LensFileError, match="has no folder 'jump-c'"):
        Lens.from_pretrained("me/tiny-lenses/jump-c", lm)
    with pytest.raises(LensFileError, match="names a subfolder already"):
        Lens.from_pretrained("me/tiny-lenses/jump-a", lm, subfolder="jump-b")


def test_shipped_lenses_by_short_id(lm, tmp_path, monkeypatch):
    root = tmp_path / "pretrained"
    lens = jump(lm)
    lens.save_pretrained(root / "tiny-llama" / "best")
    jump(lm, 2).save_pretrained(root / "tiny-llama" / "other")
    monkeypatch.setattr(shipped_lenses, "ROOT", root)
    assert [s.id for s in shipped_lenses.shipped(root)] == ["tiny-llama/best", "tiny-llama/other"]
    h = torch.randn(2, lm.hidden_size)
    for source in ("pretrained", "tiny-llama", "tiny-llama/best"):
        assert torch.equal(Lens.from_pretrained(source, lm)(h, 1), lens(h, 1))
    assert torch.equal(Lens.from_pretrained("tiny-llama/other", lm)(h, 1), jump(lm, 2)(h, 1))
    other = from_pretrained_model(tiny_model("llama", seed=1), tiny_tokenizer(), name="tiny-llama")
    with pytest.raises(LensFileError, match="it is refused"):
        Lens.from_pretrained("tiny-llama", other)
    with pytest.raises(LensFileError, match="no shipped lens 'tiny-llama/nope'"):
        Lens.from_pretrained("tiny-llama/nope", lm)
    stranger = from_pretrained_model(tiny_model("qwen2"), tiny_tokenizer(), name="tiny-qwen")
    with pytest.raises(LensFileError, match="no lens ships for the model 'tiny-qwen'"):
        Lens.from_pretrained("pretrained", stranger)
    with pytest.raises(LensFileError, match="needs the model"):
        Lens.from_pretrained(str(tmp_path / "missing"))


def test_the_package_ships_its_lens_files():
    """Every shipped lens folder is complete, and pyproject's package data takes its files into the wheel."""
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["onejump.pretrained"]
    for s in shipped_lenses.shipped():
        for name in ("config.json", "weights.safetensors", "README.md"):
            path = s.path / name
            assert path.is_file(), path
            assert any(path.relative_to(shipped_lenses.ROOT).match(p) for p in patterns), (path, patterns)
        assert s.config["fingerprint"] and read_evaluation(s.config) is not None
        assert (s.path / "weights.safetensors").stat().st_size < 1_000_000


def test_lens_command_draws_the_shipped_lens(capsys, tiny_dir, tmp_path, monkeypatch):
    from onejump.cli.main import main
    from onejump.model.loading import load_model

    lm = load_model(str(tiny_dir))
    jump(lm).save_pretrained(tmp_path / "pretrained" / "tiny" / "best")
    monkeypatch.setattr(shipped_lenses, "ROOT", tmp_path / "pretrained")
    out = tmp_path / "grid.png"
    code = main(["--threads", "1", "lens", "--model", str(tiny_dir), "--lens", "pretrained", "--compare", "logit",
                 "--prompt", "The tower is", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert out.read_bytes()[:4] == b"\x89PNG" and "pretrained vs logit" in captured.out
    other = tmp_path / "other"
    from_pretrained_model(tiny_model("llama", seed=3), tiny_tokenizer(), name="x").model.save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    code = main(["--threads", "1", "lens", "--model", str(other), "--lens", "pretrained", "--prompt", "The tower",
                 "--out", str(tmp_path / "g2.png")])
    err = capsys.readouterr().err
    assert code != 0 and "no lens ships for the model" in err and "Traceback" not in err


def test_ship_a_lens_from_a_run_folder(tiny_dir, corpus, tmp_path):
    from onejump.cli.main import main
    from onejump.errors import StageError
    from onejump.experiment.ship import ship

    run = tmp_path / "run"
    assert main(["-q", "extract", "--model", str(tiny_dir), "--corpus", str(corpus), "--n-train", "40",
                 "--n-test", "20", "--out", str(run), "--device", "cpu"]) == 0
    assert main(["-q", "train", "--out", str(run), "--preset", "best", "--max-epochs", "1", "--no-jtc", "--no-tuned",
                 "--device", "cpu"]) == 0
    data = json.loads((run / "run.json").read_text())["data"]
    dest = ship(run, command="onejump run --preset best", note="a test lens", root=tmp_path / "shipped",
                progress=False)
    assert dest == tmp_path / "shipped" / tiny_dir.name / "best"  # a path's last part, never the path itself
    config = json.loads((dest / "config.json").read_text())
    ev = read_evaluation(config)
    assert ev["sentences"] == 20 and ev["sample"] == {k: data[k] for k in ("corpus", "n_train", "n_test", "seed")}
    card = config["extra"]["card"]
    assert card["train_rows"] == 40 and card["train_tokens"] > 40 and card["recipe"]["note"] == "a test lens"
    text = (dest / "README.md").read_text()
    assert "onejump run --preset best" in text and "training prefix tokens" in text and "a test lens" in text
    with pytest.raises(ConfigError, match="has no lens 'nope'"):
        ship(run, lens="nope", root=tmp_path / "shipped", progress=False)
    # a lens changed after its training stage recorded it is superseded: refused, never shipped
    config_file = run / "lenses" / "joint" / "config.json"
    config_file.write_text(config_file.read_text() + " ")
    with pytest.raises(StageError, match="superseded"):
        ship(run, root=tmp_path / "shipped", progress=False)

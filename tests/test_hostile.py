"""Hostile input: every case of issue-style probing, and property tests over option values and file contents.

Each bad input must end in one line (no traceback, no internal error, no Python name) and a non-zero exit
from the command line, or in one :class:`onejump.errors.OneJumpError` from the library.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onejump.cli import main
from onejump.errors import CorpusError, LensFileError, OneJumpError
from onejump.limits import OPTIONS, option_name

SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _run(capsys, *argv):
    code = main(["-q", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line(code, err):
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1, (code, err)
    assert "Traceback" not in err and "internal error" not in err, err
    return lines[0]


# ---- options: every numeric option has a range, checked when the command line is parsed ----------------------

_COMMAND_OF = {"max_new_tokens": "generate", "min_agreement": "generate", "lam": "generate", "draft_level": "generate",
               "draft_len": "generate", "draft_threshold": "generate", "tuned_steps": "train", "rank": "train",
               "lr": "train", "batch_size": "train", "max_epochs": "train", "patience": "train",
               "val_fraction": "train", "train_seed": "train"}


def _argv(dest, value):
    command = _COMMAND_OF.get(dest, "extract")
    extra = ["--prompt", "x"] if command == "generate" else []
    return [command, *extra, option_name(dest), value]


@SLOW
@given(dest=st.sampled_from(sorted(OPTIONS)), value=st.one_of(
    st.integers(min_value=-10**30, max_value=10**30), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "x", "1e400", "0x10", "nan", "-0", "1_000", " 3", "\u0663"])))
def test_numeric_options_out_of_range_are_one_line(capsys, dest, value):
    allowed = OPTIONS[dest]
    text = repr(value) if isinstance(value, float) else str(value)
    try:
        parsed = float(text) if not allowed.integer else int(text)
    except ValueError:
        parsed = None
    if parsed is not None and allowed.contains(parsed):
        return  # in range: parsing succeeds and the command goes on (not this test's business)
    code, _, err = _run(capsys, *_argv(dest, text))
    line = _one_line(code, err)
    assert option_name(dest) in line
    assert not re.search(r"\b[a-z]+_[a-z_]+\b", line.split(":", 2)[-1]), line  # no Python names


@pytest.mark.parametrize("argv, says", [
    (["--threads", "100000", "info"], "from 1 to"),
    (["--threads", "-1", "info"], "threads must be"),
    (["train", "--batch-size", "100000000"], "--batch-size"),
    (["extract", "--tokens-per-batch", "10000000000"], "--tokens-per-batch"),
    (["extract", "--shard-size", "99999999999"], "--shard-size"),
    (["extract", "--n-train", "1e9"], "not an integer"),
    (["extract", "--seed", str(2**64)], "--seed"),
    (["train", "--rank", "1000000"], "--rank"),
    (["train", "--tuned-steps", "99999999999"], "--tuned-steps"),
    (["generate", "--prompt", "x", "--draft-len", "100000"], "--draft-len"),
])
def test_sizes_refused_before_anything_is_allocated(capsys, argv, says):
    line = _one_line(*_run(capsys, *argv)[::2])
    assert says in line and "buffer_samples" not in line


def test_threads_from_the_environment_are_capped(monkeypatch):
    from onejump.limits import thread_cap
    from onejump.threads import choose_threads, usable_cpus

    monkeypatch.setenv("OMP_NUM_THREADS", "100000")
    n, _ = choose_threads("auto")
    assert n == thread_cap(usable_cpus())
    monkeypatch.setenv("ONEJUMP_THREADS", "100000")
    with pytest.raises(OneJumpError, match="from 1 to"):
        choose_threads()


# ---- sizes read from files ----------------------------------------------------------------------------------


def _tuned_folder(folder, config, params):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config) if not isinstance(config, bytes) else config.decode())
    torch.save(params, folder / "params.pt")
    return folder


@SLOW
@given(d_model=st.one_of(st.integers(-5, 10**12), st.floats(), st.text(max_size=5), st.none(), st.booleans()),
       layers=st.one_of(st.integers(-5, 10**12), st.floats(), st.none()))
def test_tuned_lens_config_sizes(tmp_path, d_model, layers):
    from onejump.lenses.tuned_format import read_tuned_lens_folder

    H, K = 4, 2
    params = {f"{k}.{n}": torch.zeros((H, H) if n == "weight" else (H,)) for k in range(K) for n in ("weight", "bias")}
    folder = _tuned_folder(tmp_path / "tl", {"d_model": d_model, "num_hidden_layers": layers}, params)
    if (d_model, layers) == (H, K) and not isinstance(d_model, bool) and not isinstance(layers, bool):
        read_tuned_lens_folder(folder)
        return
    with pytest.raises(LensFileError) as exc:
        read_tuned_lens_folder(folder)
    assert "\n" not in str(exc.value)


def test_tuned_lens_config_larger_than_its_params_is_refused_at_once(tmp_path):
    from onejump.lenses.tuned_format import read_tuned_lens_folder

    folder = _tuned_folder(tmp_path / "tl", {"d_model": 65536, "num_hidden_layers": 4096}, {"0.weight": torch.zeros(2)})
    with pytest.raises(LensFileError, match="holds only"):
        read_tuned_lens_folder(folder)
    for config, says in (({"d_model": 10_000_000, "num_hidden_layers": 2}, "d_model"),
                         ({"d_model": 64, "num_hidden_layers": 1_000_000_000}, "num_hidden_layers")):
        _tuned_folder(folder, config, {"0.weight": torch.zeros(2)})
        with pytest.raises(LensFileError, match=f"'{says}' must be an integer from 1 to"):
            read_tuned_lens_folder(folder)


def test_refused_params_pt_is_our_message(capsys, tiny_dir, tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo never",))

    folder = _tuned_folder(tmp_path / "tl", {"d_model": 64, "num_hidden_layers": 2}, {})
    torch.save({"0.weight": Evil()}, folder / "params.pt")
    line = _one_line(*_run(capsys, "lens", "--model", tiny_dir, "--prompt", "ab", "--lens", folder,
                           "--out", tmp_path / "o.png")[::2])
    assert "weights_only" not in line and "never unpickled" in line


@SLOW
@given(hidden=st.integers(-3, 10**9), jumps=st.integers(-3, 10**6), rank=st.integers(-3, 10**6))
def test_jump_file_sizes(tmp_path_factory, hidden, jumps, rank):
    """A lens file whose config claims other sizes than its tensors is refused before a bank is built."""
    from onejump.lenses import Lens, OneJump
    from onejump.lenses.jumps import JumpBank
    from onejump.model.loading import from_pretrained_model

    from .tiny import tiny_model, tiny_tokenizer

    lm = from_pretrained_model(tiny_model("llama"), tiny_tokenizer(), name="tiny-llama")
    folder = tmp_path_factory.mktemp("j")
    OneJump(lm, JumpBank(1, lm.hidden_size, 2, levels=[-1], seed=0), trained_at=-1).save(folder)
    cfg_path = folder / "config.json"
    config = json.loads(cfg_path.read_text())
    good = config["tensors"]["bank.A"]
    config["tensors"]["bank.A"] = [jumps, hidden, rank]
    cfg_path.write_text(json.dumps(config))
    if [jumps, hidden, rank] == good:
        return
    with pytest.raises(OneJumpError, match="the config says"):
        Lens.load(folder, lm)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    from .test_training import linear_store, sharded_store

    folder = tmp_path_factory.mktemp("store") / "s"
    folder.mkdir()
    sharded_store(folder, linear_store(n=12), 6)
    return folder


@SLOW
@given(field=st.sampled_from(["num_levels", "hidden_size", "num_samples"]),
       value=st.one_of(st.integers(-3, 10**15), st.floats(), st.text(max_size=4), st.none()))
def test_store_manifest_sizes(small_store, field, value):
    from onejump.errors import StoreError
    from onejump.store import HiddenStateStore

    folder = small_store
    manifest = json.loads((folder / "manifest.json").read_text())
    good = manifest[field]
    if value == good and type(value) is type(good):
        return
    manifest[field] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))
    try:
        with pytest.raises(StoreError):
            store = HiddenStateStore.open(folder)
            store.hidden()  # whatever opening accepted must not allocate what the manifest claims
    finally:
        manifest[field] = good
        (folder / "manifest.json").write_text(json.dumps(manifest))


# ---- corpora ------------------------------------------------------------------------------------------------


@SLOW
@given(lines=st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300), max_size=6))
def test_corpus_files_of_any_text(tmp_path, lines):
    from onejump.corpus.loaders import load_sentences

    for name, body in (("c.txt", "\n".join(lines)), ("c.jsonl", "\n".join(json.dumps({"text": t}) for t in lines))):
        path = tmp_path / name
        path.write_text(body, encoding="utf-8")
        try:
            got = load_sentences(path)
        except CorpusError as exc:
            assert "\n" not in str(exc)
        else:
            assert all(s.text and "\n" not in s.text for s in got)


# No double quotes, straight or curly: pysbd's own split of a parenthesis followed by a double quotation
# depends on text far away (a quotation earlier or later in the paragraph changes it: "(See above. And
# below.) \u201cA quote.\u201d" is one piece alone and two after an earlier \u201c...\u201d), so no window can
# reproduce it.
_PIECES = ["He said \u2018It rained. Then it stopped.\u2019 ", "Dr. Smith left at 5 p.m. on Monday. ",
           "(See above. And below.) ",
           "It cost $5.50 in 1999. ", "The U.S. team won! ", "Why? ",
           "She wrote e.g. this. ", "A plain sentence follows here. ", "Is it 3.14 or so? "]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.lists(st.integers(0, len(_PIECES) - 1), min_size=20, max_size=60))
def test_windowed_splitting_is_pysbds_split_of_the_whole(monkeypatch, order):
    """With a small window the paragraph crosses many windows; the sentences are still those of one call."""
    import onejump.corpus.cleaning as cleaning

    paragraph = "".join(_PIECES[i] for i in order).strip()
    whole = cleaning._segmenter().segment(paragraph)
    monkeypatch.setattr(cleaning, "_WINDOW", 200)
    monkeypatch.setattr(cleaning, "_MARGIN", 60)
    monkeypatch.setattr(cleaning, "_GROW_LIMIT", 1600)
    assert cleaning._segment(paragraph) == whole


def test_very_long_lines_and_records_are_read(tmp_path):
    """One line of thousands of sentences, and one record holding them (the windowed path)."""
    from onejump.corpus.loaders import load_sentences

    text = " ".join(f"Sentence number {i} says something about the weather." for i in range(3000))
    (tmp_path / "one.txt").write_text(text + "\n")
    (tmp_path / "one.jsonl").write_text(json.dumps({"text": text}) + "\n")
    for name in ("one.txt", "one.jsonl"):
        got = load_sentences(tmp_path / name)
        assert len(got) == 3000 and got[1234].text == "Sentence number 1234 says something about the weather."
    nested = "(" * 200_000 + "A real sentence is here." + ")" * 200_000
    (tmp_path / "nested.txt").write_text(nested + "\n")
    with pytest.raises(CorpusError):
        load_sentences(tmp_path / "nested.txt")


def test_hf_corpus_without_the_hub_is_one_line(capsys, monkeypatch, tmp_path):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    start = time.monotonic()
    line = _one_line(*_run(capsys, "extract", "--corpus", "hf:someone/some-dataset", "--out", tmp_path / "r",
                           "--model", "smollm2-135m")[::2])
    assert "could not read Hugging Face dataset" in line and "UserWarning" not in line
    assert time.monotonic() - start < 60  # generous for a loaded machine; without the probe it is 30 s of retries


def test_ctrl_c_while_reading_the_corpus_says_nothing_was_extracted(tmp_path):
    corpus = tmp_path / "big.txt"
    corpus.write_text("\n".join(" ".join(f"Line {j} sentence {i} is about cats." for i in range(40))
                                for j in range(4000)) + "\n")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "onejump.cli", "extract", "--corpus", str(corpus), "--out",
                             str(tmp_path / "run"), "--model", "smollm2-135m"], env=env, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 120
    err = ""
    while time.time() < deadline and proc.poll() is None:
        if (tmp_path / "run" / "run.json").exists():  # written just before the corpus is read
            time.sleep(1.0)
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "the corpus was still being read" in err and "finished shards" not in err
    assert not (tmp_path / "run" / "store" / "plan.json").exists()


# ---- text a user can act on --------------------------------------------------------------------------------


def test_missing_run_lens_names_the_command(capsys, tiny_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    line = _one_line(*_run(capsys, "lens", "--model", tiny_dir, "--prompt", "ab", "--run", run, "--lens", "tuned",
                           "--out", tmp_path / "o.png")[::2])
    assert f"onejump train --out {run}" in line


def test_a_file_where_a_folder_is_expected_says_so(capsys, tiny_dir, tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    out = ["--out", tmp_path / "o.png"]
    for argv in (["lens", "--model", tiny_dir, "--prompt", "ab", "--run", file, "--lens", "ojfa", *out],
                 ["lens", "--model", file, "--prompt", "ab", *out],
                 ["lens", "--model", tiny_dir, "--prompt", "ab", "--lens", file, *out],
                 ["train", "--out", file], ["info", file]):
        assert "is a file" in _one_line(*_run(capsys, *argv)[::2]), argv


def test_latex_prompt_draws(capsys, tiny_dir, tmp_path):
    for suffix in ("png", "svg", "html"):
        code, _, err = _run(capsys, "lens", "--model", tiny_dir, "--prompt",
                            "In LaTeX you write $$x^2$$ for display math <b>%s{}</b>",
                            "--out", tmp_path / f"t.{suffix}")
        assert code == 0, err


def test_warnings_are_one_line_and_silent_under_quiet(capsys, monkeypatch):
    import importlib
    import warnings

    cli_main = importlib.import_module("onejump.cli.main")  # the module (the package exports the function)

    def warn(args):
        warnings.warn("a library warning\nover two lines", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setitem(cli_main.COMMANDS, "info", warn)
    assert main(["info"]) == 0
    err = capsys.readouterr().err
    assert err.strip() == "onejump info: warning: a library warning over two lines"
    assert main(["-q", "info"]) == 0 and capsys.readouterr().err == ""

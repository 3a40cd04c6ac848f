"""The command line: happy path on a tiny local model, and one clear line + non-zero exit for bad input."""

import subprocess
import sys

import pytest

from onejump.cli import main

from .tiny import tiny_model, tiny_tokenizer

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import random

    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 14))).capitalize() + "." for _ in range(80)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(capsys, *argv):
    code = main(["-q", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_extract_and_info(capsys, tiny_dir, corpus, tmp_path):
    code, out, err = _run(capsys, "extract", "--model", tiny_dir, "--corpus", corpus, "--n-train", 40,
                          "--n-test", 20, "--out", tmp_path / "store", "--device", "cpu")
    assert code == 0, err
    assert "40 train + 20 test" in out
    code, out, err = _run(capsys, "info", tmp_path / "store" / "store")
    assert code == 0 and "K=3" in out
    # a rerun is a no-op that returns the finished store
    code, out, _ = _run(capsys, "extract", "--model", tiny_dir, "--corpus", corpus, "--n-train", 40,
                        "--n-test", 20, "--out", tmp_path / "store", "--device", "cpu")
    assert code == 0
    # same folder, another seed: refused
    code, out, err = _run(capsys, "extract", "--model", tiny_dir, "--corpus", corpus, "--n-train", 40,
                          "--n-test", 20, "--out", tmp_path / "store", "--seed", 5, "--device", "cpu")
    assert code != 0 and "other settings" in err and len(err.strip().splitlines()) == 1


BAD = [
    (["extract", "--model", "no-such-model", "--out", "{tmp}/s"], "unknown model"),
    (["extract", "--model", "{tiny}", "--corpus", "{tmp}/missing.txt", "--out", "{tmp}/s"], "missing.txt"),
    (["extract", "--model", "{tiny}", "--corpus", "{corpus}", "--n-train", "500", "--n-test", "500",
      "--out", "{tmp}/s"], "sentences"),
    (["extract", "--model", "{tiny}", "--corpus", "{empty}", "--out", "{tmp}/s"], "empty"),
    (["extract", "--model", "{tiny}", "--corpus", "{binary}", "--out", "{tmp}/s"], ""),
    (["info", "{tmp}/nothing"], "not found"),
]


@pytest.mark.parametrize("argv,needle", BAD)
def test_bad_input_is_one_line(capsys, tiny_dir, corpus, tmp_path, argv, needle):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "binary.txt").write_bytes(bytes(range(256)) * 4)
    fmt = dict(tmp=tmp_path, tiny=tiny_dir, corpus=corpus, empty=tmp_path / "empty.txt",
               binary=tmp_path / "binary.txt")
    code, out, err = _run(capsys, *[a.format(**fmt) for a in argv])
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onejump"), err
    assert needle.lower() in err.lower()
    assert "Traceback" not in err


def test_usage_errors_exit_nonzero():
    proc = subprocess.run([sys.executable, "-m", "onejump.cli", "extract", "--n-train", "0", "--out", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "must be > 0" in proc.stderr and "Traceback" not in proc.stderr

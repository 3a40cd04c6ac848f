"""The command line: happy path on a tiny local model, and one clear line + non-zero exit for bad input."""

import contextlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from onejump.cli import main


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
    (["extract", "--model", "{tiny}", "--corpus", "{binary}", "--out", "{tmp}/s"], "looks binary"),
    (["info", "{tmp}/nothing"], "not found"),
    (["extract", "--model", "{tmp}", "--corpus", "{corpus}", "--n-train", "40", "--n-test", "20", "--out", "{tmp}/s"],
     "is a folder but not a model: it has no config.json"),
    (["extract", "--model", "{tiny}", "--corpus", "{corpus}", "--out", "{corpus}"], "is a file, not a folder"),
    (["train", "--out", "{tmp}", "--rank", "x"], "--rank: 'x' is not an integer"),
    (["extract", "--out", "{tmp}/s", "--n-train", "1.5"], "--n-train: '1.5' is not an integer"),
    (["extract", "--out", "{tmp}/s", "--seed", "-1"], "--seed: must be >= 0"),
    (["train", "--out", "{tmp}", "--lr", "nan"], "--lr: 'nan' is not a finite number"),
    (["generate", "--model", "{tiny}", "--prompt", "\udcff\udcfeabc"], "--prompt holds bytes that are not UTF-8"),
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
    assert needle and needle.lower() in err.lower(), err
    assert "Traceback" not in err


def test_usage_errors_exit_nonzero():
    proc = subprocess.run([sys.executable, "-m", "onejump.cli", "extract", "--n-train", "0", "--out", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "must be > 0" in proc.stderr and "Traceback" not in proc.stderr


# ---- a finished tiny run, the folders a hostile user points commands at ---------------------------------------

TINY_DATA = ["--corpus", "{corpus}", "--n-train", "40", "--n-test", "20", "--device", "cpu"]


def _fmt(argv, **paths):
    return [str(a).format(**paths) for a in argv]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_dir, corpus):
    out = tmp_path_factory.mktemp("run") / "r"
    code = main(["-q", "run", "--model", str(tiny_dir), *_fmt(TINY_DATA, corpus=corpus), "--max-epochs", "1",
                 "--out", str(out)])
    assert code == 0
    return out


def _copy_run(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".onejump.lock"))
    return dst


@contextlib.contextmanager
def read_only(path):
    """``path`` and everything under it read-only, for root too (root ignores file modes: chattr +i)."""
    if os.geteuid() != 0:
        paths = [path, *path.rglob("*")]
        for p in paths:
            p.chmod(p.stat().st_mode & ~0o222)
        try:
            yield path
        finally:
            for p in paths:
                p.chmod(p.stat().st_mode | 0o200)
        return
    if subprocess.run(["chattr", "-R", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a folder read-only for root here (chattr +i refused)")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-R", "-i", str(path)], check=True)


@contextlib.contextmanager
def small_disk(path, size="4m"):
    """A real small file system (tmpfs) at ``path``; skipped where mounting one is not permitted."""
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("a full disk is made with a small tmpfs, and mounting one is not permitted here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill_disk(folder, leave: int) -> None:
    """Take all free space of ``folder``'s file system but ``leave`` bytes."""
    st = os.statvfs(folder)
    left = st.f_bavail * st.f_frsize - leave
    with open(folder / "filler", "wb") as fh:
        while left > 0:
            try:
                fh.write(b"\0" * min(left, 1 << 16))
                fh.flush()
            except OSError:
                break
            left -= 1 << 16


def _one_line_error(code, err, needle):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("onejump"), err
    assert needle in lines[0], err
    assert "Traceback" not in err


def test_out_is_a_file(capsys, tiny_dir, corpus, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for cmd in (["extract", "--model", tiny_dir, *_fmt(TINY_DATA, corpus=corpus)], ["train"], ["select"],
                ["evaluate"], ["report"], ["sweep"], ["run", "--model", tiny_dir, *_fmt(TINY_DATA, corpus=corpus)]):
        code, _, err = _run(capsys, *cmd, "--out", afile)
        _one_line_error(code, err, "is a file, not a folder")
    assert afile.read_text() == "x"


def test_read_only_folders(capsys, tiny_run, tiny_dir, corpus, tmp_path):
    run = _copy_run(tiny_run, tmp_path / "ro" / "r")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    with read_only(tmp_path / "ro"):
        code, _, err = _run(capsys, "extract", "--model", tiny_dir, *_fmt(TINY_DATA, corpus=corpus),
                            "--out", tmp_path / "ro" / "new")
        _one_line_error(code, err, "cannot create the folder")
        for cmd in (["train"], ["select"], ["evaluate"], ["report"], ["sweep"],
                    ["run", "--model", tiny_dir, *_fmt(TINY_DATA, corpus=corpus)]):
            code, _, err = _run(capsys, *cmd, "--out", run)
            _one_line_error(code, err, f"cannot write to {run}")
        code, out, err = _run(capsys, "info", run)  # reading needs no write access
        assert code == 0 and "identity" in out, err
        code, out, err = _run(capsys, "generate", "--model", tiny_dir, "--jump", run, "--prompt", "Alpha beta",
                              "--max-new-tokens", 3, "--device", "cpu")
        assert code == 0, err
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_disk_full_during_extraction(capsys, tiny_dir, corpus, tmp_path, monkeypatch):
    argv = ["extract", "--model", tiny_dir, *_fmt(TINY_DATA, corpus=corpus), "--shard-size", 4,
            "--tokens-per-batch", 64]
    with small_disk(tmp_path / "disk") as disk:
        fill_disk(disk, leave=40_000)  # room for a few shards of the ~70 kB store
        code, _, err = _run(capsys, *argv, "--out", disk / "r")
        _one_line_error(code, err, "the store needs")  # refused before any forward
        assert not (disk / "r" / "store").exists()
        # the disk filling up after that check (another writer) is met while writing
        monkeypatch.setattr(importlib.import_module("onejump.extract"), "check_disk", lambda *a, **k: None)
        code, _, err = _run(capsys, *argv, "--out", disk / "r")
        monkeypatch.undo()
        _one_line_error(code, err, "disk full while writing")
        store = disk / "r" / "store"
        assert not (store / "manifest.json").exists()
        assert not [p for p in store.iterdir() if p.name.startswith(".shard-")]  # nothing half-written
        shards = sorted(store.glob("shard-*.safetensors"))
        for shard in shards:  # what is there is finished: its sidecar records its size
            side = json.loads(shard.with_suffix(".json").read_text())
            assert side["bytes"] == shard.stat().st_size
        (disk / "filler").unlink()
        code, _, err = _run(capsys, *argv, "--out", disk / "r")  # the same command finishes the store
        assert code == 0, err
        assert _run(capsys, *argv, "--out", tmp_path / "ref")[0] == 0
        files = {p.name: p.read_bytes() for p in store.iterdir() if p.is_file() and p.name != ".onejump.lock"}
        ref = {p.name: p.read_bytes() for p in (tmp_path / "ref" / "store").iterdir()
               if p.is_file() and p.name != ".onejump.lock"}
        assert files == ref and shards


def test_disk_full_during_training(capsys, tiny_run, tmp_path):
    from onejump.lenses import Lens
    from onejump.model.loading import load_model

    with small_disk(tmp_path / "disk") as disk:
        run = _copy_run(tiny_run, disk / "r")
        shutil.rmtree(run / "lenses")
        fill_disk(disk, leave=24_000)  # the per-level and joint jumps fit, the JTC maps (50 kB) do not
        code, _, err = _run(capsys, "train", "--out", run, "--max-epochs", 1, "--device", "cpu")
        _one_line_error(code, err, "disk full while writing")
        kinds = [p for p in (run / "lenses").iterdir()]
        assert kinds
        for folder in kinds:  # a folder with its config is complete; none holds a temporary file
            assert not [p for p in folder.iterdir() if p.name.startswith(".")]
            if (folder / "config.json").exists():
                Lens.load(folder, load_model(json.loads((run / "run.json").read_text())["data"]["model"]))
        assert not (run / "lenses" / "jtc" / "config.json").exists()
        (disk / "filler").unlink()
        code, out, err = _run(capsys, "train", "--out", run, "--max-epochs", 1, "--device", "cpu")
        assert code == 0 and "jtc: 12,480 parameters" in out, err


def test_failed_extract_does_not_poison_its_folder(capsys, tiny_dir, corpus, tmp_path):
    bad_model = tmp_path / "not-a-model"
    bad_model.mkdir()
    (bad_model / "notes.txt").write_text("hello")
    good = ["--model", tiny_dir, *_fmt(TINY_DATA, corpus=corpus)]
    for bad in (["--model", bad_model, *_fmt(TINY_DATA, corpus=corpus)],
                ["--model", tiny_dir, *_fmt(TINY_DATA, corpus=tmp_path / "missing.txt")]):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        code, _, err = _run(capsys, "extract", *bad, "--out", out)
        assert code == 2, err
        code, stdout, err = _run(capsys, "extract", *good, "--out", out)
        assert code == 0 and "40 train + 20 test" in stdout, err


def test_messages_tell_the_truth(capsys, tiny_run, tiny_dir, tmp_path):
    run = _copy_run(tiny_run, tmp_path / "r")
    code, out, err = _run(capsys, "train", "--out", run, "--max-epochs", 1, "--device", "cpu")
    assert code == 0, err
    results = json.loads((run / "report" / "results.json").read_text())
    printed = {line.split(":")[0]: int(line.split()[1].replace(",", "")) for line in out.splitlines()}
    for folder, name in (("nnjtc", "full"), ("joint", "joint"), ("jtc", "jtc")):
        saved = json.loads((run / "lenses" / folder / "config.json").read_text())["parameters"]
        assert printed[name] == saved == results["parameters"][name]
    code, out, err = _run(capsys, "info", run)  # a run folder: its store
    assert code == 0 and f"its store is {run / 'store'}" in out and "40 train + 20 test" in out, err
    code, out, err = _run(capsys, "report", "--out", run)  # the claims carry their sample size
    assert code == 0 and "checked on 20 test samples (a small test set" in out, err
    shutil.rmtree(run / "lenses" / "ojfa")
    (run / "selection.json").unlink()
    code, _, err = _run(capsys, "generate", "--model", tiny_dir, "--jump", run, "--prompt", "Alpha",
                        "--device", "cpu")
    _one_line_error(code, err, f"run `onejump select --out {run}`")


def test_shard_size_does_what_its_help_says(capsys, tiny_dir, corpus, tmp_path):
    from onejump.cli import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["extract"].format_help()
    assert "up to 64 sentences each" in " ".join(text.split())
    code, _, err = _run(capsys, "extract", "--model", tiny_dir, *_fmt(TINY_DATA, corpus=corpus), "--shard-size", 7,
                        "--out", tmp_path / "r")
    assert code == 0, err
    counts = [e["count"] for e in json.loads((tmp_path / "r" / "store" / "manifest.json").read_text())["shards"]]
    assert sum(counts) == 60 and all(7 <= c < 7 + 64 for c in counts[:-1]) and 0 < counts[-1] < 7 + 64


NOT_UTF8 = "\udcff\udcfe"  # how Python hands over argument bytes that are not UTF-8
HOSTILE = {
    "extract": [["--out", "{file}"], ["--out", "{ro}/x"], ["--out", ""], ["--model", "{notmodel}"], ["--model", ""],
                ["--model", NOT_UTF8], ["--corpus", "{binary}"], ["--corpus", "{tmp}"], ["--corpus", "{file}"],
                ["--n-train", "-1"], ["--n-train", "x"], ["--n-test", "99999999999999999999"], ["--seed", "-3"],
                ["--max-documents", "0"], ["--tokens-per-batch", "0"], ["--shard-size", "1e3"], ["--device", "nope"],
                ["--device", "cuda:7"], ["--dtype", "int8"], ["--store-dtype", "float8"], ["--text-field", ""],
                ["--out", "{file}/below"], ["--train-positions", "0"], ["--test-positions", "every"]],
    "train": [["--out", "{file}"], ["--out", "{nothing}"], ["--out", "{ro}"], ["--rank", "0"], ["--rank", "-2"],
              ["--rank", "100000"], ["--rank", "x"], ["--lr", "-1"], ["--lr", "inf"], ["--batch-size", "0"],
              ["--max-epochs", "0"], ["--patience", "-1"], ["--val-fraction", "2"], ["--val-fraction", "-0.5"],
              ["--objective", "cosine"], ["--preset", "nope"], ["--train-seed", "-1"], ["--device", "cuda:7"]],
    "select": [["--out", "{file}"], ["--out", "{nothing}"], ["--out", "{ro}"], ["--out", "{store}"],
               ["--select-rule", "nope"]],
    "evaluate": [["--out", "{file}"], ["--out", "{nothing}"], ["--out", "{ro}"], ["--out", "{store}"]],
    "report": [["--out", "{file}"], ["--out", "{nothing}"], ["--out", "{ro}"], ["--out", "{store}"],
               ["--out", NOT_UTF8]],
    "run": [["--out", "{file}"], ["--out", "{ro}"], ["--model", "{notmodel}"], ["--corpus", "{binary}"],
            ["--rank", "0"], ["--n-train", "1"]],
    "sweep": [["--out", "{file}"], ["--out", "{nothing}"], ["--out", "{ro}"], ["--multipliers", "0,x"],
              ["--multipliers", ""], ["--objectives", "cosine"], ["--kl-multipliers", "-1"],
              ["--residual-multipliers", "abc"]],
    "generate": [["--prompt", ""], ["--prompt", NOT_UTF8], ["--prompt", "Alpha", "--jump", "{file}"],
                 ["--prompt", "Alpha", "--jump", "{nothing}"], ["--prompt", "Alpha", "--jump", "{store}"],
                 ["--prompt", "Alpha", "--max-new-tokens", "0"], ["--prompt", "Alpha", "--max-new-tokens", "x"],
                 ["--prompt", "Alpha", "--lambda", "5", "--exit", "confidence"],
                 ["--prompt", "Alpha", "--exit-levels", "a,b", "--exit", "confidence"],
                 ["--prompt", "Alpha", "--exit-levels", "99", "--exit", "confidence"],
                 ["--prompt", "Alpha", "--draft-level", "0"], ["--prompt", "Alpha", "--draft-level", "99"],
                 ["--prompt", "Alpha", "--draft-len", "0"], ["--prompt", "Alpha", "--model", "{notmodel}"]],
    "info": [["{file}"], ["{nothing}"], ["{binary}"], ["{notmodel}"], [NOT_UTF8]],
    "prepare": [["--models", NOT_UTF8]],
}


def test_hostile_arguments_never_give_a_traceback(capsys, tiny_run, tiny_dir, corpus, tmp_path):
    """Every command with arguments a careless or hostile user might pass: an exit code and at most one line of
    error, never a traceback and never an internal error."""
    (tmp_path / "file").write_text("x")
    (tmp_path / "binary").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "notmodel").mkdir()
    _copy_run(tiny_run, tmp_path / "ro")
    run = _copy_run(tiny_run, tmp_path / "r")
    paths = dict(file=tmp_path / "file", ro=tmp_path / "ro", binary=tmp_path / "binary", tmp=tmp_path,
                 notmodel=tmp_path / "notmodel", nothing=tmp_path / "nothing", store=run / "store")
    base = {"extract": ["--model", tiny_dir, *_fmt(TINY_DATA, corpus=corpus), "--out", tmp_path / "new"],
            "run": ["--model", tiny_dir, *_fmt(TINY_DATA, corpus=corpus), "--max-epochs", 1,
                    "--out", tmp_path / "new2"],
            "generate": ["--model", tiny_dir, "--jump", run, "--device", "cpu", "--max-new-tokens", 2]}
    stage = ["--out", run, "--device", "cpu"]
    failures = []
    with read_only(tmp_path / "ro"):
        for command, cases in HOSTILE.items():
            for case in cases:
                argv = [command, *base.get(command, stage if command not in ("info", "prepare") else []),
                        *_fmt(case, **paths)]
                code, out, err = _run(capsys, *argv)
                lines = err.strip().splitlines()
                names = re.findall(r"\b[a-z]+_[a-z_]+\b", err.replace(str(tmp_path), "").replace(str(tiny_dir), ""))
                if names:  # an internal (Python) name in a user's error
                    failures.append(f"{' '.join(map(str, argv))}: internal names {names}: {err.strip()}")
                if "Traceback" in err or "internal error" in err or (code != 0 and len(lines) != 1) or code == 0 \
                        and command not in ("info",):
                    failures.append(f"{' '.join(map(str, argv))} -> exit {code}: {err.strip()[-300:]}")
    assert not failures, "\n".join(failures)

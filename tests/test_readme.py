"""The README's library example runs as written (on a tiny model and a small local corpus)."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _library_example() -> str:
    text = README.read_text()
    section = text[text.index("## Library"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_library_example_runs(tmp_path, tiny_dir, corpus, monkeypatch):
    code = _library_example()
    first = next(line for line in code.splitlines() if line.startswith("MODEL, CORPUS"))
    # the same code with only its parameters changed: a tiny model, a local corpus, a small sample
    small = f'MODEL, CORPUS, OUT, N_TRAIN, N_TEST = "{tiny_dir}", "{corpus}", "{tmp_path}/lib", 48, 24'
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code.replace(first, small), "README.md", "exec"), scope)
    K = scope["lm"].num_blocks
    assert scope["result"].metric("ojfa", "precision@1").shape == (K,)
    assert torch.isfinite(scope["result"].metric("ojfa", "kl")).all()
    assert (tmp_path / "lib" / "ojfa" / "config.json").is_file()
    assert scope["stats"].tokens and isinstance(scope["text"], str)

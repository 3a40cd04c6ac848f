"""Data-parallel extraction: 2 CPU processes on the gloo backend give the same store as one process."""

import os
import shutil
import subprocess
import sys

from .tiny import tiny_model, tiny_tokenizer


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_torchrun_two_processes_equal_single(tmp_path):
    model_dir = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    corpus = tmp_path / "c.txt"
    words = "one two three four five six seven eight nine ten eleven twelve".split()
    corpus.write_text("\n".join(" ".join(words[(i + j) % 12] for j in range(8 + i % 5)).capitalize() + "."
                                for i in range(60)) + "\n")
    common = ["-q", "extract", "--model", str(model_dir), "--corpus", str(corpus), "--n-train", "30",
              "--n-test", "12", "--device", "cpu", "--shard-size", "8"]
    env = {**os.environ, "ONEJUMP_BACKEND": "gloo", "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "onejump.cli", *common, "--out",
                             str(tmp_path / "single")], capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    multi = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "onejump.cli", *common,
                            "--out", str(tmp_path / "multi")],
                           capture_output=True, text=True, env=env, timeout=280)
    assert multi.returncode == 0, multi.stderr[-2000:]
    assert _files(tmp_path / "single" / "store") == _files(tmp_path / "multi" / "store")

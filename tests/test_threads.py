"""The thread policy: passive OpenMP waiting before torch loads, usable or free cores, overrides."""

import os
import subprocess
import sys

import pytest

from onejump import threads
from onejump.cli import main
from onejump.errors import ConfigError


def test_explicit_counts_and_bad_values(monkeypatch):
    assert threads.choose_threads("3") == (3, "asked for")
    monkeypatch.setenv(threads.THREADS_ENV, "2")
    assert threads.choose_threads() == (2, "asked for")
    for bad in ("0", "-1", "many"):
        with pytest.raises(ConfigError, match="threads must be 'auto', 'free' or a number"):
            threads.choose_threads(bad)


def test_auto_and_free(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)
    monkeypatch.setattr(threads, "busy_cpus", lambda: 3.0)
    assert threads.choose_threads("auto") == (4, "4 usable CPUs")
    for busy, expected in ((0.2, 4), (1.4, 3), (2.6, 1), (9.0, 1)):
        monkeypatch.setattr(threads, "busy_cpus", lambda busy=busy: busy)
        assert threads.choose_threads("free")[0] == expected
    monkeypatch.setattr(threads, "busy_cpus", lambda: None)
    assert threads.choose_threads("free") == (4, "all usable CPUs (load unknown)")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's OpenMP setting is what auto takes
    assert threads.choose_threads("auto") == (1, "OMP_NUM_THREADS")


def test_busy_cpus_is_a_fraction_of_the_machine():
    busy = threads.busy_cpus(0.05)
    if busy is None:
        pytest.skip("no /proc/stat on this system")
    assert 0.0 <= busy <= (os.cpu_count() or 1) + 1e-6


@pytest.mark.parametrize("preset,expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_wait_policy_is_set_before_torch_loads(preset, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    code = "import os, sys, onejump; assert 'torch' in sys.modules; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


def test_cli_threads_flag(capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["--threads", "0", "info"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "threads must be 'auto', 'free' or a number from 1 to" in err[0] and "'0'" in err[0]
        assert main(["--threads", "100000", "info"]) == 2  # refused before a single thread is started
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "got '100000'" in err[0]
        assert main(["--threads", "2", "info"]) == 0 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

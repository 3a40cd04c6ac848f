"""Out-of-core training: peak memory and throughput of jump training when the store grows 4x.

Writes two synthetic stores shaped like SmolLM2-135M's (H=576, K=30, so 31 levels, float32; random
values) of N and 4N samples into a temporary folder, the way extraction does (safetensors shards
of ``--shard-size`` samples, sidecars, manifest; every 10th sample in the test split), then trains
the K per-level jumps for ``--epochs`` epochs on each, in a fresh subprocess per run:

- streaming: ``buffer_samples = --buffer`` (default N/2), smaller than both train splits;
- in-RAM baseline: ``buffer_samples`` >= the train split, i.e. the behaviour before streaming
  (the whole split read once and kept in memory; the same batches bit for bit).

Each child reports its peak RSS (``VmHWM``, which includes the ~0.3 GB of Python + torch) and
its throughput: train examples per second over the epochs (validation included), timed after
opening the store and, for the baseline, after loading the split (the startup; also reported
with it). Each run is repeated (``--repeats``) and the fastest kept, with the highest peak.
``--eval-chunk 256`` keeps the validation temporaries the same size at both sizes (the default
1024 would exceed the small store's 360 validation rows only). The stores are deleted at the
end. The shards are fresh in the page cache, so this measures memory, not disk speed.

Usage: python benchmarks/outofcore.py [--n 4000] [--buffer 2000] [--epochs 2] [--shard-size 1024] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import peak_rss_mib, save

from onejump.store import FORMAT, VERSION, store_nbytes, write_shard

H, LEVELS = 576, 31


def write_store(folder: Path, n: int, shard_size: int, seed: int = 0) -> None:
    """A finished store of ``n`` random samples (same files and manifest fields as extraction)."""
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    infos = []
    for index, start in enumerate(range(0, n, shard_size)):
        m = min(n, start + shard_size) - start
        ids = torch.arange(start, start + m)
        infos.append(write_shard(folder, index, {
            "hidden": torch.randn(m, LEVELS, H, generator=gen) + torch.arange(LEVELS).view(1, -1, 1),
            "sample_id": ids, "split": (ids % 10 == 9).to(torch.int8), "position": torch.zeros(m, dtype=torch.int64),
            "target": torch.zeros(m, dtype=torch.int64), "tokens": torch.zeros(m, dtype=torch.int32),
            "token_offsets": torch.arange(m + 1, dtype=torch.int64)}))
    manifest = {"format": FORMAT, "version": VERSION, "fingerprint": "synthetic", "num_levels": LEVELS,
                "num_blocks": LEVELS - 1, "hidden_size": H, "dtype": "float32", "num_samples": n,
                "n_train": n - n // 10, "n_test": n // 10, "shards": infos}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


def peak_rss() -> float:
    """Peak RSS of this process, MiB: ``VmHWM`` (reset by exec), else ``ru_maxrss`` (which Linux carries
    over from the parent across fork + exec, so a child's figure would never read below its parent's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_rss_mib()


def child(path: str, buffer: int, epochs: int, eval_chunk: int) -> None:
    from onejump.lenses.jumps import JumpBank
    from onejump.store import HiddenStateStore
    from onejump.training.config import TrainConfig
    from onejump.training.fit import _fit, _prepare
    from onejump.training.reader import _Task

    warm = torch.nn.Parameter(torch.zeros(2))  # the first Adam step imports modules (~2 s): not training time
    opt = torch.optim.Adam([warm])
    warm.sum().backward()
    opt.step()
    rss_start = peak_rss()
    store = HiddenStateStore.open(path, verify=False)
    config = TrainConfig(max_epochs=epochs, patience=epochs + 1, buffer_samples=buffer, eval_chunk=eval_chunk)
    t0 = time.perf_counter()
    config, train, val, dev = _prepare(store, config, "cpu")
    if train.resident:  # the in-RAM baseline: what the old _load_train did before training
        for source in (train, val):
            for _ in source.buffers():
                pass
    load_s = time.perf_counter() - t0
    K = store.num_blocks
    levels = list(range(K))
    bank = JumpBank(K, store.hidden_size, config.rank, levels=levels, eps=config.bn_eps,
                    momentum=config.bn_momentum, seed=config.seed)
    stamps = [time.perf_counter()]
    _fit(bank, _Task(train, levels, K), _Task(val, levels, K), config, dev, False, "", levels,
         on_epoch=lambda *_: stamps.append(time.perf_counter()))
    seconds = stamps[-1] - stamps[0]
    n_examples = len(train) * (len(stamps) - 1)
    print(json.dumps({
        "buffer_samples": buffer, "resident": bool(train.resident), "n_train": len(train), "n_val": len(val),
        "epochs": len(stamps) - 1, "load_seconds": round(load_s, 2), "train_seconds": round(seconds, 2),
        "epoch_seconds": [round(b - a, 2) for a, b in zip(stamps, stamps[1:])],
        "examples_per_s": round(n_examples / seconds, 1),
        "examples_per_s_with_load": round(n_examples / (seconds + load_s), 1),
        "rss_after_imports_mib": round(rss_start, 1), "peak_rss_mib": round(peak_rss(), 1),
        "peak_rss_above_imports_mib": round(peak_rss() - rss_start, 1)}))


def run_child(path: Path, buffer: int, args: argparse.Namespace) -> dict:
    """The fastest of ``--repeats`` fresh children (the machine may be shared), with the highest peak RSS."""
    runs = []
    for _ in range(args.repeats):
        out = subprocess.run([sys.executable, __file__, "--child", str(path), "--buffer", str(buffer),
                              "--epochs", str(args.epochs), "--eval-chunk", str(args.eval_chunk)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"child failed:\n{out.stderr}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
    best = dict(max(runs, key=lambda r: r["examples_per_s"]))
    for key in ("peak_rss_mib", "peak_rss_above_imports_mib"):
        best[key] = max(r[key] for r in runs)
    best["examples_per_s_runs"] = [r["examples_per_s"] for r in runs]
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4000, help="samples of the small store (the big one has 4n)")
    ap.add_argument("--buffer", type=int, default=None, help="shuffle buffer of the streaming runs (default n/2)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=1024, help="samples per shard (extraction's default)")
    ap.add_argument("--eval-chunk", type=int, default=256,
                    help="validation chunk (TrainConfig.eval_chunk); below both validation parts, so that its "
                         "temporaries are the same size in every run")
    ap.add_argument("--repeats", type=int, default=2, help="children per run; the fastest is kept")
    ap.add_argument("--tmp", default=None, help="folder for the temporary stores (default: the system's)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    buffer = args.buffer or args.n // 2
    if args.child is not None:
        child(args.child, buffer, args.epochs, args.eval_chunk)
        return
    sizes = []
    with tempfile.TemporaryDirectory(prefix="onejump-outofcore-", dir=args.tmp) as tmp:
        for n in (args.n, 4 * args.n):
            path = Path(tmp) / f"store-{n}"
            t0 = time.perf_counter()
            write_store(path, n, args.shard_size)
            print(f"wrote {n} samples in {time.perf_counter() - t0:.1f} s", flush=True)
            sizes.append({"samples": n, "store_mib": round(store_nbytes(n, LEVELS, H) / 2**20, 1),
                          "streaming": run_child(path, buffer, args),
                          "in_ram": run_child(path, n, args)})
    small, big = sizes

    def ratio(kind: str, key: str) -> float:
        return round(big[kind][key] / small[kind][key], 3)

    save("outofcore-cpu", {
        "benchmark": "outofcore", "hidden_size": H, "levels": LEVELS, "dtype": "float32", "data": "random",
        "shard_size": args.shard_size, "epochs": args.epochs, "buffer_samples": buffer,
        "eval_chunk": args.eval_chunk, "repeats": args.repeats, "sizes": sizes,
        "streaming_rss_4x_over_1x": ratio("streaming", "peak_rss_mib"),
        "streaming_rss_above_imports_4x_over_1x": ratio("streaming", "peak_rss_above_imports_mib"),
        "streaming_throughput_4x_over_1x": ratio("streaming", "examples_per_s"),
        "in_ram_rss_4x_over_1x": ratio("in_ram", "peak_rss_mib"),
        "in_ram_rss_above_imports_4x_over_1x": ratio("in_ram", "peak_rss_above_imports_mib"),
        "in_ram_throughput_4x_over_1x": ratio("in_ram", "examples_per_s"),
        "streaming_over_in_ram_throughput": [round(s["streaming"]["examples_per_s"] / s["in_ram"]["examples_per_s"], 3)
                                             for s in sizes],
        "streaming_over_in_ram_throughput_with_load": [
            round(s["streaming"]["examples_per_s_with_load"] / s["in_ram"]["examples_per_s_with_load"], 3)
            for s in sizes],
        "streaming_over_in_ram_rss": [round(s["streaming"]["peak_rss_mib"] / s["in_ram"]["peak_rss_mib"], 3)
                                      for s in sizes],
        "command": "python benchmarks/outofcore.py " + " ".join(sys.argv[1:]),
    })


if __name__ == "__main__":
    main()

"""A roofline per stage: each stage's least time on this machine against the time its real code takes.

In one process, this benchmark first measures the machine's ceilings:

- GEMM FLOP/s at each stage's own shapes and dtype (the full head ``(rows, H) @ (H, V)``, the rank-r
  head ``(rows, r) @ (r, V)``, the tuned lens's translators, the jumps' ``(r, H) @ (H, B)``, JTC's
  float64 Gram matrices);
- streaming read bandwidth from memory (a sum over a buffer far larger than the caches) and from
  the store's files (their bytes read in large blocks; warm page cache, as a run reads them);
- exponential throughput (``exp`` over a cache-resident buffer, the O(V) reductions' inner loop).

Then it runs each stage's real code (the library's functions, not copies) on a real run folder's
store and counts, from the shapes and the steps actually taken, the stage's FLOPs, the bytes it
must move at the least (each input read once, each output written once; the store from its files,
the rest from memory) and its transcendentals. A stage's bound is
``max(FLOPs / GEMM rate, exps / exp rate, store bytes / file bandwidth + other bytes / memory bandwidth)``;
the table prints bound, measured seconds, their ratio and the stage's peak RSS.

Stages: the head targets (top-k of p_final, shared by the KL trainings), the per-level MSE jumps,
the joint MSE jump, JTC, the tuned lens (its validation apart), the residual KL joint jump, the
evaluation of each lens, the reuse matrix and the selection (D_m).

Usage: python benchmarks/roofline.py --run RUN [--train-rows N] [--test-rows N] [--tuned-steps S]
  [--kl-epochs E] [--max-epochs E] [--threads T] [--repeats R] [--only training] [--quiet]

The ceilings are measured before the stages and again after them, each taken at the better of the two
(load only lowers a rate).

Row limits take the first N rows of each split (a shorter measurement; the ratio is what is compared,
and it is measured against ceilings taken in the same process and under the same load). Writes
benchmarks/results/roofline-<device>[-<model>].json; a run folder of a tiny random-init model makes
a smoke test.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from dataclasses import dataclass, replace

import torch
from common import LimitedStore, result_name, save

from onejump.errors import OneJumpError
from onejump.evaluation.budget import working_set
from onejump.evaluation.evaluator import evaluate, reuse_matrix
from onejump.evaluation.selection import select_ojfa
from onejump.experiment.run import Run
from onejump.experiment.sweep import objective_config
from onejump.lenses.base import LogitLens
from onejump.lenses.jtc import JTCLens, LinearJTC
from onejump.lenses.jumps import default_rank
from onejump.lenses.onejump import OneJump, PerLevelLens
from onejump.memory import PeakProbe
from onejump.training import tuned as tuned_module
from onejump.training.config import TrainConfig
from onejump.training.fit import train_joint, train_jumps
from onejump.training.objectives import HeadKL, head_targets, mse_loss
from onejump.training.tuned import TunedTrainConfig, train_tuned_lens


# ---- ceilings ------------------------------------------------------------------------------------
def _best_time(fn, min_seconds: float = 0.15, repeats: int = 3) -> float:
    """The fastest of ``repeats`` timings of ``fn`` (each of at least ``min_seconds``, looped), per call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        calls, t0 = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds:
                break
        best = min(best, elapsed / calls)
    return best


def gemm_rate(m: int, k: int, n: int, dtype: torch.dtype = torch.float32, batch: int = 1) -> float:
    """FLOP/s of a (batch x) (m, k) @ (k, n) product; n is capped (a wide product repeats the same tiles)."""
    n = min(n, 16384)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(batch, m, k, generator=gen, dtype=dtype)
    b = torch.randn(batch, k, n, generator=gen, dtype=dtype)
    out = torch.empty(batch, m, n, dtype=dtype)
    if batch == 1:  # the 2-d product the stages call (a batch of one takes a slower path at a small inner size)
        a2, b2, out2 = a[0], b[0], out[0]
        seconds = _best_time(lambda: torch.mm(a2, b2, out=out2))
    else:
        seconds = _best_time(lambda: torch.bmm(a, b, out=out))
    return 2.0 * batch * m * k * n / seconds


def memory_bandwidth(mib: int = 512) -> float:
    """Streaming read bytes/s of a buffer far larger than the caches (a sum touches every byte once)."""
    x = torch.ones(mib << 18, dtype=torch.float32)
    return x.numel() * 4 / _best_time(lambda: x.sum(), min_seconds=0.3)


def file_bandwidth(store_dir, limit_bytes: int = 2 << 30) -> float | None:
    """Streaming read bytes/s of the store's shard files (64 MiB blocks, up to ``limit_bytes``)."""
    files = sorted(store_dir.glob("shard-*.safetensors"))
    if not files:
        return None
    buf = bytearray(64 << 20)
    view = memoryview(buf)
    total, t0 = 0, time.perf_counter()
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while total < limit_bytes:
                got = f.readinto(view)
                if not got:
                    break
                total += got
        if total >= limit_bytes:
            break
    return total / max(time.perf_counter() - t0, 1e-9)


def exp_rate(elements: int = 1 << 18) -> float:
    """exp per second over a cache-resident float32 buffer (in place, as the reductions take it)."""
    x = torch.rand(elements) * -20
    y = torch.empty_like(x)
    return elements / _best_time(lambda: torch.exp(x, out=y))


# ---- counts --------------------------------------------------------------------------------------
@dataclass
class Cost:
    """What a stage must do at the least: FLOPs (at one GEMM shape), transcendentals, bytes."""

    flops: float = 0.0
    gemm: str = ""
    exps: float = 0.0
    mem_bytes: float = 0.0
    store_bytes: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.gemm or other.gemm, self.exps + other.exps,
                    self.mem_bytes + other.mem_bytes, self.store_bytes + other.store_bytes)

    def bound(self, ceil: dict) -> dict:
        parts = {"compute": self.flops / ceil["gemm"][self.gemm] if self.flops else 0.0,
                 "exp": self.exps / ceil["exp_per_s"],
                 "bytes": self.store_bytes / ceil["file_bytes_per_s"] + self.mem_bytes / ceil["memory_bytes_per_s"]}
        limit = max(parts, key=parts.get)
        return {"bound_s": parts[limit], "limited_by": limit, "parts_s": {k: round(v, 4) for k, v in parts.items()}}


def jump_gemm(H: int, rank: int, batch: int, K: int) -> tuple:
    """The jumps' GEMM as their training runs it: per jump ``(r, H) @ (H, batch)`` (the codes' transpose,
    ``z^T = A^T x^T``), batched over the K jumps; the same FLOPs as ``(batch, H) @ (H, r)``, which a CPU's
    GEMM runs several times slower (an output r columns wide)."""
    return (rank, H, batch, torch.float32, K)


class Shape:
    """The run's sizes and the stages' GEMM shapes, from which the counts and the ceilings are taken."""

    def __init__(self, store, lm, rank: int, kl_rank: int, itemsize: int):
        self.K, self.H, self.V = store.num_blocks, store.hidden_size, lm.adapter.vocab_size
        self.r, self.r_kl, self.item = rank, kl_rank, itemsize
        work = working_set(self.V, torch.device("cpu"))
        self.full_block, self.low_block = work.full_block, work.low_block
        K, H, V = self.K, self.H, self.V
        self.gemms = {"full head": (self.full_block, H, V, torch.float32, 1),
                      "rank-r head": (self.low_block, rank, V, torch.float32, 1),
                      "translators": (256, H, H, torch.float32, K),
                      "head on sampled columns": (256 * K, H, 4096, torch.float32, 1),
                      "jump": jump_gemm(H, rank, 128, K),
                      "reuse scores": (512 * K, H, K * rank, torch.float32, 1),
                      "jtc gram": (1024, H + 1, H + 1, torch.float64, 1)}

    def store_read(self, rows: int) -> float:
        return rows * (self.K + 1) * self.H * self.item


def measure_ceilings(shape: Shape, store_dir) -> dict:
    out = {"gemm": {}, "memory_bytes_per_s": memory_bandwidth(), "exp_per_s": exp_rate()}
    for name, (m, k, n, dtype, batch) in shape.gemms.items():
        out["gemm"][name] = gemm_rate(m, k, n, dtype, batch)
    out["file_bytes_per_s"] = file_bandwidth(store_dir) or out["memory_bytes_per_s"]
    return out


def best_ceilings(first: dict, second: dict) -> dict:
    """Each ceiling at the better of two measurements (before and after the stages): the load on a
    shared machine only ever lowers a rate, so the higher one is nearer the hardware's."""
    return {"gemm": {k: max(v, second["gemm"][k]) for k, v in first["gemm"].items()},
            **{k: max(v, second[k]) for k, v in first.items() if k != "gemm"}}


def sampled_columns(targets, batch: int, negatives: int, draws: int = 8) -> float:
    """Mean columns a sampled-normaliser step touches: the union of a batch's top-k tokens plus the negatives."""
    gen = torch.Generator().manual_seed(1)
    n = len(targets.rows)
    sizes = [len(torch.unique(targets.token[torch.randperm(n, generator=gen)[:batch]])) for _ in range(draws)]
    return sum(sizes) / draws + negatives


# ---- stages --------------------------------------------------------------------------------------
class Counted:
    """A training loss that counts the examples it sees with and without autograd (steps vs validation)."""

    def __init__(self, loss):
        self.loss = loss
        self.reset()

    def reset(self):
        self.train_examples, self.val_examples, self.steps = 0, 0, 0

    def __call__(self, bank, inp, *rest):
        if torch.is_grad_enabled():
            self.steps += 1
            self.train_examples += inp.shape[0]
        else:
            self.val_examples += inp.shape[0]
        return self.loss(bank, inp, *rest)


#: Runs of each stage; the fastest counts (``--repeats``: on a shared machine load only slows a run).
REPEATS = 1


def timed(fn, reset=None):
    """``(output, seconds, peak RSS MiB)`` of the fastest of :data:`REPEATS` runs of ``fn`` (``reset`` before each)."""
    best = None
    for _ in range(REPEATS):
        if reset is not None:
            reset()
        gc.collect()
        with PeakProbe() as probe:
            t0 = time.perf_counter()
            out = fn()
            seconds = time.perf_counter() - t0
        if best is None or seconds < best[1]:
            best = (out, seconds, round(probe.peak_mib, 1))
    return best


def _per_example_jump(s: Shape, J: int, r: int) -> float:
    """Forward FLOPs of J low-rank jumps on one example: (H, r) then (r, H)."""
    return J * 4.0 * s.H * r


def train_stages(store, lm, s: Shape, args, records: dict, lenses: dict) -> None:
    K, H = s.K, s.H
    cfg = replace(TrainConfig(), max_epochs=args.max_epochs) if args.max_epochs else TrainConfig()
    n_train = len(store.indices("train"))

    for kind, trainer, J in (("per-level MSE jumps", train_jumps, K), ("joint MSE jump", train_joint, 1)):
        loss = Counted(mse_loss)
        (bank, hist), sec, peak = timed(lambda trainer=trainer, loss=loss: trainer(store, cfg, progress=not args.quiet,
                                                                                  loss_fn=loss), loss.reset)
        per_ex = _per_example_jump(s, J, bank.rank)
        width = J if J > 1 else 1  # a per-level example holds J inputs; a joint one, one
        # a split larger than the shuffle buffer is read from the store again every epoch
        reads = 1 if n_train <= cfg.buffer_samples else hist.epochs_run
        cost = Cost(flops=3 * per_ex * loss.train_examples + per_ex * loss.val_examples, gemm="jump",
                    mem_bytes=4.0 * (width + 1) * H * (loss.train_examples + loss.val_examples),
                    store_bytes=s.store_read(n_train) * reads)
        records[kind] = {"seconds": sec, "peak_rss_mib": peak, "epochs": hist.epochs_run, "steps": loss.steps,
                         "train_rows": loss.train_examples // (1 if J > 1 else K), "_cost": cost}
        if J > 1:
            lenses["full"] = PerLevelLens(lm, bank.cpu())
        else:
            lenses["joint"] = OneJump(lm, bank.cpu(), trained_at=-1)
    if args.only == "training":
        tuned_stage(store, lm, s, args, records, lenses, head_targets_stage(store, lm, s, args, records))
        return

    jtc, sec, peak = timed(lambda: LinearJTC.fit(store))
    n = n_train
    # the Gram matrices [X^T X | X^T Y], then per level a factorisation of the (H+1)^2 system (a Cholesky
    # at the least, (H+1)^3 / 3) and its solve for H right-hand sides (2 (H+1)^2 H)
    cost = Cost(flops=K * (2.0 * n * (H + 1) * (2 * H + 1) + (H + 1) ** 3 / 3 + 2.0 * (H + 1) ** 2 * H),
                gemm="jtc gram", store_bytes=s.store_read(n))
    records["JTC"] = {"seconds": sec, "peak_rss_mib": peak, "_cost": cost}
    lenses["jtc"] = JTCLens(lm, jtc.cpu())

    targets = head_targets_stage(store, lm, s, args, records)
    tuned_stage(store, lm, s, args, records, lenses, targets)
    kl_res_stage(store, lm, s, args, records, lenses, targets)


def head_targets_stage(store, lm, s: Shape, args, records: dict):
    n, H, V = len(store.indices("train")), s.H, s.V
    targets, sec, peak = timed(lambda: head_targets(store, lm.adapter, top_k=32, progress=not args.quiet))
    cost = Cost(flops=2.0 * n * H * V, gemm="full head", exps=n * V, store_bytes=n * H * s.item,
                mem_bytes=4.0 * V * H)
    records["head targets"] = {"seconds": sec, "peak_rss_mib": peak, "_cost": cost}
    return targets


def tuned_stage(store, lm, s: Shape, args, records: dict, lenses: dict, targets) -> None:
    K, H, V = s.K, s.H, s.V
    cfg = TunedTrainConfig(num_steps=args.tuned_steps, eval_every=max(1, args.tuned_steps // 5))
    spent = {"seconds": 0.0, "calls": 0}
    validate = tuned_module._validate

    def timed_validate(*a, **kw):  # the library's validation, timed apart from the steps
        t0 = time.perf_counter()
        try:
            return validate(*a, **kw)
        finally:
            spent["seconds"] += time.perf_counter() - t0
            spent["calls"] += 1

    tuned_module._validate = timed_validate
    try:
        def run():
            spent.update(seconds=0.0, calls=0)
            return train_tuned_lens(store, lm, cfg, progress=not args.quiet, targets=targets), dict(spent)

        ((lens, hist), spent_best), sec, peak = timed(run)
        spent.update(spent_best)
    finally:
        tuned_module._validate = validate
    lenses["tuned"] = lens
    B, steps, nv = cfg.batch_size, hist.steps_run, hist.n_val
    nv = min(nv, cfg.val_rows) if cfg.val_rows else nv
    C = sampled_columns(targets, B, cfg.kl_negatives)
    rows = B * K
    step = Cost(flops=4.0 * rows * H * H + 4.0 * rows * H * C, gemm="head on sampled columns", exps=rows * C,
                mem_bytes=4.0 * (rows * H + C * H + 5 * K * H * H))
    val = Cost(flops=2.0 * nv * K * H * H + 2.0 * nv * K * H * V, gemm="full head", exps=nv * K * V,
               mem_bytes=4.0 * (V * H + K * H * H + nv * K * H))
    n_train = len(store.indices("train"))
    train_cost = Cost(flops=step.flops * steps, gemm=step.gemm, exps=step.exps * steps,
                      mem_bytes=step.mem_bytes * steps, store_bytes=s.store_read(n_train))
    val_cost = Cost(flops=val.flops * spent["calls"], gemm=val.gemm, exps=val.exps * spent["calls"],
                    mem_bytes=val.mem_bytes * spent["calls"])
    records["tuned lens: steps"] = {"seconds": sec - spent["seconds"], "peak_rss_mib": peak, "steps": steps,
                                    "train_rows": steps * B,
                                    "columns_per_step": round(C), "_cost": train_cost}
    records["tuned lens: validation"] = {"seconds": spent["seconds"], "validations": spent["calls"],
                                         "rows": nv * K, "_cost": val_cost}
    records["tuned lens"] = {"seconds": sec, "peak_rss_mib": peak, "_cost": (train_cost + val_cost),
                             "validation_share": round(spent["seconds"] / max(sec, 1e-9), 3),
                             "best_step": hist.best_step}


def kl_res_stage(store, lm, s: Shape, args, records: dict, lenses: dict, targets) -> None:
    H, V = s.H, s.V
    cfg = replace(objective_config("kl-res", s.r_kl), max_epochs=args.kl_epochs)
    loss = Counted(HeadKL(lm.adapter, targets, negatives=cfg.kl_negatives, seed=cfg.seed))
    (bank, hist), sec, peak = timed(lambda: train_joint(store, cfg, progress=not args.quiet, loss_fn=loss), loss.reset)
    lenses["kl-res joint"] = OneJump(lm, bank.cpu(), trained_at=-1)
    C = sampled_columns(targets, cfg.batch_size, cfg.kl_negatives)
    steps, te, ve = loss.steps, loss.train_examples, loss.val_examples
    jump = 4.0 * H * s.r_kl
    cost = Cost(flops=3 * jump * te + 4.0 * H * C * te + (jump + 2.0 * H * V) * ve,
                gemm="head on sampled columns", exps=C * te + V * ve,
                mem_bytes=4.0 * (2 * H * (te + ve) + steps * C * H + V * H * max(1, hist.epochs_run)),
                store_bytes=s.store_read(len(store.indices("train"))))
    records["residual KL joint jump"] = {"seconds": sec, "peak_rss_mib": peak, "epochs": hist.epochs_run,
                                         "steps": steps, "columns_per_step": round(C),
                                         "_cost": cost}


def _lens_cost(s: Shape, name: str, lens, N: int) -> Cost:
    """One lens's evaluation (field metrics on): its logits at every level, one exp per logit, and the
    reference (the final head on each test row, one exp per logit)."""
    K, H, V = s.K, s.H, s.V
    ref = Cost(flops=2.0 * N * H * V, exps=N * V, store_bytes=s.store_read(N), mem_bytes=4.0 * V * H)
    rows = N * K
    low_rank = isinstance(lens, OneJump | PerLevelLens) and not lens.residual
    if low_rank:
        J = lens.bank.num_jumps
        return ref + Cost(flops=2.0 * rows * lens.rank * V + 2.0 * rows * H * J * lens.rank, gemm="rank-r head",
                          exps=rows * V, mem_bytes=4.0 * J * lens.rank * V)
    extra = {"jtc": 2.0 * rows * H * H, "tuned": 2.0 * rows * H * H}.get(name, 0.0)
    if isinstance(lens, OneJump | PerLevelLens):
        extra = 4.0 * rows * H * lens.rank
    return ref + Cost(flops=2.0 * rows * H * V + extra, gemm="full head", exps=rows * V)


def eval_stages(store, lm, s: Shape, args, records: dict, lenses: dict) -> None:
    N = len(store.targets("test"))
    sel, sec, peak = timed(lambda: select_ojfa(store, lenses["full"], rule="paper"))
    n_train, K, H, r = len(store.indices("train")), s.K, s.H, lenses["full"].rank
    cost = Cost(flops=2.0 * n_train * K * H * K * r + 2.0 * n_train * H * K * r, gemm="reuse scores",
                store_bytes=s.store_read(n_train))
    records["selection"] = {"seconds": sec, "peak_rss_mib": peak, "chosen": sel.chosen, "_cost": cost}
    lenses["ojfa"] = lenses["full"].jump(sel.chosen)
    everything = {"identity": LogitLens(lm), **lenses}
    for name, lens in everything.items():
        _, sec, peak = timed(lambda lens=lens, name=name: evaluate(store, {name: lens}, progress=not args.quiet))
        records[f"evaluation: {name}"] = {"seconds": sec, "peak_rss_mib": peak,
                                         "_cost": _lens_cost(s, name, lens, N)}
    _, sec, peak = timed(lambda: reuse_matrix(store, lenses["full"], progress=not args.quiet))
    rows = K * K * N
    cost = Cost(flops=2.0 * N * H * s.V + 2.0 * rows * r * s.V, gemm="rank-r head", exps=N * s.V + rows * s.V,
                store_bytes=s.store_read(N), mem_bytes=4.0 * (s.V * H + K * r * s.V))
    records["reuse matrix"] = {"seconds": sec, "peak_rss_mib": peak, "_cost": cost}


class SplitView:
    """A store limited to the first rows of its train and test splits (``None``: all of that split)."""

    def __init__(self, store, train_rows: int | None, test_rows: int | None):
        self._store, self._limits = store, {"train": train_rows, "test": test_rows}

    def __getattr__(self, name):
        return getattr(self._store, name)

    def _n(self, split) -> int:
        return self._limits.get(split) or len(self._store.indices(split))

    def indices(self, split=None):
        return self._store.indices(split)[: self._n(split)]

    def targets(self, split=None):
        return self._store.targets(split)[: self._n(split)]

    def next_tokens(self, split=None):
        return self._store.next_tokens(split)[: self._n(split)]

    def hidden(self, split=None, levels=None, dtype=torch.float32):
        return self._store.hidden(split, levels=levels, dtype=dtype)[: self._n(split)]

    def iter_chunks(self, split=None, chunk_size=4096, levels=None, dtype=torch.float32):
        return LimitedStore(self._store, self._n(split)).iter_chunks(split, chunk_size, levels, dtype)


def table(records: dict) -> str:
    rows = [("stage", "bound (s)", "measured (s)", "ratio", "limited by", "peak RSS (MiB)")]
    for name, r in records.items():
        if name.startswith("_"):
            continue
        rows.append((name, f"{r['bound_s']:.3g}", f"{r['seconds']:.3g}", f"{r['ratio']:.3g}", r["limited_by"],
                     str(r.get("peak_rss_mib", ""))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a run folder with an extracted store")
    ap.add_argument("--train-rows", type=int, default=None, help="the first N train rows only")
    ap.add_argument("--test-rows", type=int, default=None, help="the first N test rows only")
    ap.add_argument("--tuned-steps", type=int, default=250, help="the tuned lens's schedule (default: 250)")
    ap.add_argument("--kl-epochs", type=int, default=4, help="epochs of the residual KL joint jump (default: 4)")
    ap.add_argument("--max-epochs", type=int, default=None, help="cap on the MSE jumps' epochs (default: none)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default: 1; on a loaded machine a second thread that the OS deschedules "
                         "stalls every small parallel op at its barrier, the ceilings' short loops most of all)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each stage, the fastest counted (default: 1)")
    ap.add_argument("--only", choices=("all", "training"), default="all",
                    help="training: the MSE jumps, the head targets and the tuned lens only, with their rows per "
                         "second (for a store of every position, where the training rows multiply)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global REPEATS
    REPEATS = max(1, args.repeats)
    run = Run(args.run, device="cpu", progress=not args.quiet)
    lm, full_store = run.lm(), run.store()
    store = SplitView(full_store, args.train_rows, args.test_rows)
    H = store.hidden_size
    manifest = json.loads((run.store_dir / "manifest.json").read_text())
    itemsize = torch.empty((), dtype=getattr(torch, manifest.get("dtype", "float32"))).element_size()
    s = Shape(store, lm, default_rank(H), 2 * default_rank(H), itemsize)
    before = measure_ceilings(s, run.store_dir)
    records: dict = {}
    lenses: dict = {}
    train_stages(store, lm, s, args, records, lenses)
    if args.only == "all":
        eval_stages(store, lm, s, args, records, lenses)
    # the bounds are taken again against the better of the ceilings measured before and after the stages
    ceil = best_ceilings(before, measure_ceilings(s, run.store_dir))
    for r in records.values():
        r.update(r.pop("_cost").bound(ceil))
        if "train_rows" in r:  # a training's rate: rows per second, and the bound's
            r["rows_per_s"] = round(r["train_rows"] / max(r["seconds"], 1e-12), 1)
            r["bound_rows_per_s"] = round(r["train_rows"] / max(r["bound_s"], 1e-12), 1)
        r["ratio"] = float(f"{r['seconds'] / max(r['bound_s'], 1e-12):.3g}")
        r["seconds"], r["bound_s"] = float(f"{r['seconds']:.4g}"), float(f"{r['bound_s']:.4g}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    payload = {"benchmark": "roofline", "model": lm.name, "num_blocks": s.K, "hidden_size": H, "vocab_size": s.V,
               "rank": s.r, "kl_rank": s.r_kl, "n_train": len(store.indices("train")),
               "n_test": len(store.targets("test")), "repeats": REPEATS, "tuned_steps": args.tuned_steps,
               "kl_epochs": args.kl_epochs,
               "load_average_1min": load, "cpu_count": os.cpu_count(),
               "ceilings": {"gemm_flops_per_s": {k: round(v / 1e9, 2) for k, v in ceil["gemm"].items()},
                            "gemm_shapes": {k: list(v[:3]) + [str(v[3]).replace("torch.", ""), v[4]]
                                            for k, v in s.gemms.items()},
                            "memory_gb_per_s": round(ceil["memory_bytes_per_s"] / 1e9, 2),
                            "store_files_gb_per_s": round(ceil["file_bytes_per_s"] / 1e9, 2),
                            "exp_per_s": round(ceil["exp_per_s"] / 1e9, 3), "units": "GFLOP/s, GB/s, 1e9 exp/s"},
               "stages": records, "run_timings": _run_timings(run.folder)}
    print(table(records))
    positions = (manifest.get("positions") or {}).get("train", "one")
    name = result_name("roofline", "cpu", run.data_args().model)
    name += "" if positions == "one" else f"-positions-{positions}"
    payload["train_positions"] = positions
    save(name + ("" if args.only == "all" else f"-{args.only}"), payload)
    return payload


def _run_timings(folder) -> dict | None:
    """The run's own stage times (timings.json) and the whole pipeline over its extraction, if recorded."""
    path = folder / "timings.json"
    if not path.is_file():
        return None
    t = json.loads(path.read_text())
    total = sum(v for v in t.values() if isinstance(v, int | float))
    extract = t.get("extract")
    return {"timings": t, "total_s": round(total, 1),
            "total_over_extract": round(total / extract, 2) if extract else None}


if __name__ == "__main__":
    try:
        main()
    except OneJumpError as exc:
        raise SystemExit(f"error: {exc}") from None

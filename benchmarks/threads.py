"""Thread policy on a shared machine: a training-like workload alone and beside a busy process.

The workload is the jump bank's training step at SmolLM2-135M's shapes (K = 30 jumps, H = 576,
r = 5, batch 128, 1024 rows per epoch): batched BatchNorm-style normalisation, x @ A @ B, MSE to the
target, backward and Adam. Each policy runs in its own process (OpenMP reads its wait policy once,
when torch loads it):

- ``old``: what onejump did before, torch's default (one thread per CPU) with OpenMP's default
  spinning wait;
- ``new``: onejump's default (``import onejump`` sets passive waiting, then
  ``apply_thread_policy("auto")``: the usable CPUs);
- ``free``: passive waiting and ``--threads free`` (usable CPUs minus those other processes keep
  busy, measured when the run starts).

Each runs alone and beside a busy process (a spinning Python loop started first), in two
interleaved rounds so that drifting load from other processes hits every configuration alike. Prints
a table and saves ``results/threads-cpu.json``: the median epoch over both rounds and the ratios
busy / alone and policy / old. ``OMP_NUM_THREADS`` is removed from the workers' environment, since the point is
what happens without it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

POLICIES = ("old", "new", "free")


def worker(policy: str, epochs: int) -> dict:
    """Run the workload under ``policy`` in this process; return timings."""
    reason = "torch default"
    if policy != "old":
        import onejump  # noqa: F401  sets the wait policy before torch loads
        from onejump.threads import apply_thread_policy

        _, reason = apply_thread_policy("auto" if policy == "new" else "free")
    import torch

    K, H, r, batch, rows = 30, 576, 5, 128, 1024
    torch.manual_seed(0)
    x_all, y_all = torch.randn(K, rows, H), torch.randn(rows, H)
    A = torch.nn.Parameter(torch.randn(K, H, r) * 0.02)
    B = torch.nn.Parameter(torch.randn(K, r, H) * 0.02)
    gamma, beta = torch.nn.Parameter(torch.ones(K, 1, H)), torch.nn.Parameter(torch.zeros(K, 1, H))
    opt = torch.optim.Adam([A, B, gamma, beta], lr=1e-3)

    def epoch() -> float:
        start = time.perf_counter()
        for i in range(0, rows, batch):
            x, y = x_all[:, i:i + batch], y_all[i:i + batch]
            xn = (x - x.mean(1, keepdim=True)) / (x.var(1, keepdim=True, unbiased=False) + 1e-5).sqrt()
            loss = (((xn * gamma + beta) @ A @ B - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return time.perf_counter() - start

    epoch()  # warm-up
    times = [epoch() for _ in range(epochs)]
    return {"policy": policy, "threads": torch.get_num_threads(), "why": reason,
            "wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
            "epoch_s": statistics.median(times), "epochs_s": [round(t, 3) for t in times]}


def run(policy: str, busy: bool, epochs: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "ONEJUMP_THREADS")}
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        if spinner:
            time.sleep(1.0)  # let it take its core before the policy looks at the load
        load = os.getloadavg()[0]
        out = subprocess.run([sys.executable, __file__, "--worker", policy, "--epochs", str(epochs)], env=env,
                             capture_output=True, text=True, check=True)
    finally:
        if spinner:
            spinner.kill()
            spinner.wait()
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(busy=busy, loadavg_1min=round(load, 2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=POLICIES, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per run (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default: %(default)s)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.epochs)))
        return
    from common import RESULTS, machine  # only here: it imports torch, which the workers must import after onejump

    runs = []
    for round_ in range(args.rounds):
        for busy in (False, True):
            for policy in POLICIES:
                res = run(policy, busy, args.epochs)
                runs.append({"round": round_, **res})
                print(f"{policy:8s} {'busy' if busy else 'alone':5s} threads={res['threads']} "
                      f"wait={res['wait_policy']:8s} epoch {res['epoch_s']:.3f} s  (load {res['loadavg_1min']}, "
                      f"{res['why']})", flush=True)
    t = {(p, b): statistics.median([e for r in runs if (r["policy"], r["busy"]) == (p, b) for e in r["epochs_s"]])
         for p in POLICIES for b in (False, True)}
    ratios = {
        **{f"{p}_busy_over_alone": round(t[p, True] / t[p, False], 3) for p in POLICIES},
        **{f"{p}_over_old_alone": round(t[p, False] / t["old", False], 3) for p in POLICIES if p != "old"},
        **{f"{p}_over_old_busy": round(t[p, True] / t["old", True], 3) for p in POLICIES if p != "old"},
    }
    for key, value in ratios.items():
        print(f"{key:28s} {value:.3f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "threads-cpu.json").write_text(json.dumps(
        {"benchmark": "threads", "workload": "jump-bank training step, K=30 H=576 r=5 batch 128, 1024 rows/epoch",
         "machine": machine(), "median_epoch_s": {f"{p}_{'busy' if b else 'alone'}": round(v, 4)
                                                  for (p, b), v in t.items()},
         "runs": runs, "ratios": ratios}, indent=1))
    print(f"saved {RESULTS / 'threads-cpu.json'}")


if __name__ == "__main__":
    main()

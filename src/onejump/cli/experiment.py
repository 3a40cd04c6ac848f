"""The commands of the experiment: prepare, extract, train, select, evaluate, report, run, sweep, compare, info."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import ConfigError
from .common import _data_args, _int_list, _lock, _rank_multiplier, _run, _train_config


def cmd_prepare(args: argparse.Namespace) -> int:
    from ..corpus.offline import prepare_offline_corpus
    from ..model.aliases import known_aliases, unknown_model_error
    from ..model.loading import load_model

    for alias in args.models:  # before any download, so a typo costs nothing
        if alias not in known_aliases():
            raise unknown_model_error(alias)
    path = prepare_offline_corpus(progress=not args.quiet)
    print(f"corpus: {path}")
    for alias in args.models:
        t0 = time.time()
        lm = load_model(alias, device="cpu", dtype=args.dtype, progress=not args.quiet)
        print(f"model {alias}: K={lm.num_blocks} H={lm.hidden_size} weights {lm.fingerprint} "
              f"({time.time() - t0:.1f} s)")
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    run = _run(args, existing=False)
    args.kept.say(f"finished shards are kept in {run.store_dir}; rerun the same command to resume")
    t0 = time.time()
    with _lock(run.folder):
        store = run.extract(_data_args(args))
    _print_store(store)
    print(f"done in {time.time() - t0:.1f} s")
    return 0


def _print_store(store) -> None:
    m = store.manifest
    print(f"store {store.path}: model {m['model']} (weights {m['fingerprint']}), K={m['num_blocks']} "
          f"H={m['hidden_size']}, {m['n_train']} train + {m['n_test']} test samples, {m['dtype']}, "
          f"{m['total_prefix_tokens']} prefix tokens, seed {m['seed']}, identity {store.identity}")
    if any(v != "one" for v in store.positions.values()):
        print(f"positions per sentence: train {store.positions['train']}, test {store.positions['test']} "
              f"({m['n_train_sentences']} train + {m['n_test_sentences']} test sentences)")
    if store.has_next_tokens:
        print(f"next tokens recorded ({m.get('n_without_next_token', 0)} samples end their sentence and have none)")
    else:
        print("next tokens not recorded (extracted by an older onejump): cross-entropy against the text needs a "
              "re-extraction")


def cmd_train(args: argparse.Namespace) -> int:
    run = _run(args)
    config = _train_config(args)
    args.kept.say(f"the lenses finished so far are kept in {run.folder}; rerun the same command to resume")
    with _lock(run.folder):
        out = _train(run, args, config)
    for kind, lens in out.items():  # counted as the files and the report count: weights and BatchNorm statistics
        print(f"{kind}: {lens.num_parameters:,} parameters held at inference -> {run.lens_path(kind)}")
    return 0


def _train(run, args: argparse.Namespace, config) -> dict:
    """Record the preset, then train (or reuse) the run's lenses as the training options say."""
    run.record_preset(args.preset, args.select_rule)
    return run.train(config, joint=not args.no_joint, jtc=not args.no_jtc, tuned=not args.no_tuned,
                     rank_multiplier=_rank_multiplier(args), tuned_steps=args.tuned_steps, tuned_init=args.tuned_init,
                     tuned_optimizer=args.tuned_optimizer, muon_lr=args.muon_lr)


def cmd_select(args: argparse.Namespace) -> int:
    run = _run(args)
    with _lock(run.folder):
        sel = run.select(args.select_rule)
    top = sel["ranking"][:5]
    score = "D" if sel.get("rule", "paper") == "paper" else "held-out precision@1"
    print(f"OJFA choice ({sel.get('rule', 'paper')} rule): jump {sel['chosen']} ({score} = "
          f"{sel['scores'][sel['chosen']]:.4f}); top 5 by {score}: {top}")
    print(f"saved {run.lens_path('ojfa')}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    run = _run(args)
    with _lock(run.folder):
        result = run.evaluate()
        run.simulate_exits()
    for method in result.methods:
        p1 = result.metric(method, "precision@1")
        kl = f", mean KL {float(result.metric(method, 'kl').mean()):.3f}" if result.has(method, "kl") else ""
        print(f"{method:>9}: mean precision@1 {float(p1.mean()):.3f}, mean surprisal "
              f"{float(result.metric(method, 'surprisal').mean()):.2f}{kl}")
    print(f"early exit: {run.folder / 'early_exit'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    run = _run(args)
    with _lock(run.folder):
        path = run.report()
    _print_claims(path)
    return 0


def _print_claims(report: Path) -> None:
    results = json.loads((report.parent / "results.json").read_text())
    n = int(results.get("data", {}).get("n_test", 0))
    few = " (a small test set: differences of a few points are noise, not evidence)" if n < 1000 else ""
    print(f"the paper's claims, checked on {n} test samples{few}:")
    for c in results["claims"]:
        verdict = c.get("verdict", "held" if c["held"] else "not held")
        print(f"[{verdict if verdict != 'not held' else 'NOT HELD'}] {c['claim']}: {c['ours']}")
    print(f"report: {report}")


def cmd_run(args: argparse.Namespace) -> int:
    run = _run(args, existing=False)
    data = _data_args(args)
    config = _train_config(args)
    args.kept.say(f"finished stages are kept in {run.folder}; rerun the same command to resume")
    with _lock(run.folder):
        stages = [("extract", lambda: run.extract(data)),
                  ("train", lambda: _train(run, args, config)),
                  ("select", run.select), ("evaluate", run.evaluate), ("early exit", run.simulate_exits)]
        for name, stage in stages:
            if not args.quiet:
                print(f"== {name}", file=sys.stderr)
            stage()
        path = run.report()
    if run.state.reused:
        print(f"reused: {', '.join(run.state.reused)}")
    _print_claims(path)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..experiment.sweep import sweep
    from ..training.config import OBJECTIVES

    run = _run(args)
    multipliers = _int_list(args.multipliers, "multipliers")
    objectives = tuple(x.strip() for x in args.objectives.split(",") if x.strip())
    bad = [o for o in objectives if o not in OBJECTIVES]
    if bad or not objectives:
        raise ConfigError(f"--objectives must name some of {', '.join(OBJECTIVES)}, got '{args.objectives}'")
    args.kept.say(f"finished configurations are kept in {run.folder / 'sweep'}; rerun to resume")
    with _lock(run.folder):
        residual = () if args.residual_multipliers.strip().lower() == "none" else \
            _int_list(args.residual_multipliers, "residual-multipliers")
        per = {"kl": _int_list(args.kl_multipliers, "kl-multipliers")} if args.kl_multipliers else None
        variants = tuple(x.strip() for x in args.variants.split(",") if x.strip())
        sweep(run, multipliers=multipliers, objectives=objectives, residual_multipliers=residual,
              per_objective=per, variants=variants,
              variant_multipliers=_int_list(args.variant_multipliers, "variant-multipliers"),
              val_fraction=args.val_fraction, progress=not args.quiet)
        run.evaluate()  # the sweep's best single jump joins the evaluation (only it is read: one stage per lens)
        run.simulate_exits()  # and the early-exit comparison
        path = run.report()
    line = sweep_line(json.loads((path.parent / "results.json").read_text()))
    if line:
        print(line)
    print(f"report: {path}")
    return 0


def sweep_line(results: dict) -> str | None:
    """The sweep's best single jump and its bar, judged as the report and results.json judge it (on 95%
    intervals, :func:`~onejump.experiment.claim_intervals.sweep_bar_verdicts`); None without a bar."""
    from ..experiment.claim_intervals import sweep_bar_verdicts

    verdicts = sweep_bar_verdicts(results)
    if verdicts is None:
        return None
    beyond = results["beyond"]
    best, bar = beyond["best"], beyond["bar"]
    ratio = (f"{bar['precision_ratio']:.2f}x the paper OJFA's" if bar["paper_ojfa_mean_precision@1"] > 0
             else "the paper OJFA's is 0")

    def said(v: str) -> str:
        return "NOT HELD" if v == "not held" else v

    return (f"best single jump: {best['method']} ({best['objective']}, r={best['rank']}, "
            f"{best['parameters']:,} parameters): mean precision@1 {best['mean_precision@1']:.3f} ({ratio}); "
            f"below the logit lens at {len(bar['levels_not_above_logit_lens'])} of levels "
            f"0..{bar['levels_checked'] - 1}; bar {said(verdicts['bar'])} (<= 2x parameters "
            f"{said(verdicts['params'])}, >= 2x precision {said(verdicts['precision'])}, above the logit lens "
            f"{said(verdicts['lens'])}; 95% intervals)")


def cmd_compare(args: argparse.Namespace) -> int:
    from ..experiment.compare import write_compare

    summary = write_compare(args.sources, args.out)
    for m in summary["models"]:
        verdicts = [c["verdict"] for c in m["claims"].values()]
        print(f"{m['name']} (K={m['K']}, H={m['H']}, r={m['r']}, {m['n_train']}/{m['n_test']}): "
              f"{verdicts.count('held')} of {len(verdicts)} claims held, {verdicts.count('not held')} not held, "
              f"{verdicts.count('inconclusive')} inconclusive")
    out = Path(args.out)
    print(f"wrote {out / 'models.md'}, {out / 'compare.json'}, {out / 'ojfa_gap_vs_h.png'}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ..model.aliases import installed_alias_versions
    from ..store import HiddenStateStore

    if args.path:
        path = Path(args.path)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{path} is a file; give a store folder or a run folder")
        if (path / "run.json").is_file() or (path / "store").is_dir():
            print(f"{path} is a run folder; its store is {path / 'store'}")
            path = path / "store"
        _print_store(HiddenStateStore.open(path, verify=True))
        return 0
    print(json.dumps({"offline_models": installed_alias_versions()}, indent=1))
    return 0

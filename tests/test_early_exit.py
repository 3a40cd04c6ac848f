import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from onejump.errors import ConfigError, StoreError
from onejump.evaluation.early_exit import (
    ExitSimulation,
    LensExits,
    block_macs,
    default_lambdas,
    first_exit,
    head_macs,
    simulate_exits,
)
from onejump.experiment.exit_figures import (
    exit_report_section,
    plot_exit_frontier,
    render_exit_table,
)
from onejump.extract import extract
from onejump.lenses import LogitLens, PerLevelLens
from onejump.model.loading import from_pretrained_model

from .test_selection import random_bank, random_sentences
from .tiny import tiny_model, tiny_tokenizer


class SharpLens(LogitLens):
    """The logit lens's top-1 with all the probability: it exits at once."""

    kind = "test-sharp"

    def forward(self, h, level):
        logits = super().forward(h, level)
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float() * 1e4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    lm = from_pretrained_model(tiny_model("llama"), tiny_tokenizer(), name="tiny-llama")
    store = extract(lm, random_sentences(40, seed=2), tmp_path_factory.mktemp("ee") / "s",
                    splits=[0] * 16 + [1] * 24, seed=0, shard_size=10, progress=False)
    return lm, store


def test_costs_of_the_tiny_llama(setup):
    lm, _ = setup
    # q 64x64, k and v 64x32 (2 KV heads of 16), o 64x64, gate/up 64x128, down 128x64
    assert block_macs(lm) == 4096 + 2048 + 2048 + 4096 + 3 * 64 * 128
    assert head_macs(lm) == 96 * 64 == LogitLens(lm).logits_cost()


def test_records_match_the_lens_and_do_not_depend_on_chunks(setup):
    lm, store = setup
    lens = LogitLens(lm)
    a = simulate_exits(store, {"logit": lens}, progress=False)
    b = simulate_exits(store, {"logit": lens}, chunk_size=3, block_rows=2, progress=False)
    h, K = store.hidden("test"), store.num_blocks
    assert a.levels == list(range(K)) and a.num_samples == 24
    for k in range(K):
        probs = torch.softmax(lm.adapter.head(h[:, k]).double(), -1)
        top = probs.topk(2, -1)
        assert torch.equal(a.lenses["logit"].top1[k], top.indices[:, 0])
        torch.testing.assert_close(a.lenses["logit"].confidence["max_prob"][k], top.values[:, 0].float())
        torch.testing.assert_close(a.lenses["logit"].confidence["margin"][k],
                                   (top.values[:, 0] - top.values[:, 1]).float())
    for m in a.measures:
        torch.testing.assert_close(a.lenses["logit"].confidence[m], b.lenses["logit"].confidence[m])
    assert torch.equal(a.lenses["logit"].top1, b.lenses["logit"].top1)


@pytest.mark.parametrize("field_metrics", [True, False])
def test_evaluation_keeps_what_the_simulation_reads(setup, field_metrics, monkeypatch):
    """Records kept by an evaluation (each lens's own fast path) give the simulation of a pass of its own."""
    import onejump.evaluation.early_exit as ee
    from onejump.evaluation.evaluator import evaluate
    lm, store = setup
    K = store.num_blocks
    bank = random_bank(K, store.hidden_size, 4, seed=5)
    lenses = {"logit": LogitLens(lm), "bank": PerLevelLens(lm, bank), "one": PerLevelLens(lm, bank).jump(2)}
    passed = simulate_exits(store, lenses, progress=False)
    result = evaluate(store, lenses, field_metrics=field_metrics, block_rows=3, progress=False)
    records = {name: result.exit_records(name) for name in lenses}
    monkeypatch.setattr(ee, "_read_lenses", lambda *a, **k: pytest.fail("the store was read again"))
    kept = simulate_exits(store, lenses, records=records, progress=False)
    for name in lenses:
        assert torch.equal(kept.lenses[name].top1, passed.lenses[name].top1)
        for m in kept.measures:
            torch.testing.assert_close(kept.lenses[name].confidence[m], passed.lenses[name].confidence[m],
                                       rtol=1e-5, atol=1e-6)
        assert kept.lenses[name].check_macs == passed.lenses[name].check_macs
    part = simulate_exits(store, lenses, records=records, levels=[0, 2], progress=False)
    assert torch.equal(part.lenses["bank"].top1, passed.lenses["bank"].top1[[0, 2]])
    with pytest.raises(ConfigError, match="not \\(K, N\\)"):
        simulate_exits(store, lenses, records={"logit": (records["logit"][0][:1], records["logit"][1])},
                       progress=False)


def test_an_evaluation_without_records_gives_none(setup):
    from onejump.evaluation.evaluator import evaluate

    lm, store = setup
    result = evaluate(store, {"logit": LogitLens(lm)}, progress=False)
    old = result.only(["logit"])
    old.per_sample = {k: v for k, v in old.per_sample.items() if not k.endswith(("/top1", "/margin"))}
    assert old.exit_records("logit") is None and result.exit_records("logit") is not None


def test_always_confident_lens_exits_at_level_zero(setup):
    lm, store = setup
    sim = simulate_exits(store, {"sharp": SharpLens(lm)}, lambdas=[0.5, 1.0], progress=False)
    level0_agree = float((sim.lenses["sharp"].top1[0] == store.targets("test")).double().mean())
    for measure in sim.measures:
        c = sim.curve("sharp", measure)
        assert (c.exit_rate == 1).all() and (c.mean_blocks == 0).all() and (c.mean_checks == 1).all()
        assert (c.histogram[:, 0] == 24).all()
        np.testing.assert_allclose(c.agreement, level0_agree)
        # one check costing the head, and the head an exiting token skips: no compute at all
        np.testing.assert_allclose(c.mean_cost, 0.0, atol=1e-12)


def test_lambda_above_one_never_exits(setup):
    lm, store = setup
    K = store.num_blocks
    lens = LogitLens(lm)
    sim = simulate_exits(store, {"logit": lens}, lambdas=[1.5], progress=False)
    for measure in sim.measures:
        c = sim.curve("logit", measure)
        assert c.exit_rate[0] == 0 and c.agreement[0] == 1 and c.mean_blocks[0] == K
        assert c.mean_checks[0] == K and c.histogram[0, -1] == 24
        assert c.mean_cost[0] == pytest.approx(K + K * lens.logits_cost() / sim.block_macs)
        assert sim.saved_at("logit", measure, 0.9) is None
    assert render_exit_table(sim)[-1].count("not reached") == 6


def test_level_subset_equals_the_subset_of_a_full_simulation(setup):
    lm, store = setup
    bank = random_bank(store.num_blocks, store.hidden_size, 4, seed=3)
    lenses = {"logit": LogitLens(lm), "bank": PerLevelLens(lm, bank)}
    full = simulate_exits(store, lenses, progress=False)
    part = simulate_exits(store, lenses, levels=[2, 1], progress=False)
    assert part.levels == [1, 2]
    for name in lenses:
        for m in full.measures:
            a, b = full.curve(name, m, levels=[1, 2]), part.curve(name, m)
            for x, y in zip(a, b):
                np.testing.assert_allclose(x, y)
    with pytest.raises(ConfigError):
        part.curve("logit", "margin", levels=[0])
    with pytest.raises(ConfigError):
        simulate_exits(store, lenses, levels=[store.num_blocks], progress=False)
    with pytest.raises(ConfigError):
        simulate_exits(store, lenses, measures=["entropy"], progress=False)


def brute_force(conf, correct, levels, K, lam, check, head, block):
    """The exit rule, one token at a time."""
    out = []
    for n in range(conf.shape[1]):
        blocks, checks, exited, agree = K, 0, False, True
        for j, k in enumerate(levels):
            checks += 1
            if float(conf[j, n]) >= np.float32(lam):
                blocks, exited, agree = k, True, bool(correct[j, n])
                break
        out.append((blocks, checks, exited, agree, blocks + (checks * check - exited * head) / block))
    return np.array(out, dtype=np.float64)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 6), st.integers(1, 30))
def test_exit_rule_matches_brute_force(seed, L, N):
    gen = torch.Generator().manual_seed(seed)
    K = L + 2
    levels = sorted(torch.randperm(K - 1, generator=gen)[:L].tolist())
    # few distinct values, so that ties with lambda are common
    conf = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0])[torch.randint(0, 5, (L, N), generator=gen)]
    top1 = torch.randint(0, 3, (L, N), generator=gen)
    targets = torch.randint(0, 3, (N,), generator=gen)
    lambdas = [0.0, 0.25, 0.3, 0.5, 0.9, 1.0, 1.01]
    sim = ExitSimulation(K, "test", levels, lambdas, ["max_prob"], 7, 11, targets,
                         {"x": LensExits("x", 3, 0, top1, {"max_prob": conf})})
    c = sim.curve("x", "max_prob")
    first = first_exit(conf, lambdas)
    for i, lam in enumerate(lambdas):
        ref = brute_force(conf, top1 == targets, levels, K, lam, 3, 11, 7)
        assert np.allclose([c.mean_blocks[i], c.mean_checks[i], c.exit_rate[i], c.agreement[i], c.mean_cost[i]],
                           ref.mean(0))
        for n in range(N):
            hits = [j for j in range(L) if float(conf[j, n]) >= np.float32(lam)]
            assert int(first[i, n]) == (hits[0] if hits else L)
        assert c.histogram[i].sum() == N


def hand_sim(check_macs=1):
    """K=4, levels 0..3, 4 tokens; block = 2 MACs, head = 4 MACs."""
    conf = torch.tensor([[0.0, 0.0, 0.0, 0.0],
                         [0.9, 0.2, 0.0, 0.0],
                         [0.9, 0.95, 0.95, 0.1],
                         [1.0, 1.0, 1.0, 0.1]])
    top1 = torch.tensor([[0, 0, 0, 0], [7, 1, 1, 1], [7, 1, 9, 1], [7, 1, 9, 1]])
    targets = torch.tensor([7, 1, 2, 3])
    return ExitSimulation(4, "test", [0, 1, 2, 3], [0.5, 0.9, 0.99], ["max_prob"], 2, 4, targets,
                          {"x": LensExits("x", check_macs, 10, top1, {"max_prob": conf})})


def test_hand_checked_curve_and_summary():
    sim = hand_sim()
    c = sim.curve("x", "max_prob")
    # lambda 0.5: exits at 1, 2, 2, none; lambda 0.9: the same; lambda 0.99: 3, 3, 3, none
    np.testing.assert_allclose(c.mean_blocks, [(1 + 2 + 2 + 4) / 4] * 2 + [(3 + 3 + 3 + 4) / 4])
    np.testing.assert_allclose(c.agreement, [0.75, 0.75, 0.75])
    np.testing.assert_allclose(c.mean_checks, [(2 + 3 + 3 + 4) / 4] * 2 + [4.0])
    # cost: blocks + (checks * 1 - exited * 4) / 2
    np.testing.assert_allclose(c.mean_cost[0], (1 + 2 + 2 + 4) / 4 + ((2 + 3 + 3 + 4) - 3 * 4) / 4 / 2)
    assert c.histogram.tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 0, 1], [0, 0, 0, 3, 1]]
    best = sim.saved_at("x", "max_prob", 0.7, include_checks=False)
    assert best.lam == 0.5 and best.blocks_saved == pytest.approx(4 - 9 / 4)
    assert best.fraction_saved == pytest.approx((4 - 9 / 4) / 4)
    assert sim.saved_at("x", "max_prob", 0.9) is None
    rows = sim.summary(agreements=[0.7, 0.9])
    assert [r["checks_included"] is None for r in rows] == [False, True]


def test_json_round_trip_table_and_figure(setup, tmp_path):
    lm, store = setup
    bank = random_bank(store.num_blocks, store.hidden_size, 4, seed=3)
    sim = simulate_exits(store, {"logit lens": LogitLens(lm), "bank": PerLevelLens(lm, bank)}, progress=False)
    sim.save(tmp_path / "exits")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "exits" / "exits.json").stat().st_mode & 0o777 == 0o666 & ~umask  # as open() makes it
    back = ExitSimulation.load(tmp_path / "exits")
    assert back.to_dict() == json.loads(json.dumps(sim.to_dict()))
    data = json.loads((tmp_path / "exits" / "exits.json").read_text())
    assert set(data["curves"]) == {"logit lens", "bank"} and len(data["summary"]) == 2 * 2 * 3
    assert data["lenses"]["bank"]["check_macs"] == 4 * (64 + 4 + 96)  # code, norm scale, logits
    front = sim.frontier("bank")
    assert front[0]["agreement"] <= front[-1]["agreement"] == 1.0
    assert all(a["cost_blocks"] <= b["cost_blocks"] and a["agreement"] < b["agreement"]
               for a, b in zip(front, front[1:]))
    lines = render_exit_table(sim)
    assert sum(line.startswith("| logit lens") for line in lines) == 2 and len(lines) == 4 + 4
    assert render_exit_table(data) == lines
    for source in (sim, data):
        path = plot_exit_frontier(source, tmp_path / "fig" / "frontier.png")
        assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"
        path.unlink()
    section, figs = exit_report_section(sim, tmp_path)
    assert figs[0].is_file() and any(figs[0].name in line for line in section)
    (tmp_path / "exits" / "exits.json").write_text("{}")
    with pytest.raises(StoreError):
        ExitSimulation.load(tmp_path / "exits")


def test_default_grid_is_sorted_in_unit_interval():
    grid = default_lambdas()
    assert grid == sorted(grid) and grid[0] == 0.0 and grid[-1] == 1.0 and len(set(grid)) == len(grid)

"""Figures a reader can trust: axes that start where compute starts, labelled colour bars, legends clear of
tick labels, and a KL colour scale that shows every lens."""

import glob
import json
import re
from pathlib import Path

import numpy as np
import pytest

from onejump.experiment import figures
from onejump.experiment.compare import compare
from onejump.experiment.compare_render import gap_plot
from onejump.experiment.exit_figures import frontier_figure
from onejump.experiment.lens_table import canonical_results
from onejump.trajectory import PredictionTrajectory
from onejump.trajectory_plot import html_page, plot_trajectories

DOCS = Path(__file__).resolve().parent.parent / "docs" / "results"


@pytest.fixture(scope="module")
def smol():
    return canonical_results(json.loads((DOCS / "smollm2-135m" / "results.json").read_text()))


def test_frontier_compute_is_never_below_zero_and_both_panels_have_legends(smol):
    sim = smol["early_exit"]
    head = sim["head_macs"] / sim["block_macs"]
    assert head > 5  # SmolLM2's head costs 8 blocks: the simulation's mean_cost goes below 0 for cheap checks
    cheapest = min(min(c["mean_cost"]) for lens in sim["curves"].values() for c in lens.values())
    assert cheapest < 0
    fig = frontier_figure(sim)
    full, zoom = fig.axes[:2]
    xs = np.concatenate([line.get_xdata() for line in full.get_lines()])
    assert xs.min() >= 0
    star = next(line for line in full.get_lines() if line.get_label() == "full model")
    assert star.get_xdata()[0] == pytest.approx(sim["num_blocks"] + head)
    assert full.get_legend() is not None and zoom.get_legend() is not None
    assert zoom.get_xlim()[0] >= 0 and "head" in full.get_xlabel()


def test_reuse_heatmaps_colour_bars_say_what_they_show(smol, monkeypatch, tmp_path):
    saved = {}

    def keep(fig, path, plt):
        saved[Path(path).name] = [ax.get_ylabel() for ax in fig.axes]
        plt.close(fig)
        return path

    monkeypatch.setattr(figures, "_save", keep)
    results = {k: v for k, v in smol.items() if k != "beyond"}
    figures.make_figures(results, tmp_path)
    labels = saved["reuse_heatmaps.png"]
    assert len(labels) == 4  # two heatmaps, two colour bars
    assert any("D[m][k]" in lab for lab in labels[2:]) and any("precision@1" in lab for lab in labels[2:])


def test_compare_legends_sit_below_the_tick_labels():
    summary = compare(sorted(glob.glob(str(DOCS / "*" / "results.json"))))
    fig = gap_plot(summary)
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        legend = ax.get_legend().get_window_extent(renderer)
        ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
        assert ticks and legend.y1 <= min(t.y0 for t in ticks)
        assert legend.y1 <= ax.xaxis.label.get_window_extent(renderer).y0


def _trajectory(name, kl):
    L, T = kl.shape
    return PredictionTrajectory(
        lens_name=name, input_ids=list(range(T)), input_tokens=[f"t{i}" for i in range(T)],
        level_labels=[f"level {k}" for k in range(L - 1)] + ["output"], top_ids=np.zeros((L, T), dtype=int),
        top_tokens=[["x"] * T for _ in range(L)], probs=np.full((L, T), 0.5), kl=kl, entropy=np.ones((L, T)),
        topk_ids=np.zeros((L, T, 1), dtype=int), topk_tokens=[[["x"]] * T for _ in range(L)],
        topk_probs=np.full((L, T, 1), 0.5))


def test_kl_colours_show_a_good_lens_beside_the_logit_lens_at_level_0():
    rng = np.random.default_rng(0)
    logit = np.vstack([np.full((1, 6), 120.0), rng.uniform(1, 10, (4, 6)), np.zeros((1, 6))])
    tuned = np.vstack([rng.uniform(0.01, 0.3, (5, 6)), np.zeros((1, 6))])
    trajs = [_trajectory("logit", logit), _trajectory("tuned", tuned)]
    page = html_page(trajs, "kl")
    assert "log scale from" in page
    fig = plot_trajectories(trajs, "kl")
    image = fig.axes[1].get_images()[0]
    shades = image.norm(image.get_array())
    assert np.ptp(shades[:-1]) > 0.2  # the tuned lens spans a fifth of the scale (a linear one: under 0.003)
    assert "log scale" in fig.axes[-1].get_ylabel()


def test_a_trajectory_whose_kl_is_zero_everywhere_draws():
    zero = _trajectory("exact", np.zeros((4, 3)))
    page = html_page([zero], "kl")
    assert len(set(re.findall(r"background:(#[0-9a-f]{6})", page))) == 1  # every cell the lightest colour
    plot_trajectories([zero], "kl")


def test_generate_json_fields_are_each_defined_and_not_ambiguous():
    from onejump.generation.common import GenerationResult

    res = GenerationResult(tokens=[1, 2, 3, 4], seconds=0.5, mode="speculative", exit_levels=[2, 4, 4, 1],
                           layer_work=40, drafted=6, accepted=3, tested=4, rounds=3, forwards=3)
    out = res.summary(4)
    assert "acceptance_rate" not in out
    assert out["acceptance"] == 0.75 and out["accepted_per_drafted"] == 0.5 and out["tested"] == 4
    assert out["layer_work_per_token"] == 10.0
    doc = GenerationResult.summary.__doc__
    assert all(f"``{key}``" in doc for key in out), [k for k in out if f"``{k}``" not in doc]
    assert "counts the prefill" in doc

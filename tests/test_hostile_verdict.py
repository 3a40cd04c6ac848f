"""The one verdict function every claim uses: properties over intervals, regions and sample sizes."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onejump.errors import ConfigError
from onejump.evaluation.verdict import (
    HELD,
    INCONCLUSIVE,
    NOT_HELD,
    VERDICTS,
    Region,
    above,
    all_of,
    at_least,
    at_most,
    difference_interval,
    proportion_interval,
    sample_interval,
    verdict,
)

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@st.composite
def intervals(draw):
    a, b = draw(finite), draw(finite)
    return (min(a, b), max(a, b))


@st.composite
def regions(draw):
    a, b = draw(finite), draw(finite)
    kind = draw(st.sampled_from(["at_most", "at_least", "above", "between", "below_open"]))
    if kind == "at_most":
        return at_most(a)
    if kind == "at_least":
        return at_least(a)
    if kind == "above":
        return above(a)
    if kind == "below_open":
        return Region(high=a, high_open=True)
    opens = (False, False) if a == b else (draw(st.booleans()), draw(st.booleans()))
    return Region(low=min(a, b), high=max(a, b), low_open=opens[0], high_open=opens[1])


@given(intervals(), regions(), st.lists(st.floats(0, 1), min_size=1, max_size=8))
def test_verdict_agrees_with_every_point_of_the_interval(interval, region, where):
    v = verdict(interval, region)
    assert v in VERDICTS
    lo, hi = interval
    points = [lo, hi, *(lo + t * (hi - lo) for t in where)]
    inside = [region.contains(min(hi, max(lo, x))) for x in points]
    if v == HELD:
        assert all(inside)
    elif v == NOT_HELD:
        assert not any(inside)
    else:  # inconclusive: a point of the interval in the region, an end outside it
        overlap = max(lo, region.low), min(hi, region.high)
        candidates = [lo, hi, (overlap[0] + overlap[1]) / 2] if overlap[0] <= overlap[1] else [lo, hi]
        assert any(region.contains(x) for x in candidates)
        assert not (region.contains(lo) and region.contains(hi))


@given(intervals(), regions(), st.floats(0, 1), st.floats(0, 1))
def test_a_narrower_interval_never_reverses_a_decided_verdict(interval, region, s, t):
    lo, hi = interval
    a, b = sorted((lo + s * (hi - lo), lo + t * (hi - lo)))
    a, b = max(lo, a), min(hi, max(a, b))
    outer, inner = verdict(interval, region), verdict((a, b), region)
    if outer != INCONCLUSIVE:
        assert inner == outer


@given(intervals(), finite)
def test_complementary_claims_get_mirrored_verdicts(interval, bound):
    mirror = {HELD: NOT_HELD, NOT_HELD: HELD, INCONCLUSIVE: INCONCLUSIVE}
    assert verdict(interval, at_most(bound)) == mirror[verdict(interval, above(bound))]


@given(regions())
def test_no_interval_and_nan_are_inconclusive(region):
    assert verdict(None, region) == INCONCLUSIVE
    assert verdict((math.nan, 1.0), region) == INCONCLUSIVE
    with pytest.raises(ConfigError):
        verdict((1.0, 0.0), region)


def test_regions_reject_reversed_or_nan_ends():
    for low, high in ((1.0, 0.0), (math.nan, 1.0)):
        with pytest.raises(ConfigError):
            Region(low=low, high=high)
    with pytest.raises(ConfigError):
        Region(low=1.0, high=1.0, low_open=True)  # empty


@given(st.floats(-1, 1), st.integers(1, 10**7))
def test_a_zero_width_interval_is_widened_by_what_n_rows_cannot_exclude(c, n):
    lo, hi = sample_interval((c, c), n, (-1.0, 1.0))
    assert -1.0 <= lo <= c <= hi <= 1.0
    assert hi - lo > 0 or abs(c) == 1.0
    lo2, hi2 = sample_interval((c, c), n * 10, (-1.0, 1.0))
    assert lo <= lo2 and hi2 <= hi  # more rows, a narrower interval


@given(intervals(), st.integers(1, 10**6))
def test_an_interval_with_width_is_kept(interval, n):
    lo, hi = interval
    if hi > lo:
        assert sample_interval(interval, n, (-math.inf, math.inf)) == (lo, hi)
    assert sample_interval(interval, None, (-1.0, 1.0)) is None and sample_interval(None, n, (0.0, 1.0)) is None


def test_twenty_rows_alike_cannot_show_within_three_points():
    assert verdict(sample_interval((0.0, 0.0), 20, (-1.0, 1.0)), at_most(0.03)) == INCONCLUSIVE
    assert verdict(sample_interval((0.0, 0.0), 10**6, (-1.0, 1.0)), at_most(0.03)) == HELD


@given(st.integers(1, 10**6), st.floats(0, 1))
def test_wilson_interval_holds_the_observed_proportion(n, f):
    k = round(f * n)
    lo, hi = proportion_interval(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0 and hi > lo
    lo2, hi2 = proportion_interval(4 * k, 4 * n)
    assert hi2 - lo2 < hi - lo


def test_wilson_refuses_impossible_counts():
    for k, n in ((3, 2), (-1, 5), (0, 0)):
        with pytest.raises(ConfigError):
            proportion_interval(k, n)


@given(st.lists(st.floats(0, 1), min_size=1, max_size=12), st.lists(st.floats(0, 1), min_size=1, max_size=12),
       st.integers(1, 10**6))
def test_difference_interval_holds_the_point_difference(a, b, n):
    lo, hi = difference_interval(a, b, n)
    d = sum(a) / len(a) - sum(b) / len(b)
    assert -1.0 <= lo <= d + 1e-12 and d - 1e-12 <= hi <= 1.0 and hi > lo
    assert difference_interval(a, b, None) is None


@given(st.lists(st.sampled_from(VERDICTS), max_size=5))
def test_a_claim_of_parts_holds_only_when_every_part_does(parts):
    v = all_of(parts)
    assert (v == HELD) == (bool(parts) and set(parts) == {HELD})
    assert (v == NOT_HELD) == (NOT_HELD in parts)


"""Seed statistics: Welch's test against scipy, the incomplete beta, degenerate cases."""

import math

import numpy as np
import pytest
import torch
from scipy import special
from scipy import stats as sps

from radengine.eval.stats import (
    betainc,
    compare,
    mean_std,
    relative_delta,
    student_t_sf,
    summarize,
    welch_ttest,
)

# (a, b): study-sized samples (4 seeds), unequal sizes and spreads, a tiny p-value, a
# sample with zero variance against one without, and large samples.
CASES = [
    ([93.54, 93.61, 93.40, 93.72], [94.54, 94.31, 94.70, 94.49]),
    ([90.1, 90.9, 89.7], [90.4, 91.8, 88.9, 92.2, 90.0]),
    ([1.0, 2.0, 3.0, 4.0], [100.0, 101.0, 102.0, 103.5]),
    ([0.5, 0.5, 0.5, 0.5], [0.4, 0.55, 0.47, 0.52]),
    ([0.0, 1e-9, 2e-9], [5e-10, 1.5e-9, 2.5e-9, 3e-9]),
]


# scipy warns about its own moment precision on the near-constant cases.
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("a,b", CASES)
def test_welch_matches_scipy(a, b):
    got = welch_ttest(a, b)
    want = sps.ttest_ind(a, b, equal_var=False)
    assert got.t == pytest.approx(float(want.statistic), rel=1e-12)
    assert got.df == pytest.approx(float(want.df), rel=1e-12)
    assert got.p_value == pytest.approx(float(want.pvalue), rel=1e-10, abs=1e-15)


def test_welch_matches_scipy_on_random_samples():
    rng = np.random.default_rng(1234)
    for _ in range(50):
        na, nb = rng.integers(2, 30, size=2)
        a = rng.normal(0, rng.uniform(0.1, 3), na)
        b = rng.normal(rng.uniform(-2, 2), rng.uniform(0.1, 3), nb)
        got = welch_ttest(torch.from_numpy(a), b.tolist())
        want = sps.ttest_ind(a, b, equal_var=False)
        assert got.p_value == pytest.approx(float(want.pvalue), rel=1e-9, abs=1e-14)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_welch_degenerate_cases():
    # n < 2: undefined.
    r = welch_ttest([1.0], [1.0, 2.0, 3.0])
    assert math.isnan(r.t) and math.isnan(r.df) and math.isnan(r.p_value)
    # Zero variance on both sides, different means: scipy agrees (t = -inf, p = 0).
    r = welch_ttest([1.0, 1.0, 1.0], [2.0, 2.0])
    want = sps.ttest_ind([1.0, 1.0, 1.0], [2.0, 2.0], equal_var=False)
    assert r.t == -math.inf and r.p_value == 0.0 == float(want.pvalue)
    # Zero variance on both sides, equal means: p = 1 by definition (scipy says NaN).
    r = welch_ttest([0.1, 0.1, 0.1], [0.1, 0.1])
    assert r.t == 0.0 and r.p_value == 1.0
    with pytest.raises(ValueError, match="a is empty"):
        welch_ttest([], [1.0, 2.0])
    with pytest.raises(ValueError, match="b contains NaN"):
        welch_ttest([1.0, 2.0], [1.0, float("nan")])


def test_betainc_and_t_tail_match_scipy():
    for a in (0.5, 1.0, 2.5, 17.0, 250.0):
        for b in (0.5, 3.0, 40.0):
            for x in (0.0, 1e-6, 0.2, 0.5, 0.77, 0.999, 1.0):
                assert betainc(a, b, x) == pytest.approx(
                    special.betainc(a, b, x), rel=1e-11, abs=1e-300
                )
    for df in (1.0, 2.7, 30.0, 1e4):
        for t in (-40.0, -2.0, 0.0, 0.3, 5.0, 200.0):
            assert student_t_sf(t, df) == pytest.approx(sps.t.sf(t, df), rel=1e-10, abs=1e-300)
    with pytest.raises(ValueError, match="x must be in"):
        betainc(1.0, 1.0, 1.5)
    with pytest.raises(ValueError, match="df"):
        student_t_sf(1.0, 0.0)


def test_summary_delta_and_compare():
    vals = [93.54, 93.61, 93.40, 93.72]
    m, s = mean_std(vals)
    assert m == pytest.approx(np.mean(vals)) and s == pytest.approx(np.std(vals, ddof=1))
    assert (
        summarize(torch.tensor(vals)).format(2)
        == f"{np.mean(vals):.2f} ± {np.std(vals, ddof=1):.2f}"
    )
    one = summarize([0.9])
    assert one.n == 1 and math.isnan(one.std) and one.format(1, scale=100) == "90.0"
    assert summarize([0.3, 0.3, 0.3]).std == 0.0
    assert relative_delta(94.54, 93.54) == pytest.approx(1.0 / 93.54)
    assert relative_delta(-1.0, -2.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="baseline"):
        relative_delta(1.0, 0.0)
    base = [94.54, 94.31, 94.70, 94.49]
    c = compare((v for v in vals), base)  # a one-shot iterable is fine
    assert c.delta == pytest.approx(np.mean(vals) - np.mean(base))
    assert c.relative_delta == pytest.approx(c.delta / np.mean(base))
    assert c.test.p_value == pytest.approx(float(sps.ttest_ind(vals, base, equal_var=False).pvalue))
    assert c.significant(0.05)

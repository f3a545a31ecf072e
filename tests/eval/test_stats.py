"""Seed statistics on known data: Welch's test and its confidence interval against R's
published output, Holm's adjustment on textbook examples, the degenerate cases."""

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from radengine.eval.stats import (
    compare,
    delta_ci,
    holm,
    mean_std,
    relative_delta,
    summarize,
    welch_ttest,
)

# R's `sleep` data (Cushny & Peebles): extra hours of sleep under two drugs. R prints for
# t.test(extra ~ group, data = sleep) (Welch by default):
#   t = -1.8608, df = 17.776, p-value = 0.07939
#   95 percent confidence interval: -3.3654832  0.2054832
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_welch_and_ci_reproduce_r_on_the_sleep_data():
    r = welch_ttest(SLEEP_1, SLEEP_2)
    assert r.t == pytest.approx(-1.8608, abs=5e-5)
    assert r.df == pytest.approx(17.776, abs=5e-4)
    assert r.p_value == pytest.approx(0.07939, abs=5e-6)
    c = compare(SLEEP_1, SLEEP_2)
    assert c.delta == pytest.approx(0.75 - 2.33)
    assert (c.ci_low, c.ci_high) == pytest.approx((-3.3654832, 0.2054832), abs=5e-8)
    assert c.confidence == 0.95 and not c.significant()
    # a 90% interval is narrower and, as p < 0.10, excludes 0
    lo, hi = delta_ci(c.test, c.delta, 0.90)
    assert c.ci_low < lo < hi < 0.0 < c.ci_high


def test_welch_by_hand_and_ci_against_scipy_interval():
    # Study-sized samples: t and df from the formulas, the interval from scipy's own.
    a, b = np.array([93.54, 93.61, 93.40, 93.72]), np.array([94.54, 94.31, 94.70, 94.49, 94.1])
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    c = compare(torch.from_numpy(a), b.tolist())
    assert c.test.t == pytest.approx(t, rel=1e-12)
    assert c.test.df == pytest.approx(df, rel=1e-12)
    assert c.test.se == pytest.approx(math.sqrt(va + vb), rel=1e-12)
    assert c.test.p_value == pytest.approx(2 * sps.t.sf(abs(t), df), rel=1e-9)
    want = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (c.ci_low, c.ci_high) == pytest.approx((want.low, want.high), rel=1e-12)


def test_p_below_alpha_exactly_when_the_interval_excludes_zero():
    rng = np.random.default_rng(1234)
    for _ in range(40):
        na, nb = rng.integers(2, 12, size=2)
        a = rng.normal(0, rng.uniform(0.1, 3), na)
        b = rng.normal(rng.uniform(-2, 2), rng.uniform(0.1, 3), nb)
        c = compare(a.tolist(), b.tolist())
        assert c.ci_low <= c.delta <= c.ci_high
        assert (c.test.p_value < 0.05) == (c.ci_low > 0 or c.ci_high < 0)


@pytest.mark.filterwarnings("error")  # no scipy warning leaks out of the degenerate cases
def test_welch_degenerate_cases():
    # n < 2: undefined, no interval.
    c = compare([1.0], [1.0, 2.0, 3.0])
    assert math.isnan(c.test.t) and math.isnan(c.test.df) and math.isnan(c.test.p_value)
    assert math.isnan(c.ci_low) and math.isnan(c.ci_high) and c.delta == -1.0
    # Zero variance on both sides, different means: certain (t = -inf, p = 0), a point CI.
    c = compare([1.0, 1.0, 1.0], [2.0, 2.0])
    assert c.test.t == -math.inf and c.test.p_value == 0.0 and (c.ci_low, c.ci_high) == (-1, -1)
    # Zero variance on both sides, equal means: no evidence of a difference.
    r = welch_ttest([0.1, 0.1, 0.1], [0.1, 0.1])
    assert r.t == 0.0 and r.p_value == 1.0
    # Zero variance on one side: df = n - 1 of the other.
    r = welch_ttest([0.5, 0.5, 0.5, 0.5], [0.4, 0.55, 0.47, 0.52])
    assert r.df == pytest.approx(3.0) and 0 < r.p_value < 1
    with pytest.raises(ValueError, match="a is empty"):
        welch_ttest([], [1.0, 2.0])
    with pytest.raises(ValueError, match="b contains NaN"):
        welch_ttest([1.0, 2.0], [1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        delta_ci(r, 0.0, 1.0)


def test_holm_textbook_examples():
    # Wikipedia's Holm-Bonferroni example: at alpha 0.05 only H1 (0.01) and H4 (0.005) are
    # rejected. Adjusted: 4 * 0.005, 3 * 0.01, 2 * 0.03, then max(0.06, 1 * 0.04).
    adj = holm([0.01, 0.04, 0.03, 0.005])
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [p < 0.05 for p in adj] == [True, False, False, True]
    # R: p.adjust(c(0.01, 0.02, 0.03, 0.04, 0.05), "holm") -> 0.05 0.08 0.09 0.09 0.09
    assert holm([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx([0.05, 0.08, 0.09, 0.09, 0.09])
    # capped at 1; NaN (no test) stays NaN and does not count in m
    adj = holm([0.7, math.nan, 0.3])
    assert adj[0] == pytest.approx(0.7) and math.isnan(adj[1]) and adj[2] == pytest.approx(0.6)
    assert holm([0.7, 0.6]) == [1.0, 1.0]
    assert holm([]) == [] and holm([0.03]) == [0.03]


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
    assert c.significant(0.05) and c.ci_high < 0

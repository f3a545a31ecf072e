"""Statistics over seeds for the transfer table: mean +- std, deltas with confidence
intervals, Welch's t-test and Holm's correction for multiple comparisons.

Study A reports the mean of 4 seeds per setting and tests differences with Welch's
unequal-variance t-test; study B reports mean and standard deviation over trials. The test
and the Student t quantiles are scipy's (``scipy.stats.ttest_ind(equal_var=False)``,
``scipy.stats.t.ppf``), imported when first needed so that ``import radengine`` stays light.

For two samples ``a`` (the setting) and ``b`` (the baseline) with sizes ``n_a, n_b`` and
sample variances ``s_a^2, s_b^2``::

    delta = mean(a) - mean(b),   se^2 = s_a^2 / n_a + s_b^2 / n_b,
    df    = se^4 / ((s_a^2 / n_a)^2 / (n_a - 1) + (s_b^2 / n_b)^2 / (n_b - 1))
    CI    = delta -+ t.ppf(1 - (1 - confidence) / 2, df) * se

(Welch-Satterthwaite degrees of freedom; the interval is the one the test inverts, so
``p < 1 - confidence`` exactly when the interval excludes 0.)

Degenerate cases of :func:`welch_ttest` and :func:`compare`:

- fewer than 2 values on either side: the variance is undefined, so ``t``, ``df``,
  ``p_value`` and the interval are NaN (an empty side is a ValueError);
- zero variance on both sides and equal means (e.g. 100% on every seed of both): no
  evidence of a difference, ``t = 0``, ``p_value = 1`` and the interval is ``[0, 0]``
  (scipy returns NaN);
- zero variance on both sides and different means: ``t = +-inf``, ``p_value = 0`` (as
  scipy) and the interval is ``[delta, delta]``;
- zero variance on one side only: the ordinary formulas (``df`` is then ``n - 1`` of the
  other side).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import Tensor

__all__ = [
    "Comparison",
    "Summary",
    "WelchResult",
    "compare",
    "delta_ci",
    "holm",
    "mean_std",
    "relative_delta",
    "summarize",
    "welch_ttest",
]

Values = Iterable[float] | Tensor


def _as_values(values: Values, name: str) -> list[float]:
    if isinstance(values, Tensor):
        out = values.detach().double().flatten().cpu().tolist()
    else:
        try:
            out = [float(v) for v in values]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be a sequence of numbers ({exc})") from exc
    if not out:
        raise ValueError(f"{name} is empty")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} contains NaN or infinite values: {out}")
    return out


def _mean_var(x: list[float]) -> tuple[float, float]:
    """Mean and sample variance (ddof=1; NaN for one value); exactly 0 for constant data."""
    n = len(x)
    if max(x) == min(x):
        return x[0], (0.0 if n > 1 else math.nan)
    mean = math.fsum(x) / n
    if n < 2:
        return mean, math.nan
    # Two-pass with the correction term (Chan et al.): accurate for tiny spreads.
    d = [v - mean for v in x]
    s = math.fsum(d)
    return mean, (math.fsum(v * v for v in d) - s * s / n) / (n - 1)


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation of one setting over its seeds.

    Attributes:
        n: number of values.
        mean: their mean.
        std: sample standard deviation (``ddof=1``, as numpy's ``std(ddof=1)``); NaN for
            a single value.
    """

    n: int
    mean: float
    std: float

    def format(self, digits: int = 2, scale: float = 1.0) -> str:
        """``"93.54 ± 0.41"``; ``scale=100`` turns fractions into percent."""
        m = self.mean * scale
        if math.isnan(self.std):
            return f"{m:.{digits}f}"
        return f"{m:.{digits}f} ± {self.std * abs(scale):.{digits}f}"


def summarize(values: Values) -> Summary:
    """:class:`Summary` of ``values`` (a sequence of floats or a tensor)."""
    x = _as_values(values, "values")
    mean, var = _mean_var(x)
    return Summary(len(x), mean, math.sqrt(var) if not math.isnan(var) else math.nan)


def mean_std(values: Values) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; NaN std for one value)."""
    s = summarize(values)
    return s.mean, s.std


def relative_delta(value: float, baseline: float) -> float:
    """``(value - baseline) / |baseline|``: 0.01 is 1% better than the baseline.

    Raises:
        ValueError: ``baseline`` is 0 (no relative change defined) or either is not finite.
    """
    value, baseline = float(value), float(baseline)
    if not math.isfinite(value):
        raise ValueError(f"value must be finite, got {value}")
    if not math.isfinite(baseline) or baseline == 0.0:
        raise ValueError(f"baseline must be finite and nonzero, got {baseline}")
    return (value - baseline) / abs(baseline)


@dataclass(frozen=True)
class WelchResult:
    """Welch's unequal-variance t-test of ``mean(a) - mean(b)``.

    Attributes:
        t: the statistic (positive when ``a`` has the larger mean).
        df: Welch-Satterthwaite degrees of freedom (NaN where undefined).
        p_value: two-sided p-value (NaN with fewer than 2 values on a side).
        se: standard error of the difference of means (NaN where undefined).
    """

    t: float
    df: float
    p_value: float
    se: float = math.nan


def welch_ttest(a: Values, b: Values) -> WelchResult:
    """Two-sided Welch's t-test, ``scipy.stats.ttest_ind(a, b, equal_var=False)``.

    Args:
        a: values of one setting (e.g. one metric over seeds).
        b: values of the other.

    Returns:
        :class:`WelchResult`; the degenerate cases are listed in the module docstring.

    Raises:
        ValueError: a side is empty or holds NaN or infinite values.
    """
    xa, xb = _as_values(a, "a"), _as_values(b, "b")
    na, nb = len(xa), len(xb)
    if na < 2 or nb < 2:
        return WelchResult(math.nan, math.nan, math.nan)
    ma, va = _mean_var(xa)
    mb, vb = _mean_var(xb)
    se2 = va / na + vb / nb
    diff = ma - mb
    if se2 == 0.0:
        if diff == 0.0:
            return WelchResult(0.0, math.nan, 1.0, 0.0)
        return WelchResult(math.copysign(math.inf, diff), math.nan, 0.0, 0.0)
    import warnings

    from scipy.stats import ttest_ind

    with warnings.catch_warnings():
        # "Precision loss occurred in moment calculation": near-constant samples, for
        # which the exact zero-variance cases above already answered.
        warnings.simplefilter("ignore", RuntimeWarning)
        res = ttest_ind(xa, xb, equal_var=False)
    return WelchResult(float(res.statistic), float(res.df), float(res.pvalue), math.sqrt(se2))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of p-values for multiple comparisons.

    The ``m`` finite p-values are sorted ascending, ``p_(1) <= ... <= p_(m)``; the adjusted
    ``p_(i)`` is ``max_{j <= i} min(1, (m - j + 1) p_(j))``. Rejecting where the adjusted
    p-value is below ``alpha`` controls the family-wise error rate at ``alpha``.

    Args:
        p_values: raw p-values; NaN entries (tests that could not be made) are left NaN
            and not counted in ``m``.

    Returns:
        The adjusted p-values, in the order given.
    """
    ps = [float(p) for p in p_values]
    order = sorted((i for i, p in enumerate(ps) if not math.isnan(p)), key=lambda i: ps[i])
    m = len(order)
    out = [math.nan] * len(ps)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out


@dataclass(frozen=True)
class Comparison:
    """One setting against a baseline, as a cell of the transfer table.

    Attributes:
        summary: the setting over its seeds.
        baseline: the baseline over its seeds.
        delta: ``summary.mean - baseline.mean``.
        relative_delta: ``delta / |baseline.mean|`` (NaN when the baseline mean is 0).
        test: Welch's t-test of the setting against the baseline.
        ci_low: lower end of the ``confidence`` interval of ``delta`` (NaN with n < 2).
        ci_high: upper end.
        confidence: the interval's confidence level.
    """

    summary: Summary
    baseline: Summary
    delta: float
    relative_delta: float
    test: WelchResult
    ci_low: float = math.nan
    ci_high: float = math.nan
    confidence: float = 0.95

    def significant(self, alpha: float = 0.05) -> bool:
        """Whether the p-value is below ``alpha`` (False when it is NaN)."""
        return self.test.p_value < alpha


def delta_ci(test: WelchResult, delta: float, confidence: float = 0.95) -> tuple[float, float]:
    """The Welch confidence interval of a difference of means (see the module docstring).

    Args:
        test: the Welch test of the two samples (its ``df`` and ``se``).
        delta: the difference of their means.
        confidence: the level, in (0, 1).

    Returns:
        ``(low, high)``; NaN where a side has fewer than 2 values, ``(delta, delta)`` when
        both sides have zero variance.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if math.isnan(test.se):
        return math.nan, math.nan
    if test.se == 0.0:
        return delta, delta
    from scipy.stats import t as student_t

    half = float(student_t.ppf(1.0 - (1.0 - confidence) / 2.0, test.df)) * test.se
    return delta - half, delta + half


def compare(values: Values, baseline_values: Values, confidence: float = 0.95) -> Comparison:
    """Summaries, deltas with their confidence interval, and Welch's test vs a baseline.

    Args:
        values: the setting's metric over seeds.
        baseline_values: the baseline's metric over seeds.
        confidence: level of the interval of the delta.

    Returns:
        The :class:`Comparison`.
    """
    x = _as_values(values, "values")
    xb = _as_values(baseline_values, "baseline_values")
    s, base = summarize(x), summarize(xb)
    delta = s.mean - base.mean
    rel = delta / abs(base.mean) if base.mean != 0 else math.nan
    test = welch_ttest(x, xb)
    low, high = delta_ci(test, delta, confidence)
    return Comparison(s, base, delta, rel, test, low, high, confidence)

"""Statistics over seeds for the transfer table: mean +- std, deltas, Welch's t-test.

Study A reports the mean of 4 seeds per setting and tests differences with Welch's
unequal-variance t-test; study B reports mean and standard deviation over trials. The
samples here are tiny (a handful of seeds), so everything is plain float64 Python: no
scipy. The Student t distribution is evaluated through the regularised incomplete beta
function,

    P(|T| >= |t|) = I_x(df / 2, 1 / 2),   x = df / (df + t^2),

with ``I`` from its continued fraction (modified Lentz), which keeps full relative
precision for tiny p-values (it never forms ``1 - cdf``).

Degenerate cases of :func:`welch_ttest` (scipy's ``ttest_ind(equal_var=False)`` agrees on
all but the second):

- fewer than 2 values on either side: the variance is undefined, so ``t``, ``df`` and
  ``p_value`` are NaN (an empty side is a ValueError);
- zero variance on both sides and equal means (e.g. 100% on every seed of both): no
  evidence of a difference, ``t = 0`` and ``p_value = 1`` (scipy returns NaN);
- zero variance on both sides and different means: the difference is certain,
  ``t = +-inf`` and ``p_value = 0``;
- zero variance on one side only: the ordinary formula (``df`` is then ``n - 1`` of the
  other side).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from torch import Tensor

__all__ = [
    "Comparison",
    "Summary",
    "WelchResult",
    "betainc",
    "compare",
    "mean_std",
    "relative_delta",
    "student_t_sf",
    "summarize",
    "welch_ttest",
]

Values = Iterable[float] | Tensor

_EPS = 1e-15
_TINY = 1e-300
_MAX_ITER = 100_000


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


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of I_x(a, b) (times B(a, b) x^-a (1-x)^-b a), modified Lentz."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_ITER + 1):
        m2 = 2 * m
        # Even step: d_{2m} = m (b - m) x / ((a + 2m - 1)(a + 2m)).
        num = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + num / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        # Odd step: d_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1)).
        num = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + num / c
        c = c if abs(c) > _TINY else _TINY
        step = d * c
        h *= step
        if abs(step - 1.0) < _EPS:
            return h
    raise RuntimeError(f"incomplete beta continued fraction did not converge (a={a}, b={b})")


def _betainc(a: float, b: float, x: float, y: float) -> float:
    """I_x(a, b) with ``y = 1 - x`` given separately (no cancellation near x = 1)."""
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    )
    front = math.exp(log_front)
    # The fraction converges fast for x < (a + 1) / (a + b + 2); otherwise use the symmetry
    # I_x(a, b) = 1 - I_{1-x}(b, a).
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, y) / b


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)``.

    Args:
        a: first shape parameter, > 0.
        b: second shape parameter, > 0.
        x: in ``[0, 1]``.

    Returns:
        ``I_x(a, b)`` in float64 (agrees with ``scipy.special.betainc`` to ~1e-14).
    """
    a, b, x = float(a), float(b), float(x)
    if not (a > 0 and math.isfinite(a)):
        raise ValueError(f"a must be positive and finite, got {a}")
    if not (b > 0 and math.isfinite(b)):
        raise ValueError(f"b must be positive and finite, got {b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    return _betainc(a, b, x, 1.0 - x)


def student_t_sf(t: float, df: float) -> float:
    """Upper tail ``P(T > t)`` of Student's t with ``df > 0`` degrees of freedom."""
    t, df = float(t), float(df)
    if not (df > 0 and math.isfinite(df)):
        raise ValueError(f"df must be positive and finite, got {df}")
    if math.isnan(t):
        raise ValueError("t is NaN")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tt = t * t
    # P(|T| >= |t|) = I_{df/(df+t^2)}(df/2, 1/2); the one-sided tail is half of it.
    two_sided = _betainc(df / 2.0, 0.5, df / (df + tt), tt / (df + tt))
    return 0.5 * two_sided if t > 0 else 1.0 - 0.5 * two_sided


@dataclass(frozen=True)
class WelchResult:
    """Welch's unequal-variance t-test of ``mean(a) - mean(b)``.

    Attributes:
        t: the statistic (positive when ``a`` has the larger mean).
        df: Welch-Satterthwaite degrees of freedom (NaN where undefined).
        p_value: two-sided p-value.
    """

    t: float
    df: float
    p_value: float


def welch_ttest(a: Values, b: Values) -> WelchResult:
    """Two-sided Welch's t-test (``scipy.stats.ttest_ind(a, b, equal_var=False)``).

    Args:
        a: values of one setting (e.g. one metric over seeds).
        b: values of the other.

    Returns:
        :class:`WelchResult`; the degenerate cases are listed in the module docstring.
    """
    xa, xb = _as_values(a, "a"), _as_values(b, "b")
    na, nb = len(xa), len(xb)
    ma, va = _mean_var(xa)
    mb, vb = _mean_var(xb)
    if na < 2 or nb < 2:
        return WelchResult(math.nan, math.nan, math.nan)
    sa, sb = va / na, vb / nb
    se2 = sa + sb
    diff = ma - mb
    if se2 == 0.0:
        if diff == 0.0:
            return WelchResult(0.0, math.nan, 1.0)
        return WelchResult(math.copysign(math.inf, diff), math.nan, 0.0)
    t = diff / math.sqrt(se2)
    df = se2 * se2 / (sa * sa / (na - 1) + sb * sb / (nb - 1))
    tt = t * t
    p = _betainc(df / 2.0, 0.5, df / (df + tt), tt / (df + tt))
    return WelchResult(t, df, min(1.0, p))


@dataclass(frozen=True)
class Comparison:
    """One setting against a baseline, as a row of the transfer table.

    Attributes:
        summary: the setting over its seeds.
        baseline: the baseline over its seeds.
        delta: ``summary.mean - baseline.mean``.
        relative_delta: ``delta / |baseline.mean|`` (NaN when the baseline mean is 0).
        test: Welch's t-test of the setting against the baseline.
    """

    summary: Summary
    baseline: Summary
    delta: float
    relative_delta: float
    test: WelchResult

    def significant(self, alpha: float = 0.05) -> bool:
        """Whether the p-value is below ``alpha`` (False when it is NaN)."""
        return self.test.p_value < alpha


def compare(values: Values, baseline_values: Values) -> Comparison:
    """Summaries, absolute and relative deltas and Welch's test of a setting vs a baseline.

    Args:
        values: the setting's metric over seeds.
        baseline_values: the baseline's metric over seeds.
    """
    x = _as_values(values, "values")
    xb = _as_values(baseline_values, "baseline_values")
    s, base = summarize(x), summarize(xb)
    rel = (s.mean - base.mean) / abs(base.mean) if base.mean != 0 else math.nan
    return Comparison(s, base, s.mean - base.mean, rel, welch_ttest(x, xb))

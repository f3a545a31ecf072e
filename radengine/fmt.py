"""How metrics look to people. MLflow, results.json and CSV files keep fractions (0.8854);
everything printed for a person shows them in percent (88.54%), through :func:`percent`."""

from __future__ import annotations

import math

__all__ = ["percent"]


def percent(value: float | None, digits: int = 2) -> str:
    """A fraction (accuracy, AUC, Dice, a share of time...) as a percentage for people.

    Args:
        value: The fraction, e.g. 0.8854; None, NaN or an infinity shows as ``n/a``.
        digits: Decimals after the point.

    Returns:
        E.g. ``88.54%``, or ``n/a``.

    Examples:
        >>> percent(0.8854)
        '88.54%'
        >>> percent(float("nan"))
        'n/a'
    """
    if value is None:
        return "n/a"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(v):
        return "n/a"
    return f"{100 * v:.{digits}f}%"

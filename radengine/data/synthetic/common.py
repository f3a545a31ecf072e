"""Helpers shared by the synthetic generators: value ranges, argument checks (each error names
the offending argument) and small numerical tools (separable Gaussian blur, smooth profiles)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from radengine.data.synthetic.labels import (
    BODY_REGIONS,
)

HU_MIN = -1024
HU_MAX = 3071
_MIN_SIZE, _MAX_SIZE = 32, 2048  # pixels per side that the generators accept


# --------------------------------------------------------------------------------------------
# Argument checks (each error names the offending argument)
# --------------------------------------------------------------------------------------------
def _check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def _region_id(value: object, name: str = "regions") -> int:
    """Accept a region name or id and return the id."""
    if isinstance(value, str) and value in BODY_REGIONS:
        return BODY_REGIONS.index(value)
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if is_int and 0 <= value < len(BODY_REGIONS):
        return int(value)
    raise ValueError(f"{name}: unknown body region {value!r}; expected one of {BODY_REGIONS}")


def _region_ids(regions: Sequence[str | int] | str) -> list[int]:
    if isinstance(regions, str):
        regions = [regions]
    ids = [_region_id(r) for r in regions]
    if not ids:
        raise ValueError("regions must name at least one body region")
    if len(set(ids)) != len(ids):
        raise ValueError(f"regions contains duplicates: {list(regions)!r}")
    return ids


# --------------------------------------------------------------------------------------------
# Small numerical helpers
# --------------------------------------------------------------------------------------------
def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, math.ceil(3.0 * sigma))
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


def _gaussian_blur(a: np.ndarray, sigma: float, axes: Sequence[int]) -> np.ndarray:
    """Separable Gaussian blur of a float32 array along ``axes`` (edge-replicating borders).

    Implemented as a sum of shifted copies: for the small kernels used here (sigma of a few
    pixels) that is faster in numpy than an FFT and needs no scipy.
    """
    if sigma <= 0:
        return a
    kernel = _gaussian_kernel(sigma)
    radius = len(kernel) // 2
    out = a
    for axis in axes:
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        length = out.shape[axis]
        acc = np.zeros_like(out)
        index: list[slice] = [slice(None)] * out.ndim
        for i, weight in enumerate(kernel):
            index[axis] = slice(i, i + length)
            acc += weight * padded[tuple(index)]
        out = acc
    return out


def _drift(rng: np.random.Generator, z: np.ndarray, amplitude: float) -> np.ndarray:
    """A slow sinusoidal wander along z: anatomy moves smoothly from slice to slice."""
    period = rng.uniform(80.0, 260.0)
    phase = rng.uniform(0.0, 2.0 * math.pi)
    return amplitude * np.sin(2.0 * math.pi * z / period + phase)


def _profile(t: np.ndarray, knots: Sequence[float], values: Sequence[float]) -> np.ndarray:
    """Piecewise-linear size profile along the region (t = 0 top, 1 bottom); 0 means absent."""
    return np.interp(t, knots, values)


def _on(present: np.ndarray, value: float | np.ndarray) -> np.ndarray:
    """``value`` where ``present`` else 0 (a shape with a zero axis is not drawn)."""
    return np.where(present, value, 0.0)

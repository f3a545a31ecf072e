"""The synthetic natural-image proxy (:func:`synthetic_natural`): a stand-in for a natural-image
domain that lets the cross-domain half of the pipeline run end to end. It is not ImageNet."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from radengine.data.synthetic.common import (
    _MAX_SIZE,
    _MIN_SIZE,
    _check_int,
    _gaussian_blur,
)
from radengine.data.synthetic.labels import (
    NATURAL_CLASSES,
)


@dataclass(frozen=True)
class SyntheticImages:
    """A synthetic natural-image proxy dataset (not ImageNet; see :func:`synthetic_natural`).

    Attributes:
        images: uint8 RGB images, (N, H, W, 3).
        labels: int64 class ids, (N,).
        class_names: Names of the classes, ``class_names[label]``.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])


# --------------------------------------------------------------------------------------------
# Synthetic natural-image proxy
# --------------------------------------------------------------------------------------------
_NATURAL_CHUNK = 128  # images rendered together; fixed so results never depend on batching
_LEAVES = 40  # dead leaves per background
_LEAF_RADIUS = (0.04, 0.9)  # smallest and largest leaf radius (image half-width = 1)


def _upsample(a: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of (N, h, w[, C]) to (N, size, size[, C]): smooth colour fields."""
    for axis in (1, 2):
        n = a.shape[axis]
        pos = np.linspace(0.0, n - 1.0, size)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        w = (pos - lo).astype(np.float32)
        shape = [1] * a.ndim
        shape[axis] = size
        w = w.reshape(shape)
        a = np.take(a, lo, axis=axis) * (1 - w) + np.take(a, hi, axis=axis) * w
    return a


def _random_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """Saturated-ish random RGB colours in [0, 255], (n, 3)."""
    base = rng.uniform(0.0, 255.0, size=(n, 3))
    grey = base.mean(axis=1, keepdims=True)
    return np.clip(grey + rng.uniform(0.8, 1.6, size=(n, 1)) * (base - grey), 0.0, 255.0)


def _muted_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """Natural-scene colours in [0, 255], (n, 3): a brightness with a weak tint (foliage,
    earth, sky, stone), far less saturated than :func:`_random_colours`."""
    grey = rng.uniform(25.0, 230.0, size=(n, 1))
    tint = rng.normal(0.0, 1.0, size=(n, 3))
    tint -= tint.mean(axis=1, keepdims=True)
    return np.clip(grey + rng.uniform(8.0, 45.0, size=(n, 1)) * tint, 0.0, 255.0)


def _natural_shape(name: str, u: np.ndarray, v: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Inside test for one class in object coordinates (unit size, already rotated/scaled)."""
    rho = np.sqrt(u * u + v * v)
    theta = np.arctan2(v, u)

    def polygon(sides: int) -> np.ndarray:
        sector = 2 * np.pi / sides
        local = np.mod(theta, sector) - sector / 2
        return rho * np.cos(local) <= np.cos(np.pi / sides)

    if name == "disk":
        return rho <= 1.0
    if name == "square":
        return polygon(4)
    if name == "triangle":
        return polygon(3)
    if name == "hexagon":
        return polygon(6)
    if name == "star":
        return rho <= 0.45 + 0.55 * np.abs(np.cos(2.5 * theta)) ** 2
    if name == "ring":
        return (rho <= 1.0) & (rho >= 0.55)
    if name == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    if name == "crescent":
        return (rho <= 1.0) & ((u - 0.5) ** 2 + v * v > 0.75**2)
    # Texture classes share an irregular blob outline; the class lives in the fill pattern.
    return rho <= 1.0 + 0.12 * np.sin(3.0 * theta + phase)


def _natural_pattern(name: str, u: np.ndarray, v: np.ndarray, freq: np.ndarray) -> np.ndarray:
    """Two-tone fill pattern (bool) of the texture classes."""
    tau = 2 * np.pi
    if name == "stripes":
        return np.sin(tau * freq * u) > 0
    if name == "checker":
        return np.sin(tau * freq * u) * np.sin(tau * freq * v) > 0
    if name == "dots":
        cu, cv = np.mod(freq * u, 1.0) - 0.5, np.mod(freq * v, 1.0) - 0.5
        return cu * cu + cv * cv < 0.09
    if name == "waves":
        return np.sin(tau * freq * (u + 0.12 * np.sin(tau * 1.3 * v))) > 0
    raise ValueError(name)


_TEXTURE_CLASSES = frozenset({"stripes", "checker", "dots", "waves"})


def _render_natural(
    rng: np.random.Generator, labels: np.ndarray, names: Sequence[str], size: int
) -> np.ndarray:
    """Render one chunk of natural-proxy images; all parameters come from ``rng``."""
    n = len(labels)
    grid = ((np.arange(size, dtype=np.float32) + 0.5) / size) * 2.0 - 1.0
    gx, gy = grid.reshape(1, 1, size), grid.reshape(1, size, 1)

    def per_image(values: np.ndarray) -> np.ndarray:
        return values.reshape(-1, 1, 1).astype(np.float32)

    # Background: a dead-leaves scene (occluding ellipses of log-uniform sizes, Lee, Mumford &
    # Huang 2001), a classic model of natural-image statistics: occlusion, edges at every
    # scale, a power-law spectrum. Muted, correlated colours with a light gradient on each
    # leaf, then multi-octave ("pink") luminance noise.
    leaf = np.zeros((n, size, size), dtype=np.int64)  # index of the leaf on top; 0: none
    shade = np.ones((n, size, size), dtype=np.float32)
    colours = [_muted_colours(rng, n)]
    lo, hi = np.log(_LEAF_RADIUS[0]), np.log(_LEAF_RADIUS[1])
    for k in range(1, _LEAVES + 1):
        radius = per_image(np.exp(rng.uniform(lo, hi, size=n)))
        dx = gx - per_image(rng.uniform(-1.1, 1.1, size=n))
        dy = gy - per_image(rng.uniform(-1.1, 1.1, size=n))
        angle = per_image(rng.uniform(0, np.pi, size=n))
        c, s = np.cos(angle), np.sin(angle)
        lu, lv = dx * c + dy * s, (dy * c - dx * s) / per_image(rng.uniform(0.4, 1.0, size=n))
        inside = lu * lu + lv * lv <= radius * radius
        leaf[inside] = k
        gradient = per_image(rng.uniform(-0.25, 0.25, size=n))
        shade = np.where(inside, 1.0 + gradient * lu / radius, shade)
        colours.append(_muted_colours(rng, n))
    palette = np.stack(colours, axis=1).astype(np.float32)  # (n, leaves + 1, 3)
    img = np.take_along_axis(palette, leaf.reshape(n, -1, 1), axis=1).reshape(n, size, size, 3)
    img *= shade[..., None]
    texture = np.zeros((n, size, size), dtype=np.float32)
    for cells in (4, 8, 16, 32):
        octave = rng.standard_normal((n, min(cells, size), min(cells, size)), dtype=np.float32)
        texture += _upsample(octave, size) * np.float32(4.0 / cells)
    img += (texture * per_image(rng.uniform(8.0, 24.0, size=n)))[..., None]
    bg_mean = img.mean(axis=(1, 2))  # (n, 3)

    # The object: random position, scale, aspect, rotation and colours.
    scale = rng.uniform(0.32, 0.6, size=n)
    cx = rng.uniform(-0.9, 0.9, size=n) * (1 - scale)
    cy = rng.uniform(-0.9, 0.9, size=n) * (1 - scale)
    rot = rng.uniform(0, 2 * np.pi, size=n)
    aspect = rng.uniform(0.8, 1.25, size=n)
    fg1 = _random_colours(rng, n)
    # Keep the object visible: push its colour away from the background's mean colour.
    too_close = np.linalg.norm(fg1 - bg_mean, axis=1) < 90
    fg1[too_close] = 255.0 - fg1[too_close]
    fg2 = _random_colours(rng, n)
    freq = rng.uniform(1.6, 3.0, size=n)
    phase = rng.uniform(0, 2 * np.pi, size=n)
    light = rng.uniform(0, 2 * np.pi, size=n)
    noise = rng.uniform(2.0, 10.0, size=n)

    alpha = np.zeros((n, size, size), dtype=np.float32)
    fill = np.zeros((n, size, size, 3), dtype=np.float32)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        name = names[label]
        dx, dy = gx - per_image(cx[idx]), gy - per_image(cy[idx])
        c, s = np.cos(per_image(rot[idx])), np.sin(per_image(rot[idx]))
        sx = per_image(scale[idx] * aspect[idx])
        sy = per_image(scale[idx] / aspect[idx])
        u, v = (dx * c + dy * s) / sx, (dy * c - dx * s) / sy
        alpha[idx] = _natural_shape(name, u, v, per_image(phase[idx]))
        colour1 = fg1[idx, None, None, :].astype(np.float32)
        if name in _TEXTURE_CLASSES:
            two_tone = _natural_pattern(name, u, v, per_image(freq[idx]))[..., None]
            fill[idx] = np.where(two_tone, colour1, fg2[idx, None, None, :].astype(np.float32))
        else:
            # Plain objects get directional shading, as if lit from one side.
            lx, ly = np.cos(per_image(light[idx])), np.sin(per_image(light[idx]))
            shade = np.clip(0.8 + 0.2 * (lx * u + ly * v), 0.5, 1.2)
            fill[idx] = colour1 * shade[..., None]
    # Soft (anti-aliased) object edges, then sensor noise over everything.
    alpha = _gaussian_blur(alpha, 0.6, axes=(1, 2))[..., None]
    img += (fill - img) * alpha
    img += (
        rng.standard_normal(img.shape, dtype=np.float32)
        * noise.astype(np.float32)[:, None, None, None]
    )
    np.rint(img, out=img)
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_natural(
    num_images: int, num_classes: int = 10, size: int = 64, seed: int = 0
) -> SyntheticImages:
    """Generate the synthetic natural-image proxy: a stand-in, **not ImageNet**.

    Each image shows one saturated, coloured object in front of a cluttered scene: a
    dead-leaves background (40 occluding ellipses of log-uniform sizes in muted natural
    colours, each with a light gradient) under multi-octave luminance noise, so images have
    occlusion, edges at every scale and natural-scene colour statistics rather than the flat
    backgrounds of CT. The class is the
    object's shape family (disk, square, triangle, star, ring, cross, crescent, hexagon) or, for
    the texture classes (stripes, checker, dots, waves), the two-tone pattern inside an
    irregular blob; see :data:`NATURAL_CLASSES`. Position, scale, aspect, rotation, colours and
    pattern frequency are random, so the classes are learnable but not trivial. It exists so the
    cross-domain (natural-image) half of the study can run without data; results on it say
    nothing about ImageNet.

    Labels are balanced (``i % num_classes`` before a seeded shuffle), so every class occurs
    whenever ``num_images >= num_classes``. The same arguments always give identical arrays.

    Args:
        num_images: Number of images (>= 1).
        num_classes: Number of classes, 2 to ``len(NATURAL_CLASSES)``.
        size: Image height and width in pixels (32 to 2048).
        seed: Non-negative seed.

    Returns:
        A :class:`SyntheticImages` with ``images`` uint8 (N, size, size, 3) RGB, ``labels``
        int64 (N,) and ``class_names``.

    Raises:
        ValueError: If an argument is out of range.
    """
    num_images = _check_int("num_images", num_images, 1)
    num_classes = _check_int("num_classes", num_classes, 2, len(NATURAL_CLASSES))
    size = _check_int("size", size, _MIN_SIZE, _MAX_SIZE)
    seed = _check_int("seed", seed, 0)
    names = NATURAL_CLASSES[:num_classes]
    labels = np.random.default_rng([seed, 3]).permutation(
        np.arange(num_images, dtype=np.int64) % num_classes
    )
    images = np.empty((num_images, size, size, 3), dtype=np.uint8)
    for chunk, start in enumerate(range(0, num_images, _NATURAL_CHUNK)):
        stop = min(start + _NATURAL_CHUNK, num_images)
        rng = np.random.default_rng([seed, 4, chunk])
        images[start:stop] = _render_natural(rng, labels[start:stop], names, size)
    return SyntheticImages(images=images, labels=labels, class_names=names)

"""augment_views: V randomly augmented views of a batch of CT slices or RGB images.

Every random decision is drawn up front by :func:`sample_params` into an
:class:`AugmentParams` (tensors with leading dims (V, B), on CPU, from a ``torch.Generator``
seeded with ``seed``), so the image work is a deterministic function of (x, params): any
backend must reproduce the reference view for view, sample for sample, given the same
params. The only randomness inside the image work is the Gaussian noise, and that comes
from a counter-based integer hash that a CUDA/Triton kernel regenerates exactly.

Per view v, sample b and output pixel (i, j) of an (h, w) view, in this order:

1. Geometry (random resized crop, flips, rotation). The crop box is (y0, x0, ch, cw) in
   input pixels (pixel k covers [k - 0.5, k + 0.5]); ``fx = -1`` if hflip else 1, ``fy``
   likewise for vflip, and theta the angle (degrees, counter-clockwise as displayed)::

       u = ((j + 0.5) / w - 0.5) * fx            v = ((i + 0.5) / h - 0.5) * fy
       sx = x0 + cw/2 - 0.5 + cos(theta) cw u - sin(theta) ch v
       sy = y0 + ch/2 - 0.5 + sin(theta) cw u + cos(theta) ch v

   i.e. rotate the image about the crop centre, take torchvision's resized crop
   (``align_corners=False``: output pixel centres map to evenly spaced points of the box),
   then flip. Without rotation (sx, sy) always lies inside the image.
2. Sampling: bilinear, NOT antialiased (one 2x2 tap set per output pixel; a small crop
   resized down aliases, as ``F.interpolate(antialias=False)``). EACH TAP IS MAPPED TO
   INTENSITY FIRST, then the 4 taps are blended. Taps outside the pixel-centre range are
   clamped to the nearest edge pixel (as ``F.interpolate``), and a point outside the
   image's area (only possible with rotation: sx < -0.5, sx > W - 0.5, likewise sy) gets
   the fill value 0, after the intensity mapping (air / the window's low end / black).
   Deliberate difference from torchvision: taps near the crop border read the real
   neighbouring pixels of the image (torchvision replicates the crop's edge pixels; the
   two agree everywhere when the crop is not smaller than the output).
   Intensity of a tap t with HU value x_t, per output channel c and window (lo_c, hi_c)::

       fixed windows:  y = clamp((x_t - lo_c) / (hi_c - lo_c), 0, 1)
       min-max mode:   lo_c = min(x) + a_c (max(x) - min(x)), hi_c likewise with b_c,
                       where (a_c, b_c) = params.window (0, 1 without jitter) and min/max
                       are over the whole input slice (study A scales, then crops);
                       y = 0 when hi_c <= lo_c (a constant slice)
       RGB uint8:      y = x_t / 255

   Window jitter (CT), per view, sample and window (repeated channels share it): with
   width W and centre C of the window (min-max: C = 0.5, W = 1 in units of the slice's
   range), ``C' = C + shift W``, ``W' = W scale``, shift and scale uniform in
   ``window_center_shift`` / ``window_width_scale``.
3. Colour jitter (torchvision ``ColorJitter`` formulas on [0, 1] images, applied to the
   whole view; factors (brightness b, contrast c, saturation s, hue d) and a random order
   per view; a factor equal to its identity (1, 1, 1, 0) skips that op)::

       gray(y)     = 0.299 R + 0.587 G + 0.114 B          (C = 3)
       brightness: y = clamp(b y, 0, 1)
       contrast:   y = clamp(c y + (1 - c) mean(gray(y)), 0, 1)   (mean over the view)
       saturation: y = clamp(s y + (1 - s) gray(y), 0, 1)
       hue:        torchvision's RGB -> HSV, H = (H + d) mod 1, HSV -> RGB
                   (evaluated in a closed form, see _adjust_hue)

   For C != 3 (e.g. two windows) saturation, hue and grayscale are skipped and gray(y) is
   the mean over channels. A CT view whose channels are identical (one window repeated,
   e.g. study A's min-max x 3) is computed on one channel and expanded before the noise:
   there gray(y) = y (the weights sum to 1), so saturation, hue and grayscale are
   identities and are skipped (the RGB formulas give the same up to rounding).
4. Grayscale: y_c = gray(y) for every channel (C = 3 only).
5. Gamma: y = clamp(y ** g, 0, 1).
6. Solarize: y = 1 - y where y >= threshold.
7. Gaussian blur, separable, sigma per view (0 = off), radius r = ceil(3 sigma), weights
   exp(-k^2 / (2 sigma^2)) / sum over |k| <= r, borders clamped (replicate: valid for any
   image size, unlike reflect, and trivial in a kernel).
8. Gaussian noise (std per view, 0 = off), clipped like torchvision v2 GaussianNoise::

       y = clamp(y + std z, 0, 1),  z = sqrt(-2 ln u1) cos(2 pi u2)   (Box-Muller)

   with u1, u2 from :func:`noise_hash` of (noise_seed[v, b], v, c, i, j): integer ops on
   32-bit words, so every backend gets the same bits. The key is per sample (not the
   sample's index), so a slice of the parameters of a larger batch (one rank's share of a
   global batch) gives the same noise as the whole batch (the float transform may differ by
   an ulp or two between libm implementations).
9. Normalisation: out_c = (y_c - mean_c) / std_c; computed in fp32, rounded once to dtype.

Apart from min-max mode's per-slice range (a reduction over the input, as in hu_window),
steps 3 (contrast's mean) and 7 (blur) are the only ones that are not pointwise: a fused
kernel needs a per-view reduction and a neighbourhood (tile + halo) for them.

Presets (:data:`PRESETS`): ``"simclr"`` is study A exactly (RandomResizedCrop with scale
(0.08, 1), hflip 0.5, ColorJitter(0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale p 0.2);
``"ct"`` a CT recipe (see :data:`PRESETS`); ``"none"`` resizes the full image, no
randomness, for feature extraction.

Backends: ``reference`` (plain torch below, batched with ``grid_sample``: the oracle),
``cpu``, ``cuda`` and ``triton``, all registered as one op,
``torch.ops.radengine.augment_views``, taking the params as tensors and returning one
(V, B, C, h, w) tensor, which picks the backend at run time; parameter sampling stays in
Python, outside the op. Defaults: ``cpu`` for CPU tensors, ``cuda`` then ``triton`` for
CUDA tensors.

``cpu`` (csrc/cpu/augment.cpp, C++17 + OpenMP: steps 1-9 fused per (view, sample) in a
per-thread scratch of one view; the default for CPU tensors when radengine._cpu has it).
The kernel gets the parameters as a per-row float32 table (:func:`_row_table`; cos/sin of
the angle are torch's), the windows and noise seeds as raw pointers of contiguous CPU
tensors, mean/std as lists. It reproduces the reference for every feature: fp32 within
~5e-6 (measured; transcendentals and reduction orders differ by an ulp or so; grid_sample's
multiply-adds are fused exactly where torch's AVX2/AVX-512 kernel fuses them), fp16/bf16
within one output ulp of the fp32 reference.

``cuda`` (csrc/cuda/augment.cu; the default for CUDA tensors when radengine._cuda has it):
min-max mode's per-slice range and, for rows whose contrast is active, the view's mean gray
just before contrast as deterministic two-stage reductions (no atomics, the same bits on
every run); then one kernel per (view and sample, 1024-pixel tile) doing steps 1-6 in
registers and 8-9 straight into the output (any strides: contiguous or channels_last);
blurred views go through an fp32 scratch and a separable pass over a shared-memory tile and
halo that finishes 8-9. It takes the cpu kernel's row table, uploaded with the windows,
noise seeds and blur slots in one pinned non-blocking copy (cos/sin of rotated rows
recomputed on the device by torch), and runs on x's current stream. It follows the
reference run on CUDA tensors op for op: one rounding per op, fused exactly where torch's
CUDA kernels fuse (grid_sample's unnormalise and 4-tap blend, the depthwise convolution's
taps), divisions by Python scalars as torch's reciprocal multiplies, CUDA's own
logf/cosf/expf/powf; only summation orders differ. tests/ops/test_augment_cuda.py holds it
to the reference on the same GPU (fp32 within 1e-5, fp16/bf16 within one output ulp); it
has been checked here only by running the .cu source under a CPU emulation of the CUDA
subset it uses (max difference 4e-6 in fp32), not on a GPU.

``triton`` (kernels/augment.py; CUDA tensors, and CPU tensors only under
TRITON_INTERPRET=1): steps 1-6 fused per output pixel over 1-D tiles of (view, sample)
rows. Contrast's mean comes from an earlier pass over the rows that have contrast, which
re-runs the steps before it and sums per-program partials in a fixed order (no float
atomics). Rows with blur go through an fp32 scratch of the blurred views: a horizontal
pass, then a vertical pass that also adds the noise, normalises and stores. The per-row
tables are built with the reference's own torch expressions (cos/sin of a rotation, blur
weights and min-max ranges on x's device) and reach the device in one non-blocking copy,
so there is no host sync. The kernels run in fp32 with no FMA contraction except where
torch's grid_sample fuses, IEEE divisions, ~1-ulp log/exp/cos, and the integer
``noise_hash``. Against the reference under the interpreter: fp32 within ~5e-6 (measured),
fp16/bf16 within one output ulp of the fp32 reference.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from radengine import _native
from radengine.ops import _dispatch
from radengine.ops.hu_window import OUTPUT_DTYPES, WindowLike, WindowSpec, _per_channel

__all__ = [
    "IMPLS",
    "PRESETS",
    "AugmentParams",
    "AugmentSpec",
    "augment_views",
    "noise_hash",
    "per_view_sizes",
    "per_view_specs",
    "reference_augment_views",
    "sample_params",
    "view_seed",
]

CROP_TRIES = 10  # torchvision RandomResizedCrop
MAX_BLUR_SIGMA = 16.0  # radius <= 48 px
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 (PIL "L"); torchvision tensors: 0.2989
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
JITTER_IDENTITY = (1.0, 1.0, 1.0, 0.0)
_M32 = 0xFFFFFFFF

Range = tuple[float, float]
SpecLike = Union["AugmentSpec", str, Mapping[str, Any]]


# ----------------------------------------------------------------------------- the spec

_PROBS = (
    "hflip_p",
    "vflip_p",
    "rotate_p",
    "window_jitter_p",
    "jitter_p",
    "grayscale_p",
    "gamma_p",
    "solarize_p",
    "blur_p",
    "noise_p",
)
# How a single number given for a range field is read.
_SYMMETRIC = ("rotate_deg", "hue", "window_center_shift")  # d -> (-d, d)
_AROUND_ONE = ("brightness", "contrast", "saturation")  # f -> (max(0, 1 - f), 1 + f)
_RANGES = (
    "crop_scale",
    "crop_ratio",
    "rotate_deg",
    "window_center_shift",
    "window_width_scale",
    "brightness",
    "contrast",
    "saturation",
    "hue",
    "gamma",
    "blur_sigma",
    "noise_std",
)


@dataclass(frozen=True)
class AugmentSpec:
    """What to randomise, and how much. The defaults are the ``"simclr"`` preset (study A).

    Ranges are (min, max) pairs, sampled uniformly (the crop's aspect ratio in log space).
    Where a single number is given: ``rotate_deg``, ``hue``, ``window_center_shift``:
    d -> (-d, d); ``brightness``, ``contrast``, ``saturation``: f -> (max(0, 1 - f), 1 + f)
    (torchvision's ColorJitter); any other range: v -> (v, v).

    Attributes:
        crop: random resized crop; False takes the full image (no randomness).
        crop_scale: crop area as a fraction of the image, within (0, 1].
        crop_ratio: crop aspect ratio (width / height), > 0.
        hflip_p, vflip_p: probability of a horizontal / vertical flip.
        rotate_p, rotate_deg: probability of a rotation and its angle range in degrees
            (counter-clockwise), within [-180, 180].
        window_jitter_p: probability (per view and sample) of jittering the CT windows.
        window_center_shift: window centre shift as a fraction of the window's width.
        window_width_scale: factor on the window's width, > 0.
        jitter_p: probability of colour jitter (all four factors drawn together).
        brightness, contrast, saturation: factor ranges, >= 0 (1 = identity).
        hue: hue shift range, within [-0.5, 0.5] (0 = identity).
        grayscale_p: probability of converting to grayscale (3 channels only).
        gamma_p, gamma: probability of a gamma curve and the exponent range, > 0.
        solarize_p, solarize_threshold: probability of solarizing, and where.
        blur_p, blur_sigma: probability of a Gaussian blur; sigma range in output pixels,
            within [0, 16].
        noise_p, noise_std: probability of Gaussian noise; std range (intensities in [0, 1]).
    """

    crop: bool = True
    crop_scale: Range = (0.08, 1.0)
    crop_ratio: Range = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    vflip_p: float = 0.0
    rotate_p: float = 0.0
    rotate_deg: Range = (-10.0, 10.0)
    window_jitter_p: float = 0.0
    window_center_shift: Range = (-0.1, 0.1)
    window_width_scale: Range = (0.8, 1.2)
    jitter_p: float = 0.8
    brightness: Range = (0.2, 1.8)
    contrast: Range = (0.2, 1.8)
    saturation: Range = (0.2, 1.8)
    hue: Range = (-0.2, 0.2)
    grayscale_p: float = 0.2
    gamma_p: float = 0.0
    gamma: Range = (0.7, 1.5)
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    blur_p: float = 0.0
    blur_sigma: Range = (0.1, 2.0)
    noise_p: float = 0.0
    noise_std: Range = (0.01, 0.05)

    def __post_init__(self) -> None:
        if not isinstance(self.crop, bool):
            raise ValueError(f"AugmentSpec.crop must be True or False, got {self.crop!r}")
        for name in _PROBS:
            p = _number(getattr(self, name), name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"AugmentSpec.{name} must be a probability in [0, 1], got {p}")
            object.__setattr__(self, name, p)
        object.__setattr__(
            self, "solarize_threshold", _number(self.solarize_threshold, "solarize_threshold")
        )
        for name in _RANGES:
            object.__setattr__(self, name, _as_range(getattr(self, name), name))
        self._check_range("crop_scale", 0.0, 1.0, low_open=True)
        self._check_range("crop_ratio", 0.0, math.inf, low_open=True)
        self._check_range("rotate_deg", -180.0, 180.0)
        self._check_range("window_center_shift", -math.inf, math.inf)
        self._check_range("window_width_scale", 0.0, math.inf, low_open=True)
        for name in _AROUND_ONE:
            self._check_range(name, 0.0, math.inf)
        self._check_range("hue", -0.5, 0.5)
        self._check_range("gamma", 0.0, math.inf, low_open=True)
        self._check_range("blur_sigma", 0.0, MAX_BLUR_SIGMA)
        self._check_range("noise_std", 0.0, math.inf)

    def _check_range(self, name: str, lo: float, hi: float, low_open: bool = False) -> None:
        a, b = getattr(self, name)
        if not a <= b:
            raise ValueError(f"AugmentSpec.{name} = ({a}, {b}): min must be <= max")
        if (a <= lo if low_open else a < lo) or b > hi:
            where = f"({lo}, {hi}]" if low_open else f"[{lo}, {hi}]"
            raise ValueError(f"AugmentSpec.{name} = ({a}, {b}) must lie within {where}")

    @classmethod
    def preset(cls, name: str) -> AugmentSpec:
        """One of :data:`PRESETS` by name ("simclr", "ct", "none")."""
        if not isinstance(name, str) or name not in PRESETS:
            raise ValueError(f"unknown augmentation preset {name!r}{_suggest(name, PRESETS)}")
        return PRESETS[name]

    @classmethod
    def parse(cls, spec: AugmentSpec | str | Mapping[str, Any]) -> AugmentSpec:
        """An ``AugmentSpec`` from a spec, a preset name, or a plain dict (a config).

        A dict may name a ``"preset"`` (default ``"simclr"``) and override any field, e.g.
        ``{"preset": "ct", "blur_p": 0.2, "brightness": 0.2}``.

        Raises:
            ValueError: unknown preset or key (with the closest match), or a bad value.
        """
        if isinstance(spec, AugmentSpec):
            return spec
        if isinstance(spec, str):
            return cls.preset(spec)
        if not isinstance(spec, Mapping):
            raise ValueError(
                f"spec must be an AugmentSpec, a preset name ({', '.join(PRESETS)}) or a "
                f"dict, got {type(spec).__name__}"
            )
        overrides = dict(spec)
        base = cls.preset(overrides.pop("preset", "simclr"))
        names = [f.name for f in dataclasses.fields(cls)]
        for key in overrides:
            if key not in names:
                raise ValueError(
                    f"unknown augmentation key {key!r}{_suggest(key, [*names, 'preset'])}"
                )
        return dataclasses.replace(base, **overrides)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"AugmentSpec.{name} must be a number, got {value!r}")
    return float(value)


def _as_range(value: Any, name: str) -> Range:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        v = _number(value, name)
        if name in _SYMMETRIC:
            return (-abs(v), abs(v))
        if name in _AROUND_ONE:
            if v < 0:
                raise ValueError(f"AugmentSpec.{name} = {v} must be >= 0")
            return (max(0.0, 1.0 - v), 1.0 + v)
        return (v, v)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return (_number(value[0], name), _number(value[1], name))
    raise ValueError(f"AugmentSpec.{name} must be a number or a (min, max) pair, got {value!r}")


def _suggest(word: object, options: Sequence[str] | Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (choose from {', '.join(options)})"


PRESETS: dict[str, AugmentSpec] = {
    # Study A (Jonske et al.): RandomResizedCrop, hflip, ColorJitter(.8,.8,.8,.2) p .8,
    # RandomGrayscale p .2; no blur.
    "simclr": AugmentSpec(),
    # CT: larger crops (small crops of a slice are mostly air), small rotations, window
    # jitter (centre +-10% of the width, width x0.8..1.2) instead of hue/saturation,
    # brightness/contrast 0.4, gamma, mild noise and blur.
    "ct": AugmentSpec(
        crop_scale=(0.2, 1.0),
        rotate_p=0.5,
        rotate_deg=(-10.0, 10.0),
        window_jitter_p=0.8,
        window_center_shift=(-0.1, 0.1),
        window_width_scale=(0.8, 1.2),
        jitter_p=0.8,
        brightness=(0.6, 1.4),
        contrast=(0.6, 1.4),
        saturation=(1.0, 1.0),
        hue=(0.0, 0.0),
        grayscale_p=0.0,
        gamma_p=0.5,
        gamma=(0.7, 1.5),
        blur_p=0.5,
        blur_sigma=(0.1, 2.0),
        noise_p=0.2,
        noise_std=(0.01, 0.05),
    ),
    # Evaluation / feature extraction: the full image resized, nothing random.
    "none": AugmentSpec(
        crop=False, hflip_p=0.0, jitter_p=0.0, grayscale_p=0.0, window_jitter_p=0.0
    ),
}


# ----------------------------------------------------------------------------- the params


@dataclass
class AugmentParams:
    """Every random decision of :func:`augment_views`, per view v and sample b (CPU tensors).

    Attributes:
        crop: (V, B, 4) float32, the crop box (y0, x0, h, w) in input pixels.
        hflip: (V, B) bool.
        vflip: (V, B) bool.
        angle: (V, B) float32, rotation in degrees, counter-clockwise (0 = none).
        window: (V, B, C, 2) float32 (lo, hi) per output channel: HU for fixed windows;
            for min-max mode fractions of each slice's [min, max] range ((0, 1) = plain
            min-max); None for RGB input.
        jitter: (V, B, 4) float32 (brightness, contrast, saturation, hue) factors;
            (1, 1, 1, 0) = no jitter; an identity factor skips its op.
        order: (V, B, 4) int64, a permutation of 0..3: the jitter ops in the order applied
            (0 brightness, 1 contrast, 2 saturation, 3 hue).
        grayscale: (V, B) bool.
        gamma: (V, B) float32 exponent (1 = off).
        solarize: (V, B) bool.
        solarize_threshold: (V, B) float32.
        blur_sigma: (V, B) float32, in output pixels (0 = off).
        noise_std: (V, B) float32 (0 = off).
        noise_seed: (V, B) int64, the key of :func:`noise_hash` for each view and sample.
    """

    crop: Tensor
    hflip: Tensor
    vflip: Tensor
    angle: Tensor
    window: Tensor | None
    jitter: Tensor
    order: Tensor
    grayscale: Tensor
    gamma: Tensor
    solarize: Tensor
    solarize_threshold: Tensor
    blur_sigma: Tensor
    noise_std: Tensor
    noise_seed: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.crop, Tensor) or self.crop.dim() != 3:
            raise ValueError("AugmentParams.crop must be a (V, B, 4) tensor")
        V, B = self.crop.shape[:2]
        shapes: dict[str, tuple[tuple[int, ...], tuple[torch.dtype, ...]]] = {
            "crop": ((V, B, 4), (torch.float32,)),
            "hflip": ((V, B), (torch.bool,)),
            "vflip": ((V, B), (torch.bool,)),
            "angle": ((V, B), (torch.float32,)),
            "jitter": ((V, B, 4), (torch.float32,)),
            "order": ((V, B, 4), (torch.int64,)),
            "grayscale": ((V, B), (torch.bool,)),
            "gamma": ((V, B), (torch.float32,)),
            "solarize": ((V, B), (torch.bool,)),
            "solarize_threshold": ((V, B), (torch.float32,)),
            "blur_sigma": ((V, B), (torch.float32,)),
            "noise_std": ((V, B), (torch.float32,)),
            "noise_seed": ((V, B), (torch.int64,)),
        }
        if self.window is not None:
            C = (
                self.window.shape[2]
                if isinstance(self.window, Tensor) and self.window.dim() == 4
                else -1
            )
            shapes["window"] = ((V, B, C, 2), (torch.float32,))
        for name, (shape, dtypes) in shapes.items():
            t = getattr(self, name)
            if not isinstance(t, Tensor) or tuple(t.shape) != shape or t.dtype not in dtypes:
                got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
                want = "x".join(map(str, shape)).replace("-1", "C")
                raise ValueError(
                    f"AugmentParams.{name} must be a {want} {dtypes[0]} tensor "
                    f"(V={V}, B={B}), got {got}"
                )

    @property
    def views(self) -> int:
        return self.crop.shape[0]

    @property
    def batch(self) -> int:
        return self.crop.shape[1]

    @property
    def channels(self) -> int:
        """Output channels: the window count for CT, 3 for RGB."""
        return 3 if self.window is None else self.window.shape[2]

    def __len__(self) -> int:
        return self.views

    def to(self, device: torch.device | str) -> AugmentParams:
        return AugmentParams(**{k: None if v is None else v.to(device) for k, v in self.items()})

    def view_range(self, start: int, stop: int) -> AugmentParams:
        """The parameters of views [start, stop)."""
        return AugmentParams(
            **{k: None if v is None else v[start:stop].contiguous() for k, v in self.items()}
        )

    @classmethod
    def concat(cls, parts: Sequence[AugmentParams]) -> AugmentParams:
        """The views of ``parts`` one after the other (same batch and channels)."""
        fields = {}
        for name, first in parts[0].items():
            fields[name] = None if first is None else torch.cat([getattr(p, name) for p in parts])
        return cls(**fields)

    def items(self) -> list[tuple[str, Tensor | None]]:
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]

    def to_dict(self) -> dict[str, Tensor | None]:
        """The fields by name (for torch.save / logging); :meth:`from_dict` inverts it."""
        return dict(self.items())

    @classmethod
    def from_dict(cls, d: Mapping[str, Tensor | None]) -> AugmentParams:
        names = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in names:
                raise ValueError(f"unknown AugmentParams field {key!r}{_suggest(key, names)}")
        return cls(**d)


def sample_params(
    spec: SpecLike | Sequence[SpecLike],
    views: int,
    batch: int,
    image_size: Sequence[int],
    intensity: WindowSpec | None = None,
    *,
    seed: int = 0,
) -> AugmentParams:
    """Draw the parameters of ``views`` views of each of ``batch`` images.

    ``spec`` may also be a list of ``views`` specs, one per view (multi-crop: DINO's global
    and local crops, BYOL's asymmetric blur and solarize). Consecutive views with equal specs
    form a group drawn together; the only group, or the first, uses ``seed`` itself (so a
    list of equal specs draws exactly what one spec does) and group g starting at view v
    uses :func:`view_seed` (seed, v).

    The draws come from a CPU ``torch.Generator`` seeded with ``seed`` in a fixed order
    (crop, hflip, vflip, rotation, window jitter, colour jitter and its order, grayscale,
    gamma, solarize, blur, noise, noise seeds), each for all (V, B) at once; every draw
    is made even when its probability is 0, so changing one probability does not shift
    the others. (spec, views, batch, image_size, intensity, seed) determine the result;
    the data and the device do not.

    The crop follows torchvision's ``RandomResizedCrop.get_params``, vectorised: 10 tries
    of (area fraction ~ U(scale), log ratio ~ U(log ratio)), w = round(sqrt(area ratio)),
    h = round(sqrt(area / ratio)); the first try that fits is placed uniformly at integer
    offsets; if none fits, the centre crop clamped to the ratio range.

    Args:
        spec: an :class:`AugmentSpec`, a preset name or a dict (:meth:`AugmentSpec.parse`).
        views: V >= 1.
        batch: B >= 0.
        image_size: the input's (H, W).
        intensity: the CT :class:`WindowSpec` (its windows are jittered); None for RGB.
        seed: the generator's seed.

    Returns:
        :class:`AugmentParams` of CPU tensors with leading dims (V, B).
    """
    V, B = _check_int(views, "views"), _check_int(batch, "batch", minimum=0)
    specs = per_view_specs(spec, V)
    groups = _runs(specs)
    if len(groups) > 1:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        parts = [
            sample_params(specs[a], b - a, B, image_size, intensity,
                          seed=seed if a == 0 else view_seed(seed, a))
            for a, b in groups
        ]  # fmt: skip
        return AugmentParams.concat(parts)
    spec = specs[0]
    if len(image_size) != 2 or not all(int(s) >= 1 for s in image_size):
        raise ValueError(f"image_size must be (H, W) with H, W >= 1, got {image_size!r}")
    H, W = (int(s) for s in image_size)
    if intensity is not None and not isinstance(intensity, WindowSpec):
        raise ValueError(
            "intensity must be a WindowSpec (WindowSpec.parse(...)) or None for RGB, "
            f"got {type(intensity).__name__}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    C = 3 if intensity is None else intensity.channels
    g = torch.Generator().manual_seed(seed)
    f64 = dict(generator=g, dtype=torch.float64)

    def coin(p: float) -> Tensor:
        return torch.rand((V, B), **f64) < p

    def uniform(r: Range, shape: tuple[int, ...]) -> Tensor:
        return r[0] + (r[1] - r[0]) * torch.rand(shape, **f64)

    # 1. crop
    u = torch.rand((V, B, CROP_TRIES, 4), **f64)
    if spec.crop:
        crop = _random_resized_crop(u, H, W, spec.crop_scale, spec.crop_ratio)
    else:
        crop = torch.tensor([0.0, 0.0, H, W], dtype=torch.float64).expand(V, B, 4)
    # 2. flips, rotation
    hflip, vflip = coin(spec.hflip_p), coin(spec.vflip_p)
    rotate = coin(spec.rotate_p)
    angle = torch.where(rotate, uniform(spec.rotate_deg, (V, B)), 0.0)
    # 3. window jitter, per window (repeated channels share it)
    jitter_window = coin(spec.window_jitter_p)
    n_win = 1 if intensity is None or intensity.minmax else len(intensity.windows)
    shift = uniform(spec.window_center_shift, (V, B, n_win))
    scale = uniform(spec.window_width_scale, (V, B, n_win))
    window = None
    if intensity is not None:
        centre, width = (
            torch.tensor([[0.5, 1.0]], dtype=torch.float64)
            if intensity.minmax
            else torch.tensor(intensity.windows, dtype=torch.float64)
        ).unbind(-1)
        new_centre = torch.where(jitter_window[..., None], centre + shift * width, centre)
        new_width = torch.where(jitter_window[..., None], width * scale, width)
        lo = torch.where(jitter_window[..., None], new_centre - new_width / 2, centre - width / 2)
        hi = torch.where(jitter_window[..., None], new_centre + new_width / 2, centre + width / 2)
        if intensity.minmax:  # exactly (0, 1) unless jittered
            lo = torch.where(jitter_window[..., None], lo, 0.0)
            hi = torch.where(jitter_window[..., None], hi, 1.0)
        per_channel = torch.arange(C) // intensity.repeat
        window = torch.stack([lo, hi], -1)[:, :, per_channel].to(torch.float32)
    # 4. colour jitter: factors, then the order (torch.randperm per view, vectorised)
    jitter_on = coin(spec.jitter_p)
    ranges = [spec.brightness, spec.contrast, spec.saturation, spec.hue]
    factors = torch.stack([uniform(r, (V, B)) for r in ranges], -1)
    identity = torch.tensor(JITTER_IDENTITY, dtype=torch.float64)
    factors = torch.where(jitter_on[..., None], factors, identity)
    if C != 3:  # saturation and hue need RGB
        factors[..., 2:] = identity[2:]
    order = torch.rand((V, B, 4), **f64).argsort(-1)
    # 5. grayscale, gamma, solarize, blur, noise
    grayscale = coin(spec.grayscale_p) & (C == 3)
    gamma = torch.where(coin(spec.gamma_p), uniform(spec.gamma, (V, B)), 1.0)
    solarize = coin(spec.solarize_p)
    blur_sigma = torch.where(coin(spec.blur_p), uniform(spec.blur_sigma, (V, B)), 0.0)
    noise_std = torch.where(coin(spec.noise_p), uniform(spec.noise_std, (V, B)), 0.0)
    noise_seed = torch.randint(0, 2**62, (V, B), generator=g, dtype=torch.int64)

    f32 = torch.float32
    return AugmentParams(
        crop=crop.to(f32).contiguous(),
        hflip=hflip,
        vflip=vflip,
        angle=angle.to(f32),
        window=window,
        jitter=factors.to(f32),
        order=order,
        grayscale=grayscale,
        gamma=gamma.to(f32),
        solarize=solarize,
        solarize_threshold=torch.full((V, B), spec.solarize_threshold, dtype=f32),
        blur_sigma=blur_sigma.to(f32),
        noise_std=noise_std.to(f32),
        noise_seed=noise_seed,
    )


def _random_resized_crop(u: Tensor, H: int, W: int, scale: Range, ratio: Range) -> Tensor:
    """(V, B, 4) float64 (y0, x0, h, w); ``u`` holds (V, B, tries, 4) uniforms."""
    area = H * W
    target = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(target * aspect))  # half to even, as Python's round()
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = fits.to(torch.uint8).argmax(-1, keepdim=True)  # first True (0 if none)

    def pick(t: Tensor) -> Tensor:
        return t.gather(-1, first).squeeze(-1)

    h, w = pick(h), pick(w)
    y0 = torch.floor(pick(u[..., 2]) * (H - h + 1))  # torch.randint(0, H - h + 1)
    x0 = torch.floor(pick(u[..., 3]) * (W - w + 1))
    # Fallback: the whole image, clamped to the ratio range, centred.
    in_ratio = W / H
    if in_ratio < ratio[0]:
        fw, fh = W, round(W / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(H * ratio[1]), H
    else:
        fw, fh = W, H
    fallback = torch.tensor([(H - fh) // 2, (W - fw) // 2, fh, fw], dtype=torch.float64)
    box = torch.stack([y0, x0, h, w], -1)
    return torch.where(fits.any(-1, keepdim=True), box, fallback)


def per_view_specs(spec: SpecLike | Sequence[SpecLike], views: int) -> list[AugmentSpec]:
    """``views`` parsed specs: one spec for every view, or a list of one per view."""
    if not isinstance(spec, (list, tuple)):
        return [AugmentSpec.parse(spec)] * views
    if len(spec) != views:
        raise ValueError(
            f"spec must be one spec or a list of one per view ({views}), got {len(spec)}"
        )
    return [AugmentSpec.parse(s) for s in spec]


def per_view_sizes(
    size: int | Sequence[int] | None, sizes: Sequence[int | Sequence[int]] | None, views: int
) -> list[tuple[int, int]]:
    """The (h, w) of each of ``views`` views: ``size`` for all, or ``sizes`` one per view."""
    if sizes is None:
        return [_size_pair(size, "size")] * views
    if isinstance(sizes, (str, int)) or not isinstance(sizes, Sequence) or len(sizes) != views:
        raise ValueError(f"sizes must be a list of one size per view ({views}), got {sizes!r}")
    return [_size_pair(s, f"sizes[{i}]") for i, s in enumerate(sizes)]


def _size_pair(size: Any, name: str) -> tuple[int, int]:
    hw = [size, size] if isinstance(size, int) and not isinstance(size, bool) else size
    if (
        not isinstance(hw, (list, tuple))
        or len(hw) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in hw)
    ):
        raise ValueError(f"{name} must be a positive int or an (h, w) pair, got {size!r}")
    return int(hw[0]), int(hw[1])


def _runs(items: Sequence[Any]) -> list[tuple[int, int]]:
    """[start, end) of each maximal run of equal consecutive items."""
    runs, start = [], 0
    for i in range(1, len(items) + 1):
        if i == len(items) or items[i] != items[start]:
            runs.append((start, i))
            start = i
    return runs


def view_seed(seed: int, view: int) -> int:
    """The seed of the group of views starting at ``view`` (> 0) of a draw seeded ``seed``
    (splitmix-style mixing: neighbouring views get unrelated streams)."""
    z = (seed * 0x9E3779B97F4A7C15 + view * 0xD1B54A32D192ED03) & (2**64 - 1)
    z ^= z >> 31
    z = (z * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z ^= z >> 29
    return int(z % (2**62))


# ----------------------------------------------------------------------------- public op


def augment_views(
    x: Tensor,
    spec: SpecLike | Sequence[SpecLike] = "simclr",
    *,
    views: int = 2,
    size: int | Sequence[int] = 112,
    sizes: Sequence[int | Sequence[int]] | None = None,
    intensity: WindowSpec | WindowLike | Sequence[WindowLike] = "minmax",
    repeat: int = 3,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    seed: int = 0,
    params: AugmentParams | None = None,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    backend: str | None = None,
) -> tuple[list[Tensor], AugmentParams]:
    """Make ``views`` randomly augmented views of every image (see the module docstring).

    Args:
        x: int16 HU slices (B, H, W) or (B, 1, H, W), or uint8 RGB images (B, H, W, 3);
            on CPU or CUDA.
        spec: an :class:`AugmentSpec`, a preset name (:data:`PRESETS`) or a dict for
            :meth:`AugmentSpec.parse`; or a list of V of them, one per view (multi-crop,
            asymmetric views; see :func:`sample_params`).
        views: V >= 1 views per image.
        size: output (h, w), or one int for (size, size).
        sizes: instead of ``size``, one output size per view (multi-crop: DINO's 2 global
            and N local crops). Each run of consecutive views of one size is made by one
            call of the op (every backend) on those views' params, so it matches the
            reference of that call; the view index in the noise key (step 8) counts
            within the run.
        intensity: CT only (ignored for RGB): anything :meth:`WindowSpec.parse` accepts:
            ``"minmax"`` (study A), a window name, (center, width), a list of them, or a
            ``WindowSpec`` (used as is: ``repeat`` is ignored; ``mean``/``std``, when
            given, replace the spec's).
        repeat: copies of each window's channel (study A: 1 min-max channel x 3).
        mean, std: per output channel normalisation, applied last; one value or one per
            channel (RGB: 3, e.g. ImageNet's statistics).
        seed: seeds the CPU generator the parameters are drawn from.
        params: use these parameters instead of drawing them (replay, backend checks).
        dtype: output dtype: float32, float16 or bfloat16 (computed in fp32, rounded once).
        channels_last: each view in channels_last memory format.
        backend: force ``reference``, ``cpu``, ``cuda`` or ``triton`` (else
            RADENGINE_BACKEND, else ``cpu`` for CPU tensors and ``cuda``, then ``triton``,
            for CUDA tensors, when built; else ``reference``).

    Returns:
        (views, params): a list of V tensors (B, C, h, w) of ``dtype`` on x's device
        (C = 3 for RGB, windows x repeat for CT; (h, w) per view with ``sizes``), and the
        :class:`AugmentParams` used (CPU tensors, leading dims (V, B)).

    Raises:
        ValueError: a bad argument, naming it.

    Example:
        >>> x = torch.randint(-1024, 2000, (8, 128, 128), dtype=torch.int16)
        >>> (v1, v2), params = augment_views(x, "simclr", size=112, seed=1)
        >>> v1.shape, params.crop.shape
        (torch.Size([8, 3, 112, 112]), torch.Size([2, 8, 4]))
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    rgb = x.dtype == torch.uint8
    if x.dtype == torch.int16:
        if x.dim() not in (3, 4) or (x.dim() == 4 and x.shape[1] != 1):
            raise ValueError(
                f"x: int16 CT must have shape (B, H, W) or (B, 1, H, W), got {tuple(x.shape)}"
            )
    elif rgb:
        if x.dim() != 4 or x.shape[-1] != 3:
            raise ValueError(f"x: uint8 RGB must have shape (B, H, W, 3), got {tuple(x.shape)}")
    else:
        raise ValueError(
            f"x must be int16 HU (B, H, W) / (B, 1, H, W) or uint8 RGB (B, H, W, 3), got {x.dtype}"
        )
    B, H, W = x.shape[0], x.shape[-3 if rgb else -2], x.shape[-2 if rgb else -1]
    if H < 1 or W < 1:
        raise ValueError(f"x has an empty image side: shape {tuple(x.shape)}")
    V = _check_int(views, "views")
    specs = per_view_specs(spec, V)
    hws = per_view_sizes(size, sizes, V)
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be torch.float32, float16 or bfloat16, got {dtype}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    window_spec = None if rgb else _window_spec(intensity, repeat, mean, std)
    if rgb:
        mean_t = _per_channel(mean, 0.0, 3, "mean")
        std_t = _per_channel(std, 1.0, 3, "std")
    else:
        mean_t, std_t = window_spec.mean, window_spec.std  # type: ignore[union-attr]
    for i, s in enumerate(std_t):
        if not s > 0:
            raise ValueError(f"std[{i}] must be > 0, got {s}")
    C = 3 if rgb else window_spec.channels  # type: ignore[union-attr]
    if params is None:
        params = sample_params(specs, V, B, (H, W), window_spec, seed=seed)
    else:
        _check_params(params, V, B, C, rgb)
    out: list[Tensor] = []
    for a, b in _runs(hws):
        part = params if (a, b) == (0, V) else params.view_range(a, b)
        made = torch.ops.radengine.augment_views(
            x,
            *(t for _, t in part.items()),
            list(hws[a]),
            list(mean_t),
            list(std_t),
            bool(window_spec is not None and window_spec.minmax),
            dtype,
            bool(channels_last),
            _dispatch.requested_backend(backend) or "",
        )
        out += made.unbind(0)
    return out, params


def _check_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _window_spec(intensity, repeat, mean, std) -> WindowSpec:
    if isinstance(intensity, WindowSpec):
        c = intensity.channels
        return dataclasses.replace(
            intensity,
            mean=intensity.mean if mean is None else _per_channel(mean, 0.0, c, "mean"),
            std=intensity.std if std is None else _per_channel(std, 1.0, c, "std"),
        )
    try:
        return WindowSpec.parse(intensity, repeat=repeat, mean=mean, std=std)
    except ValueError as exc:
        raise ValueError(f"intensity: {exc}") from None


def _check_params(params: AugmentParams, V: int, B: int, C: int, rgb: bool) -> None:
    if not isinstance(params, AugmentParams):
        raise ValueError(f"params must be an AugmentParams, got {type(params).__name__}")
    if params.views != V:
        raise ValueError(f"params has {params.views} views but views={V}")
    if params.batch != B:
        raise ValueError(f"params were drawn for batch {params.batch} but x has batch {B}")
    if rgb and params.window is not None:
        raise ValueError("params.window must be None for RGB input (it holds CT windows)")
    if not rgb and params.window is None:
        raise ValueError("params.window is None but x is CT: it needs (V, B, C, 2) windows")
    if params.channels != C:
        raise ValueError(f"params.window has {params.channels} channels but the output has {C}")


# ----------------------------------------------------------------------------- reference


def reference_augment_views(
    x: Tensor,
    params: AugmentParams,
    size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    minmax: bool,
    dtype: torch.dtype,
    channels_last: bool,
) -> Tensor:
    """The oracle, in plain torch, batched over views and samples.

    Args:
        x: int16 (B, H, W) / (B, 1, H, W) or uint8 (B, H, W, 3).
        params: the parameters (any device; moved to x's).
        size: output (h, w).
        mean, std: per output channel, length C.
        minmax: CT windows are fractions of each slice's range (``params.window``).
        dtype, channels_last: output dtype and memory format of each view.

    Returns:
        (V, B, C, h, w) tensor of ``dtype``; ``out[v]`` is (B, C, h, w), channels_last when
        asked.
    """
    p = params.to(x.device)
    V, B, C = p.views, x.shape[0], len(mean)
    h, w = (int(s) for s in size)
    rgb = x.dtype == torch.uint8
    if rgb:
        H, W = x.shape[1], x.shape[2]
        image = x.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        gray = False
    else:
        H, W = x.shape[-2], x.shape[-1]
        hu = x.reshape(B, 1, H, W).to(torch.float32)
        lo_img = hu.amin(dim=(2, 3), keepdim=True) if minmax else None
        hi_img = hu.amax(dim=(2, 3), keepdim=True) if minmax else None
        # All channels share one window (e.g. min-max x 3): work on one channel and expand
        # before the noise (see step 3 in the module docstring).
        gray = C > 1 and bool((p.window == p.window[:, :, :1]).all())
    grid, outside = _sampling_grid(p, H, W, h, w)

    # Steps 1-2: one grid_sample per view (the windows may differ between views).
    y = torch.empty((V, B, 1 if gray else C, h, w), dtype=torch.float32, device=x.device)
    prev_window: Tensor | None = None
    for v in range(V):
        if not rgb:
            win = p.window[v, :, :1] if gray else p.window[v]  # type: ignore[index]
            if prev_window is None or not torch.equal(win, prev_window):
                image = _window(hu, win, lo_img, hi_img)
                prev_window = win
        y[v] = F.grid_sample(image, grid[v], "bilinear", "border", align_corners=False)
        if outside is not None:
            y[v].masked_fill_(outside[v], 0.0)
    y = y.view(V * B, -1, h, w)  # (N, Cu, h, w), n = v B + b; Cu = 1 when gray

    def flat(t: Tensor) -> Tensor:
        return t.reshape(V * B, *t.shape[2:])

    def per_row(t: Tensor, i: Tensor) -> Tensor:
        return t[i].view(-1, 1, 1, 1)

    # Steps 3-7. Each step updates the rows of its views in place (see _subset).
    y = _color_jitter(y, flat(p.jitter), flat(p.order), C)
    if C == 3 and y.shape[1] == 3:  # (a gray image is its own grayscale)
        y = _subset(y, flat(p.grayscale), lambda t, _: t.copy_(_gray(t, 3).expand_as(t)))
    gamma = flat(p.gamma)
    y = _subset(y, gamma != 1, lambda t, i: t.pow_(per_row(gamma, i)).clamp_(0, 1))
    thr = flat(p.solarize_threshold)
    y = _subset(y, flat(p.solarize), lambda t, i: torch.where(t >= per_row(thr, i), 1 - t, t))
    sigma = flat(p.blur_sigma)
    y = _subset(y, sigma > 0, lambda t, i: _blur(t, sigma[i]))
    # Step 8: the noise differs per channel, so a gray image becomes C channels here.
    noise_std = flat(p.noise_std)
    if bool((noise_std > 0).any()):
        y = y.expand(-1, C, -1, -1).contiguous()
        rows = torch.arange(V * B, device=x.device)

        def add_noise(t: Tensor, i: Tensor) -> Tensor:
            view, sample = rows[i] // B, rows[i] % B
            z = _normal_from_hash(p.noise_seed.to(x.device)[view, sample], view, C, h, w)
            return t.add_(z.mul_(per_row(noise_std, i))).clamp_(0, 1)

        y = _subset(y, noise_std > 0, add_noise)
    # Step 9, into the output: fp32 arithmetic, one rounding.
    normalise = any(m != 0 for m in mean) or any(sd != 1 for sd in std)  # (y - 0) / 1 == y
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 1, C, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 1, C, 1, 1)
    if y.shape[1] == C and dtype == torch.float32 and not channels_last:
        out = y.view(V, B, C, h, w)  # already the output
        return out.sub_(mean_t).div_(std_t) if normalise else out
    out = _new_output(V, B, C, h, w, dtype, x.device, channels_last)
    y = y.view(V, B, -1, h, w).expand(V, B, C, h, w)
    if not normalise:
        return out.copy_(y)
    if dtype == torch.float32:
        return out.copy_(y).sub_(mean_t).div_(std_t)
    return out.copy_((y - mean_t) / std_t)


def _sampling_grid(p: AugmentParams, H: int, W: int, h: int, w: int):
    """grid_sample's (V, B, h, w, 2) grid for the mapping of step 1, and where the sample
    point lies outside the image's area ((V, B, 1, h, w) bool; None without rotation)."""
    dev = p.crop.device
    y0, x0, ch, cw = p.crop.unbind(-1)  # (V, B)
    fx = torch.where(p.hflip, -1.0, 1.0).to(torch.float32)
    fy = torch.where(p.vflip, -1.0, 1.0).to(torch.float32)
    theta = torch.deg2rad(p.angle)
    cos, sin = torch.cos(theta), torch.sin(theta)
    f32 = dict(dtype=torch.float32, device=dev)
    u = ((torch.arange(w, **f32) + 0.5) / w - 0.5).view(1, 1, 1, w, 1)
    v = ((torch.arange(h, **f32) + 0.5) / h - 0.5).view(1, 1, h, 1, 1)

    def e(t: Tensor) -> Tensor:  # (V, B, 2) -> (V, B, 1, 1, 2)
        return t[:, :, None, None, :]

    # s = centre + a u + b v per coordinate, in pixels; grid_sample (align_corners=False)
    # wants (2 s + 1) / size - 1: folded into the per-sample coefficients, so that only the
    # final broadcast sum is image-sized.
    size = torch.tensor([W, H], **f32)
    centre = torch.stack([x0 + cw / 2 - 0.5, y0 + ch / 2 - 0.5], -1)  # (V, B, 2)
    a = torch.stack([cos * cw * fx, sin * cw * fx], -1)
    b = torch.stack([-sin * ch * fy, cos * ch * fy], -1)
    row = e((2 * centre + 1) / size - 1) + e(2 * a / size) * u  # (V, B, 1, w, 2)
    grid = row + e(2 * b / size) * v  # (V, B, h, w, 2), one image-sized pass
    outside = None
    if bool((p.angle != 0).any()):  # the image's area is [-1, 1] in grid units
        outside = ((grid[..., 0].abs() > 1) | (grid[..., 1].abs() > 1)).unsqueeze(2)
    return grid, outside


def _window(hu: Tensor, win: Tensor, lo_img: Tensor | None, hi_img: Tensor | None) -> Tensor:
    """(B, 1, H, W) HU -> (B, C, H, W) in [0, 1] with per-sample windows ``win`` (B, C, 2)."""
    lo, hi = win[..., 0, None, None], win[..., 1, None, None]
    if lo_img is not None:  # fractions of each slice's [min, max]
        rng = hi_img - lo_img
        lo, hi = lo_img + lo * rng, lo_img + hi * rng
    span = hi - lo
    if bool((span > 0).all()):
        return ((hu - lo) / span).clamp_(0, 1)
    return torch.where(span > 0, (hu - lo) / span, 0.0).clamp_(0, 1)


def _subset(y: Tensor, mask: Tensor, fn) -> Tensor:
    """``y`` with ``fn(rows, idx)`` applied to its rows where ``mask`` is True. ``y`` is an
    owned contiguous buffer; ``fn`` may update its argument in place and return it."""
    idx = mask.nonzero().squeeze(1)
    if idx.numel() == 0:
        return y
    if idx.numel() == y.shape[0]:
        return fn(y, idx)
    return y.index_copy_(0, idx, fn(y.index_select(0, idx), idx))


def _gray(y: Tensor, C: int) -> Tensor:
    """(n, 1, h, w) luma of (n, 3, h, w); the channel mean for C != 3; ``y`` itself for a
    gray (n, 1, h, w) image standing for C identical channels."""
    if y.shape[1] == 1:
        return y  # R = G = B: the weights sum to 1
    if C != 3:
        return y.mean(1, keepdim=True)
    r, g, b = GRAY_WEIGHTS
    return (y[:, 0:1] * r).add_(y[:, 1:2] * g).add_(y[:, 2:3] * b)


def _color_jitter(y: Tensor, factors: Tensor, order: Tensor, C: int) -> Tensor:
    """Step 3: per row, the ops with a non-identity factor, in that row's order."""
    identity = torch.tensor(JITTER_IDENTITY, dtype=torch.float32, device=y.device)
    active = factors != identity  # (N, 4)
    if not bool(active.any()):
        return y
    if C != 3:
        active[:, 2:] = False
    if y.shape[1] == 1:  # gray: saturation and hue are identities (gray(y) = y, S = 0)
        active[:, 2:] = False

    def f(i: Tensor, k: int) -> Tensor:
        return factors[i, k].view(-1, 1, 1, 1)

    # torchvision's _blend(a, b, r) = clamp(r a + (1 - r) b, 0, 1), in place in a.
    def brightness(t: Tensor, i: Tensor) -> Tensor:
        return t.mul_(f(i, 0)).clamp_(0, 1)

    def contrast(t: Tensor, i: Tensor) -> Tensor:
        mean = _gray(t, C).mean(dim=(1, 2, 3), keepdim=True)
        return t.mul_(f(i, 1)).add_((1.0 - f(i, 1)) * mean).clamp_(0, 1)

    def saturation(t: Tensor, i: Tensor) -> Tensor:
        gray = _gray(t, C).mul_(1.0 - f(i, 2))  # before t changes
        return t.mul_(f(i, 2)).add_(gray).clamp_(0, 1)

    def hue(t: Tensor, i: Tensor) -> Tensor:
        return _adjust_hue(t, factors[i, 3])

    for step in range(4):
        for op, fn in enumerate((brightness, contrast, saturation, hue)):
            y = _subset(y, active[:, op] & (order[:, step] == op), fn)
    return y


def _adjust_hue(y: Tensor, hue: Tensor) -> Tensor:
    """torchvision's adjust_hue of (n, 3, h, w) in [0, 1], one shift per row.

    Its RGB -> HSV gives V = max, chroma X = max - min and the hue in sixths
    H6 = (g - b) / X if max = r, 2 + (b - r) / X if max = g, else 4 + (r - g) / X (0 when
    X = 0). Shifting by d and going back, its table of (v, p, q, t) per sector with
    p = V - X, q = V - X f, t = V - X (1 - f) is, channel by channel, the closed form::

        c_k = V - X clamp(min(m, 4 - m), 0, 1),  m = (n_k + H6 + 6 d) mod 6,  n = (5, 3, 1)

    (the same values up to rounding, in half the passes).
    """
    r, g, b = y.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    is_r, is_g = maxc == r, maxc == g
    h6 = torch.where(is_r, g - b, torch.where(is_g, b - r, r - g))
    h6.div_(torch.where(chroma > 0, chroma, 1.0)).add_(
        torch.where(is_r, 0.0, torch.where(is_g, 2.0, 4.0))
    )
    h6.add_(6.0 * hue.view(-1, 1, 1))
    out = torch.empty_like(y)
    for k, n in enumerate((5.0, 3.0, 1.0)):
        m = (h6 + n).remainder_(6.0)
        ramp = torch.minimum(m, 4.0 - m).clamp_(0.0, 1.0)
        torch.sub(maxc, ramp.mul_(chroma), out=out[:, k])
    return out


def blur_radius(sigma: Tensor) -> Tensor:
    """ceil(3 sigma) as int64 (0 for sigma = 0)."""
    return torch.ceil(3.0 * sigma).to(torch.int64)


def _blur(y: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur of (n, c, h, w) with one sigma per row, edges clamped."""
    n, c, h, w = y.shape
    radius = blur_radius(sigma)
    R = int(radius.max())
    k = torch.arange(-R, R + 1, device=y.device, dtype=torch.float32)
    weights = torch.exp(-0.5 * (k / sigma[:, None]) ** 2)
    weights = torch.where(k.abs() <= radius[:, None], weights, 0.0)
    weights = weights / weights.sum(1, keepdim=True)  # (n, 2R + 1)
    kernel = weights.repeat_interleave(c, 0)  # (n c, 2R + 1)
    t = F.pad(y.reshape(1, n * c, h, w), (R, R, 0, 0), mode="replicate")
    t = F.conv2d(t, kernel.view(n * c, 1, 1, -1), groups=n * c)
    t = F.pad(t, (0, 0, R, R), mode="replicate")
    t = F.conv2d(t, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return t.reshape(n, c, h, w)


# ----------------------------------------------------------------------------- noise


def _mix32(h: Tensor) -> Tensor:
    """Chris Wellons' lowbias32 on int64 tensors holding 32-bit words, IN PLACE (``h`` is
    returned). The second multiplier is taken minus 2^32 so that no int64 product
    overflows (the low 32 bits are the same)."""
    tmp = torch.empty_like(h)
    h.bitwise_xor_(torch.bitwise_right_shift(h, 16, out=tmp))
    h.mul_(0x7FEB352D).bitwise_and_(_M32)
    h.bitwise_xor_(torch.bitwise_right_shift(h, 15, out=tmp))
    h.mul_(0x846CA68B - (1 << 32)).bitwise_and_(_M32)
    return h.bitwise_xor_(torch.bitwise_right_shift(h, 16, out=tmp))


def noise_hash(
    seed: Tensor, view: Tensor, channels: int, height: int, width: int
) -> tuple[Tensor, Tensor]:
    """The two 32-bit words behind the noise of each pixel, as int64 in [0, 2^32).

    For n (seed, view) pairs (int64 tensors of shape (n,); seed is the sample's
    ``noise_seed[v, b]``) returns two (n, channels, height, width) tensors a, b. With
    mix = lowbias32 (``_mix32``)::

        k = mix(lo32(seed) ^ 0x9E3779B9); k = mix(k ^ hi32(seed))
        k = mix(k ^ view); k = mix(k ^ channel); k = mix(k ^ y)
        a = mix(k ^ (2 x)),  b = mix(k ^ (2 x + 1))

    (all words are 32-bit unsigned; ``^`` is xor). A kernel computes the same per pixel.
    """
    k = _mix32((seed & _M32) ^ 0x9E3779B9)
    k = _mix32(k ^ ((seed >> 32) & _M32))
    k = _mix32(k ^ view)
    dev = seed.device
    k = _mix32(k[:, None] ^ torch.arange(channels, device=dev))
    k = _mix32(k[..., None] ^ torch.arange(height, device=dev))[..., None]  # (n, C, h, 1)
    x2 = 2 * torch.arange(width, device=dev)
    return _mix32(k ^ x2), _mix32(k ^ (x2 + 1))


def _normal_from_hash(seed: Tensor, view: Tensor, channels: int, height: int, width: int) -> Tensor:
    """Standard normal (n, C, h, w) float32 by Box-Muller on the top 24 bits of the two
    words: u1 = (a >> 8 + 1) 2^-24 in (0, 1], u2 = (b >> 8) 2^-24 in [0, 1)."""
    a, b = noise_hash(seed, view, channels, height, width)
    u1 = a.bitwise_right_shift_(8).add_(1).to(torch.float32).mul_(2.0**-24)
    u2 = b.bitwise_right_shift_(8).to(torch.float32).mul_(2.0**-24)
    return u1.log_().mul_(-2.0).sqrt_().mul_(u2.mul_(2.0 * math.pi).cos_())


# ----------------------------------------------------------------------------- registration


def _new_output(V, B, C, h, w, dtype, device, channels_last: bool) -> Tensor:
    if channels_last:  # each view (B, C, h, w) in channels_last
        return torch.empty((V, B, h, w, C), dtype=dtype, device=device).permute(0, 1, 4, 2, 3)
    return torch.empty((V, B, C, h, w), dtype=dtype, device=device)


def _row_table(p: AugmentParams) -> Tensor:
    """(V * B, augment_row_fields) float32: the per-row parameters of the cpu kernel
    (csrc/cpu/augment.h: AugmentRowField). cos and sin are torch's, as the reference's."""
    theta = torch.deg2rad(p.angle)
    f32 = torch.float32
    columns = [
        *p.crop.unbind(-1),
        torch.where(p.hflip, -1.0, 1.0).to(f32),
        torch.where(p.vflip, -1.0, 1.0).to(f32),
        torch.cos(theta),
        torch.sin(theta),
        *p.jitter.unbind(-1),
        *p.order.to(f32).unbind(-1),
        p.grayscale.to(f32),
        p.gamma,
        p.solarize.to(f32),
        p.solarize_threshold,
        p.blur_sigma,
        p.noise_std,
    ]
    return torch.stack(columns, -1).reshape(-1, len(columns)).contiguous()


def _cpu_kernel_missing() -> str | None:
    if _native.cpu is not None and not hasattr(_native.cpu, "augment_views"):
        return (
            "radengine._cpu was built before augment_views existed; rebuild it with "
            "`pip install -e .`"
        )
    return None


def _kernel_layout(x: Tensor, p: AugmentParams, C: int):
    """(rgb, H, W, element strides (b, y, x, channel), gray) as the native kernels take
    them; ``gray``: the reference's rule, one channel computed when every view's channels
    share a window."""
    if x.dtype == torch.uint8:
        return True, x.shape[1], x.shape[2], list(x.stride()), False
    strides = [x.stride(0), x.stride(-2), x.stride(-1), 0]
    gray = C > 1 and bool((p.window == p.window[:, :, :1]).all())  # type: ignore[index]
    return False, x.shape[-2], x.shape[-1], strides, gray


_ROW_COS, _ROW_SIN = 6, 7  # _row_table's cos/sin columns (csrc/cpu/augment.h: kRowCos)


def _cuda_kernel_missing() -> str | None:
    if _native.cuda is not None and not hasattr(_native.cuda, "augment_views"):
        return (
            "radengine._cuda was built before augment_views existed; rebuild it with "
            "`pip install -e .`"
        )
    return None


def _augment_views_cuda(
    x: Tensor,
    params: AugmentParams,
    size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    minmax: bool,
    dtype: torch.dtype,
    channels_last: bool,
) -> Tensor:
    """The ``cuda`` backend: csrc/cuda/augment.cu on x's device and current stream.

    The per-row tables are built on the CPU from the (CPU) params and go to the device in
    one pinned, non-blocking copy (no host sync); where a row is rotated, cos/sin of its
    angle are then recomputed there by torch's CUDA kernels, as the reference computes them.
    """
    p = params.to("cpu")
    V, B, C = p.views, x.shape[0], len(mean)
    N = V * B
    h, w = (int(s) for s in size)
    rgb, H, W, strides, gray = _kernel_layout(x, p, C)
    if (H - 1) * strides[1] + (W - 1) * strides[2] + 2 * strides[3] >= 2**31:
        # The kernels' in-image tap offsets are int32.
        if x.is_contiguous():
            raise ValueError(f"augment_views (cuda): one image of {H}x{W} is too large")
        return _augment_views_cuda(x.contiguous(), p, size, mean, std, minmax, dtype, channels_last)
    i32 = torch.int32
    sigma = p.blur_sigma.reshape(N)
    blurred = (sigma > 0).nonzero().squeeze(1).to(i32)
    slot = torch.full((N,), -1, dtype=i32)
    slot[blurred.long()] = torch.arange(blurred.numel(), dtype=i32)
    rotated = bool((p.angle != 0).any())
    window = p.window.reshape(-1) if p.window is not None else torch.zeros(0)
    parts = [  # int32 words; the int64 seeds first, so 8-byte aligned on the device
        p.noise_seed.reshape(N).contiguous().view(i32),
        _row_table(p).view(i32).reshape(-1),
        window.contiguous().view(i32),
        slot,
        blurred,
        p.angle.reshape(N).contiguous().view(i32),
    ]
    packed = torch.cat(parts)
    if x.is_cuda:
        packed = packed.pin_memory()
    seeds, rows, windows, slots, blur_rows, angle = packed.to(x.device, non_blocking=True).split(
        [t.numel() for t in parts]
    )
    rows = rows.view(torch.float32).view(N, -1)
    if rotated:
        theta = torch.deg2rad(angle.view(torch.float32))
        rows[:, _ROW_COS] = torch.cos(theta)
        rows[:, _ROW_SIN] = torch.sin(theta)
    contrast = bool((p.jitter[..., 1] != 1).any())
    n_blur = blurred.numel()
    cuda = _native.cuda
    nbytes = cuda.augment_views_workspace(rgb, V, B, H, W, C, h, w, minmax, gray, contrast, n_blur)
    workspace = torch.empty(nbytes, dtype=torch.uint8, device=x.device)
    out = _new_output(V, B, C, h, w, dtype, x.device, channels_last)
    cuda.augment_views(
        x.data_ptr(),
        strides,
        rgb,
        V,
        B,
        H,
        W,
        out.data_ptr(),
        list(out.stride()),
        C,
        h,
        w,
        rows.data_ptr(),
        windows.data_ptr(),
        seeds.data_ptr(),
        slots.data_ptr(),
        blur_rows.data_ptr(),
        n_blur,
        int(blur_radius(sigma).max()) if n_blur else 0,
        list(mean),
        list(std),
        minmax,
        gray,
        contrast,
        rotated,
        _native.DTYPE_CODES[str(dtype).removeprefix("torch.")],
        workspace.data_ptr(),
        nbytes,
        x.device.index or 0,
        torch.cuda.current_stream(x.device).cuda_stream if x.is_cuda else 0,
    )
    return out


def _augment_views_cpu(
    x: Tensor,
    params: AugmentParams,
    size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    minmax: bool,
    dtype: torch.dtype,
    channels_last: bool,
) -> Tensor:
    """The ``cpu`` backend: csrc/cpu/augment.cpp, one fused pass per (view, sample)."""
    p = params.to("cpu")
    V, B, C = p.views, x.shape[0], len(mean)
    h, w = (int(s) for s in size)
    rgb, H, W, strides, gray = _kernel_layout(x, p, C)
    windows = None if rgb else p.window.reshape(V * B, C, 2).contiguous()  # type: ignore[union-attr]
    if (H - 1) * abs(strides[1]) + W * abs(strides[2]) + 2 * abs(strides[3]) >= 2**31:
        # The kernel's in-slice tap offsets are int32 (its coordinate loop vectorises).
        if x.is_contiguous():
            raise ValueError(f"augment_views (cpu): one image of {H}x{W} is too large")
        return _augment_views_cpu(x.contiguous(), p, size, mean, std, minmax, dtype, channels_last)
    rows = _row_table(p)
    seeds = p.noise_seed.contiguous()
    out = _new_output(V, B, C, h, w, dtype, x.device, channels_last)
    _native.cpu.augment_views(
        x.data_ptr(),
        strides,
        rgb,
        V,
        B,
        H,
        W,
        out.data_ptr(),
        list(out.stride()),
        C,
        h,
        w,
        rows.data_ptr(),
        0 if windows is None else windows.data_ptr(),
        seeds.data_ptr(),
        list(mean),
        list(std),
        minmax,
        gray,
        _native.DTYPE_CODES[str(dtype).removeprefix("torch.")],
        torch.get_num_threads(),
    )
    return out


def _augment_views_triton(
    x: Tensor,
    params: AugmentParams,
    size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    minmax: bool,
    dtype: torch.dtype,
    channels_last: bool,
) -> Tensor:
    """The ``triton`` backend: kernels/augment.py (CUDA tensors; CPU tensors only under
    TRITON_INTERPRET=1). Steps 1-6 fused per pixel, blur as two passes over a scratch of
    the blurred views."""
    from radengine.kernels import augment as kernel

    return kernel.augment_views(x, params, size, mean, std, minmax, dtype, channels_last)


IMPLS = {"reference": reference_augment_views}
# A _cpu built before this op (stale editable install) lacks the kernel: no cpu backend then
# (forcing it says why); not built at all: listed, and _dispatch reports the build error.
if _cpu_kernel_missing() is None:
    IMPLS["cpu"] = _augment_views_cpu
# Likewise a _cuda built before this op: no cuda backend (the default on CUDA tensors) then.
if _cuda_kernel_missing() is None:
    IMPLS["cuda"] = _augment_views_cuda
IMPLS["triton"] = _augment_views_triton


@torch.library.custom_op("radengine::augment_views", mutates_args=())
def _augment_views_op(
    x: Tensor,
    crop: Tensor,
    hflip: Tensor,
    vflip: Tensor,
    angle: Tensor,
    window: Tensor | None,
    jitter: Tensor,
    order: Tensor,
    grayscale: Tensor,
    gamma: Tensor,
    solarize: Tensor,
    solarize_threshold: Tensor,
    blur_sigma: Tensor,
    noise_std: Tensor,
    noise_seed: Tensor,
    size: list[int],
    mean: list[float],
    std: list[float],
    minmax: bool,
    dtype: torch.dtype,
    channels_last: bool,
    backend: str,
) -> Tensor:
    params = AugmentParams(
        crop, hflip, vflip, angle, window, jitter, order, grayscale, gamma, solarize,
        solarize_threshold, blur_sigma, noise_std, noise_seed,
    )  # fmt: skip
    if x.shape[0] == 0:
        return _new_output(params.views, 0, len(mean), *size, dtype, x.device, channels_last)
    forced = backend or _dispatch.requested_backend()
    for name, missing in (("cpu", _cpu_kernel_missing), ("cuda", _cuda_kernel_missing)):
        if forced == name and (why := missing()):
            raise _dispatch.BackendUnavailableError(
                f"augment: backend {name!r} requested but {why}"
            )
    _, impl = _dispatch.select("augment", IMPLS, x.device, backend or None)
    return impl(x, params, size, mean, std, minmax, dtype, channels_last)


@_augment_views_op.register_fake
def _(x, crop, hflip, vflip, angle, window, jitter, order, grayscale, gamma, solarize,
      solarize_threshold, blur_sigma, noise_std, noise_seed, size, mean, std, minmax, dtype,
      channels_last, backend):  # fmt: skip
    V, B = crop.shape[0], x.shape[0]
    return _new_output(V, B, len(mean), *size, dtype, x.device, channels_last)

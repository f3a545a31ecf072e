"""hu_window: CT slices in Hounsfield units (HU) -> normalised network input.

For an int16 slice ``x`` and output channel ``c``::

    window [lo_c, hi_c] (lo = center - width/2, hi = center + width/2):
        y_c = clamp((x - lo_c) / (hi_c - lo_c), 0, 1)
    per-image min-max (study A's "naive" mode; every channel the same):
        y_c = (x - min(x)) / (max(x) - min(x)),  0 for a constant image
    then, optionally, per-channel normalisation:
        out_c = (y_c - mean_c) / std_c

Study A's options are both here: ``"minmax"`` (its default, each slice scaled to [0, 1])
and ``"clip"`` ([-1024, 3072] HU scaled to [0, 1]); ``repeat=3`` copies one channel to
three. Radiology windows come by name (:data:`NAMED_WINDOWS`) or as (center, width).

Backends: ``reference`` (plain torch, below: the oracle), ``cpu`` (csrc/cpu/hu_window.cpp),
``cuda`` (csrc/cuda/hu_window.cu), ``triton`` (kernels/hu_window.py). All compute in fp32
and round once to the output dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from radengine import _native
from radengine.ops import _dispatch

# (center, width) in HU. Common radiology presets; "clip" is study A's [-1024, 3072] range.
NAMED_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "soft_tissue": (40.0, 400.0),
    "mediastinum": (50.0, 350.0),
    "liver": (60.0, 160.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "clip": (1024.0, 4096.0),
}
MINMAX_NAMES = ("minmax", "naive")
MAX_CHANNELS = 16  # csrc/common/hu_window.h: kHuWindowMaxChannels
OUTPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

WindowLike = str | tuple[float, float]


@dataclass(frozen=True)
class WindowSpec:
    """Which channels to make from HU, and how to normalise them.

    Shared by :func:`hu_window` and the augmentation ops so one spec describes a
    dataset's intensity handling everywhere. Build it with :meth:`parse`.

    Attributes:
        windows: (center, width) per window, in HU; empty in min-max mode.
        minmax: per-image min-max scaling instead of fixed windows.
        repeat: each window's channel is repeated this many times (e.g. 1 window x 3).
        mean: per output channel, subtracted after windowing.
        std: per output channel, divides after subtracting ``mean``.
    """

    windows: tuple[tuple[float, float], ...]
    minmax: bool
    repeat: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return (1 if self.minmax else len(self.windows)) * self.repeat

    def bounds(self) -> tuple[list[float], list[float]]:
        """Per output channel (lo, hi) in HU; zeros in min-max mode (ranges are per image)."""
        if self.minmax:
            return [0.0] * self.channels, [0.0] * self.channels
        lo = [c - w / 2 for c, w in self.windows for _ in range(self.repeat)]
        hi = [c + w / 2 for c, w in self.windows for _ in range(self.repeat)]
        return lo, hi

    @classmethod
    def parse(
        cls,
        windows: WindowSpec | WindowLike | Sequence[WindowLike] = "soft_tissue",
        *,
        repeat: int = 1,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
    ) -> WindowSpec:
        """Validate and normalise a user's intensity options.

        Args:
            windows: a name from :data:`NAMED_WINDOWS`, ``"minmax"`` (alias ``"naive"``),
                a (center, width) pair, or a sequence of names and pairs (one channel each).
            repeat: copies of each window's channel, >= 1.
            mean: one value, or one per output channel; default 0.
            std: one value, or one per output channel, each > 0; default 1.

        Raises:
            ValueError: naming the argument and what is allowed.
        """
        if isinstance(windows, WindowSpec):
            return windows
        if isinstance(windows, str) or _is_pair(windows):
            items: list = [windows]
        elif isinstance(windows, Sequence):
            items = list(windows)
        else:
            raise ValueError(
                f"windows must be a name, a (center, width) pair or a list of them, "
                f"got {type(windows).__name__}"
            )
        if not items:
            raise ValueError(
                "windows is empty: give at least one window, e.g. 'soft_tissue', "
                "(40, 400) or 'minmax'"
            )
        minmax = any(isinstance(w, str) and w in MINMAX_NAMES for w in items)
        if minmax and len(items) > 1:
            raise ValueError(
                "windows: 'minmax' scales each image by its own range and cannot be mixed "
                "with fixed windows; use repeat= for several channels"
            )
        pairs: list[tuple[float, float]] = []
        if not minmax:
            for i, w in enumerate(items):
                pairs.append(_parse_window(w, f"windows[{i}]" if len(items) > 1 else "windows"))
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
            raise ValueError(f"repeat must be an integer >= 1, got {repeat!r}")
        channels = (1 if minmax else len(pairs)) * repeat
        if channels > MAX_CHANNELS:
            raise ValueError(
                f"windows x repeat gives {channels} channels; at most {MAX_CHANNELS} allowed"
            )
        mean_t = _per_channel(mean, 0.0, channels, "mean")
        std_t = _per_channel(std, 1.0, channels, "std")
        for i, s in enumerate(std_t):
            if not s > 0:
                raise ValueError(f"std[{i}] must be > 0, got {s}")
        return cls(tuple(pairs), minmax, repeat, mean_t, std_t)


def _is_pair(w: object) -> bool:
    return (
        isinstance(w, (tuple, list))
        and len(w) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in w)
    )


def _parse_window(w: object, where: str) -> tuple[float, float]:
    if isinstance(w, str):
        if w not in NAMED_WINDOWS:
            raise ValueError(
                f"{where}: unknown window {w!r}; named windows are "
                f"{', '.join(NAMED_WINDOWS)} (or 'minmax', or a (center, width) pair)"
            )
        return NAMED_WINDOWS[w]
    if not _is_pair(w):
        raise ValueError(f"{where}: expected a name or a (center, width) pair, got {w!r}")
    center, width = float(w[0]), float(w[1])  # type: ignore[index]
    if not width > 0:
        raise ValueError(f"{where} = {tuple(w)}: width must be > 0, got {width}")  # type: ignore[arg-type]
    return center, width


def _per_channel(
    value: float | Sequence[float] | None, default: float, channels: int, name: str
) -> tuple[float, ...]:
    if value is None:
        return (default,) * channels
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * channels
    values = tuple(float(v) for v in value)
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise ValueError(
            f"{name} has {len(values)} values but the output has {channels} channels; "
            f"give 1 or {channels}"
        )
    return values


def hu_window(
    x: Tensor,
    windows: WindowSpec | WindowLike | Sequence[WindowLike] = "soft_tissue",
    *,
    repeat: int = 1,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    backend: str | None = None,
) -> Tensor:
    """Window CT slices in HU into a normalised (B, C, H, W) tensor.

    Args:
        x: int16 HU, shape (B, H, W) or (B, 1, H, W), on CPU or CUDA.
        windows: see :meth:`WindowSpec.parse`; a ``WindowSpec`` is used as is.
        repeat, mean, std: see :meth:`WindowSpec.parse`.
        dtype: output dtype: float32, float16 or bfloat16 (computed in fp32, rounded once).
        channels_last: return the (B, C, H, W) tensor in channels_last memory format.
        backend: force ``reference``, ``cpu``, ``cuda`` or ``triton`` (else
            RADENGINE_BACKEND, else the fastest available for x's device).

    Returns:
        (B, C, H, W) tensor of ``dtype`` on x's device, C = windows x repeat.

    Example:
        >>> x = torch.randint(-1024, 2000, (2, 64, 64), dtype=torch.int16)
        >>> hu_window(x, ["brain", "soft_tissue", "bone"]).shape
        torch.Size([2, 3, 64, 64])
        >>> hu_window(x, "minmax", repeat=3, mean=0.5, std=0.25).shape
        torch.Size([2, 3, 64, 64])
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor of int16 HU, got {type(x).__name__}")
    if x.dtype != torch.int16:
        raise ValueError(
            f"x must be int16 Hounsfield units, got {x.dtype}; convert with "
            "x.round().clamp(-32768, 32767).to(torch.int16)"
        )
    if x.dim() not in (3, 4) or (x.dim() == 4 and x.shape[1] != 1):
        raise ValueError(f"x must have shape (B, H, W) or (B, 1, H, W), got {tuple(x.shape)}")
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be torch.float32, float16 or bfloat16, got {dtype}")
    spec = WindowSpec.parse(windows, repeat=repeat, mean=mean, std=std)
    lo, hi = spec.bounds()
    return torch.ops.radengine.hu_window(
        x,
        lo,
        hi,
        list(spec.mean),
        list(spec.std),
        spec.minmax,
        dtype,
        channels_last,
        _dispatch.requested_backend(backend) or "",
    )


def reference_hu_window(
    x: Tensor,
    lo: Sequence[float],
    hi: Sequence[float],
    mean: Sequence[float],
    std: Sequence[float],
    per_image_minmax: bool,
    dtype: torch.dtype,
    channels_last: bool,
) -> Tensor:
    """The oracle, in plain torch: every backend must match it. Per-channel arguments
    have length C; ``lo``/``hi`` are ignored when ``per_image_minmax``."""
    B, H, W = x.shape[0], x.shape[-2], x.shape[-1]
    C = len(mean)
    v = x.reshape(B, 1, H, W).to(torch.float32)
    if per_image_minmax:
        lo_t = v.amin(dim=(2, 3), keepdim=True)
        hi_t = v.amax(dim=(2, 3), keepdim=True)
    else:
        lo_t = torch.tensor(lo, dtype=torch.float32, device=x.device).view(1, C, 1, 1)
        hi_t = torch.tensor(hi, dtype=torch.float32, device=x.device).view(1, C, 1, 1)
    span = hi_t - lo_t
    y = torch.where(span > 0, (v - lo_t) / span, torch.zeros_like(span)).clamp(0, 1)
    y = y.expand(B, C, H, W)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, C, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, C, 1, 1)
    y = ((y - mean_t) / std_t).to(dtype)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return y.contiguous(memory_format=fmt)


def _new_output(x: Tensor, channels: int, dtype: torch.dtype, channels_last: bool) -> Tensor:
    B, H, W = x.shape[0], x.shape[-2], x.shape[-1]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((B, channels, H, W), dtype=dtype, device=x.device, memory_format=fmt)


def _dtype_code(dtype: torch.dtype) -> int:
    return _native.DTYPE_CODES[str(dtype).removeprefix("torch.")]


def _hu_window_cpu(x, lo, hi, mean, std, per_image_minmax, dtype, channels_last):
    out = _new_output(x, len(mean), dtype, channels_last)
    B, H, W = x.shape
    _native.cpu.hu_window(
        x.data_ptr(),
        out.data_ptr(),
        B,
        H,
        W,
        x.stride(),
        out.stride(),
        lo,
        hi,
        mean,
        std,
        per_image_minmax,
        _dtype_code(dtype),
        torch.get_num_threads(),
    )
    return out


def _hu_window_cuda(x, lo, hi, mean, std, per_image_minmax, dtype, channels_last):
    x = x.contiguous()
    out = _new_output(x, len(mean), dtype, channels_last)
    B, H, W = x.shape
    ranges = torch.empty(2 * B if per_image_minmax else 0, dtype=torch.int32, device=x.device)
    _native.cuda.hu_window(
        x.data_ptr(),
        out.data_ptr(),
        ranges.data_ptr(),
        B,
        H * W,
        channels_last and len(mean) > 1,
        lo,
        hi,
        mean,
        std,
        per_image_minmax,
        _dtype_code(dtype),
        x.device.index,
        torch.cuda.current_stream(x.device).cuda_stream,
    )
    return out


@functools.lru_cache(maxsize=64)
def _triton_params(lo, hi, mean, std, per_image_minmax, device) -> Tensor:
    # fp32 arithmetic, as in make_hu_window_params (csrc/common/hu_window.h).
    f32 = functools.partial(torch.tensor, dtype=torch.float32)
    inv = torch.zeros(len(mean)) if per_image_minmax else 1.0 / (f32(hi) - f32(lo))
    scale = 1.0 / f32(std)
    return torch.stack([f32(lo), inv, scale, -f32(mean) * scale]).to(device)


def _hu_window_triton(x, lo, hi, mean, std, per_image_minmax, dtype, channels_last):
    from radengine.kernels import hu_window as kernel

    x = x.contiguous()
    out = _new_output(x, len(mean), dtype, channels_last)
    params = _triton_params(
        tuple(lo), tuple(hi), tuple(mean), tuple(std), per_image_minmax, x.device
    )
    kernel.hu_window(x, out, params, per_image_minmax)
    return out


IMPLS = {
    "reference": reference_hu_window,
    "cpu": _hu_window_cpu,
    "cuda": _hu_window_cuda,
    "triton": _hu_window_triton,
}


@torch.library.custom_op("radengine::hu_window", mutates_args=())
def _hu_window_op(
    x: Tensor,
    lo: list[float],
    hi: list[float],
    mean: list[float],
    std: list[float],
    per_image_minmax: bool,
    dtype: torch.dtype,
    channels_last: bool,
    backend: str,
) -> Tensor:
    if x.numel() == 0:
        return _new_output(x, len(mean), dtype, channels_last)
    x3 = x.reshape(x.shape[0], x.shape[-2], x.shape[-1])
    _, impl = _dispatch.select("hu_window", IMPLS, x.device, backend or None)
    return impl(x3, lo, hi, mean, std, per_image_minmax, dtype, channels_last)


@_hu_window_op.register_fake
def _(x, lo, hi, mean, std, per_image_minmax, dtype, channels_last, backend):
    return _new_output(x, len(mean), dtype, channels_last)

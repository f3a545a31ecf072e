"""hu_window: every available backend against reference_hu_window, the math by hand,
bad input, dispatch, opcheck and torch.compile."""

from __future__ import annotations

import pytest
import torch

from radengine import _native
from radengine.ops import _dispatch, hu_window, reference_hu_window
from radengine.ops.hu_window import IMPLS, WindowSpec
from tests.conftest import DEVICES

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# One output ulp (rtol) at each dtype; atol covers fp32 rounding of values near zero.
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=2**-10, atol=1e-5),
    torch.bfloat16: dict(rtol=2**-7, atol=1e-5),
}
SHAPES = [(1, 1, 1), (3, 123, 77), (2, 1, 33, 65), (4, 8, 16), (1, 7, 1), (5, 1, 9, 8)]
MODES = {
    "three_windows": dict(windows=["brain", "soft_tissue", "bone"]),
    "one_window_x3_normalised": dict(
        windows=(-600, 1500), repeat=3, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]
    ),
    "minmax_x3": dict(windows="minmax", repeat=3),
    "clip": dict(windows="clip", mean=0.5, std=0.5),
    "five_windows": dict(windows=["brain", "subdural", "liver", "lung", (0, 1)]),
}


def backends_for(device: str) -> list[str]:
    return [b for b in IMPLS if _dispatch.unavailable_reason(b, device) is None]


def cases(max_pixels: int | None = None):
    for device in DEVICES:
        for backend in backends_for(device):
            if backend == "reference":
                continue
            yield pytest.param(device, backend, id=f"{device}-{backend}")


def random_hu(gen: torch.Generator, shape, device, full_range: bool = False) -> torch.Tensor:
    lo, hi = (-32768, 32768) if full_range else (-1024, 3072)
    return torch.randint(lo, hi, shape, generator=gen, dtype=torch.int16).to(device)


def check_against_reference(x, backend, dtype, channels_last, **mode):
    out = hu_window(x, dtype=dtype, channels_last=channels_last, backend=backend, **mode)
    spec = WindowSpec.parse(
        mode.get("windows"), **{k: v for k, v in mode.items() if k != "windows"}
    )
    lo, hi = spec.bounds()
    ref = reference_hu_window(x, lo, hi, spec.mean, spec.std, spec.minmax, dtype, channels_last)
    assert out.shape == ref.shape == (x.shape[0], spec.channels, x.shape[-2], x.shape[-1])
    assert out.dtype == dtype and out.device == x.device
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(out.double(), ref.double(), **TOL[dtype])
    return out, ref


@pytest.mark.parametrize(("device", "backend"), cases())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("mode", list(MODES))
def test_matches_reference(gen, device, backend, shape, dtype, channels_last, mode):
    x = random_hu(gen, shape, device, full_range=mode == "minmax_x3")
    check_against_reference(x, backend, dtype, channels_last, **MODES[mode])


@pytest.mark.parametrize(("device", "backend"), cases())
def test_large_batch(gen, device, backend):
    if backend == "triton" and device == "cpu":
        pytest.skip("the Triton interpreter is too slow for 16M pixels; covered on CUDA")
    x = random_hu(gen, (64, 512, 512), device)
    for dtype in (torch.float32, torch.bfloat16):
        check_against_reference(x, backend, dtype, True, windows=["brain", "lung", "bone"])
    check_against_reference(x, backend, torch.float16, False, windows="minmax", repeat=3)


@pytest.mark.parametrize(("device", "backend"), cases())
def test_strided_input(gen, device, backend):
    base = random_hu(gen, (4, 3, 40, 90), device)
    for x in (base[:, 1, ::2, 1::3], base[::2, 2:3].transpose(-1, -2)):
        check_against_reference(x, backend, torch.float32, False, windows=["lung", "bone"])
        check_against_reference(x, backend, torch.bfloat16, True, windows="minmax")


@pytest.mark.parametrize(("device", "backend"), cases())
def test_constant_and_extreme_images(device, backend):
    x = torch.full((2, 5, 6), 123, dtype=torch.int16, device=device)
    x[1] = -32768
    x[1, 0, 0] = 32767
    out = hu_window(x, "minmax", backend=backend)
    assert torch.all(out[0] == 0), "a constant image maps to 0 in min-max mode"
    assert out[1, 0, 0, 0] == 1 and out[1, 0, 0, 1] == 0
    # Normalisation that overflows fp16 gives inf in every backend, as in torch.
    big = hu_window(x, "clip", std=1e-6, dtype=torch.float16, backend=backend)
    ref = hu_window(x, "clip", std=1e-6, dtype=torch.float16, backend="reference")
    torch.testing.assert_close(big.double(), ref.double(), **TOL[torch.float16])
    assert torch.isinf(big).any()


@pytest.mark.parametrize(("device", "backend"), [("cpu", "reference"), *cases()])
def test_math_by_hand(device, backend):
    x = torch.tensor([[[-1000, -160, 40, 240, 1000]]], dtype=torch.int16, device=device)
    out = hu_window(x, (40, 400), backend=backend).flatten().tolist()
    assert out == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])
    clip = hu_window(
        x.clamp(-1024, 3072) * 0
        + torch.tensor([-1024, 0, 1024, 3072, 2048], dtype=torch.int16, device=device),
        "clip",
        backend=backend,
    )
    assert clip.flatten().tolist() == pytest.approx([0.0, 0.25, 0.5, 1.0, 0.75])
    mm = hu_window(
        torch.tensor([[[0, 100, 50, 25]]], dtype=torch.int16, device=device),
        "naive",
        repeat=2,
        mean=0.5,
        std=0.5,
        backend=backend,
    )
    assert mm.shape == (1, 2, 1, 4)
    assert mm[0, 1].flatten().tolist() == pytest.approx([-1.0, 1.0, 0.0, -0.5])


def test_low_precision_error_at_most_twice_torch(gen):
    """flash-attention's rule: error vs an fp64 oracle <= 2x a same-dtype torch baseline.
    (Triton's CPU interpreter truncates to bf16 instead of rounding, so it is exempt.)"""
    x = random_hu(gen, (4, 96, 80), "cpu")
    mode = dict(windows=["brain", "lung"], mean=[0.2, 0.4], std=[0.3, 0.25])
    spec = WindowSpec.parse(**mode)
    lo, hi = spec.bounds()
    exact = reference_hu_window(
        x.double().to(torch.int16), lo, hi, spec.mean, spec.std, False, torch.float32, False
    ).double()
    for device in DEVICES:
        for backend in backends_for(device):
            if backend == "triton" and device == "cpu":
                continue
            for dtype in (torch.float16, torch.bfloat16):
                base = (
                    reference_hu_window(x, lo, hi, spec.mean, spec.std, False, torch.float32, False)
                    .to(dtype)
                    .double()
                )
                out = hu_window(x.to(device), dtype=dtype, backend=backend, **mode).cpu().double()
                err, base_err = (out - exact).abs().max(), (base - exact).abs().max()
                assert err <= 2 * base_err + 1e-6, (device, backend, dtype, err, base_err)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    x = torch.empty((0, 16, 16), dtype=torch.int16, device=device)
    out = hu_window(x, ["brain", "bone"], dtype=torch.bfloat16)
    assert out.shape == (0, 2, 16, 16) and out.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(x=torch.zeros(2, 4, 4)), "x must be int16"),
        (dict(x=torch.zeros(2, 4, dtype=torch.int16)), r"x must have shape \(B, H, W\)"),
        (dict(x=torch.zeros(2, 3, 4, 4, dtype=torch.int16)), r"x must have shape"),
        (dict(windows=(40, 0)), "width must be > 0"),
        (dict(windows=["brain", (40, -5)]), r"windows\[1\] = \(40, -5\): width must be > 0"),
        (dict(windows=[]), "windows is empty"),
        (dict(windows="kidney"), "unknown window 'kidney'.*brain"),
        (dict(windows=["minmax", "lung"]), "cannot be mixed"),
        (
            dict(windows=["brain", "bone"], mean=[0.1, 0.2, 0.3]),
            "mean has 3 values but the output has 2 channels",
        ),
        (dict(std=0.0), r"std\[0\] must be > 0"),
        (dict(repeat=0), "repeat must be an integer >= 1"),
        (dict(windows=["brain"] * 9, repeat=2), "18 channels; at most 16"),
        (dict(dtype=torch.float64), "dtype must be"),
        (dict(windows=42), "windows must be a name"),
        (dict(backend="gpu"), "backend 'gpu' is not one of"),
    ],
)
def test_bad_input(kwargs, match):
    x = kwargs.pop("x", torch.zeros(2, 4, 4, dtype=torch.int16))
    with pytest.raises(ValueError, match=match):
        hu_window(x, **kwargs)


def test_native_binding_validates_its_arguments():
    if _native.cpu is None:
        pytest.skip(_native.ERRORS["_cpu"])
    x = torch.zeros(1, 2, 2, dtype=torch.int16)
    out = torch.empty(1, 1, 2, 2)
    with pytest.raises(ValueError, match="same length"):
        _native.cpu.hu_window(
            x.data_ptr(),
            out.data_ptr(),
            1,
            2,
            2,
            x.stride(),
            out.stride(),
            [0.0, 1.0],
            [1.0],
            [0.0],
            [1.0],
            False,
            0,
        )


def test_dispatch_defaults_and_override(monkeypatch):
    monkeypatch.delenv("RADENGINE_BACKEND", raising=False)
    cpu = torch.device("cpu")
    expected = "cpu" if _native.cpu is not None else "reference"
    assert _dispatch.select("hu_window", IMPLS, cpu)[0] == expected
    monkeypatch.setenv("RADENGINE_BACKEND", "reference")
    assert _dispatch.select("hu_window", IMPLS, cpu)[0] == "reference"
    monkeypatch.setenv("RADENGINE_BACKEND", "cuda")
    with pytest.raises(_dispatch.BackendUnavailableError, match="backend 'cuda' requested but"):
        hu_window(torch.zeros(1, 2, 2, dtype=torch.int16))
    monkeypatch.setenv("RADENGINE_BACKEND", "fastest")
    with pytest.raises(ValueError, match="RADENGINE_BACKEND"):
        hu_window(torch.zeros(1, 2, 2, dtype=torch.int16))


def test_missing_native_module_falls_back(monkeypatch):
    monkeypatch.delenv("RADENGINE_BACKEND", raising=False)
    monkeypatch.setattr(_native, "cpu", None)
    monkeypatch.setitem(_native.ERRORS, "_cpu", "radengine._cpu failed to import (test)")
    assert _dispatch.select("hu_window", IMPLS, torch.device("cpu"))[0] == "reference"
    assert "failed to import (test)" in _dispatch.unavailable_reason("cpu", "cpu")
    out = hu_window(torch.tensor([[[40]]], dtype=torch.int16), (40, 400))
    assert out.item() == 0.5


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(gen, device):
    x = random_hu(gen, (2, 9, 12), device)
    op = torch.ops.radengine.hu_window.default
    for args in (
        (
            x,
            [-160.0, -1350.0],
            [240.0, 150.0],
            [0.0, 0.5],
            [1.0, 0.5],
            False,
            torch.float32,
            False,
            "",
        ),
        (
            x.unsqueeze(1),
            [0.0] * 3,
            [0.0] * 3,
            [0.5] * 3,
            [0.25] * 3,
            True,
            torch.bfloat16,
            True,
            "",
        ),
    ):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(gen, device):
    def preprocess(x):
        return (
            hu_window(x, ["brain", "lung", "bone"], dtype=torch.bfloat16, channels_last=True) * 2
            - 1
        )

    x = random_hu(gen, (3, 32, 24), device)
    compiled = torch.compile(preprocess, fullgraph=True)
    torch.testing.assert_close(compiled(x), preprocess(x))

"""resize: the cpu backend against reference_resize (torch's antialiased bilinear) on
random images, by hand, bad input, opcheck and torch.compile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radengine.ops import _dispatch, reference_resize, resize
from radengine.ops.resize import IMPLS, resize_array

BACKENDS = [b for b in IMPLS if b != "reference" and _dispatch.unavailable_reason(b, "cpu") is None]
CASES = [
    # (input shape, output size): down, up, mixed, odd, 1-pixel, identity, channels-last RGB
    ((3, 512, 512), (256, 256)),
    ((2, 123, 77), (64, 200)),
    ((1, 7, 5), (3, 11)),
    ((4, 1, 1), (5, 3)),
    ((2, 33, 65), (1, 1)),
    ((2, 40, 30), (40, 30)),
    ((2, 97, 143, 3), (64, 64)),
    ((1, 300, 200, 3), (301, 77)),
]


def random_images(gen, shape, dtype):
    if dtype == torch.int16:
        return torch.randint(-1024, 3072, shape, generator=gen, dtype=torch.int16)
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    return torch.randn(shape, generator=gen) * 500


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("shape", "size"), CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("dtype", [torch.int16, torch.uint8, torch.float32], ids=str)
def test_matches_reference(gen, backend, shape, size, dtype):
    x = random_images(gen, shape, dtype)
    out = resize(x, size, backend=backend)
    ref = reference_resize(x, size)
    assert out.shape == ref.shape == (shape[0], *size, *shape[3:])
    assert out.dtype == dtype and out.is_contiguous()
    if dtype == torch.float32:
        # Against the float64 oracle: fp32 sums of a few dozen taps, a few ulps of the
        # largest input, and never worse than 2x torch's own float32 path.
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * x.abs().max().item())
        torch_fp32 = torch.nn.functional.interpolate(
            (x.permute(0, 3, 1, 2) if x.dim() == 4 else x.unsqueeze(1)), size=size,
            mode="bilinear", antialias=True,
        )  # fmt: skip
        torch_fp32 = torch_fp32.permute(0, 2, 3, 1) if x.dim() == 4 else torch_fp32.squeeze(1)
        err = (out.double() - ref.double()).abs().max()
        assert err <= 2 * (torch_fp32.double() - ref.double()).abs().max() + 1e-3
    else:
        # fp32 sums in another order may round a value within float error of .5 (or of the
        # clamp bound) the other way; nowhere else may the two differ.
        diff = (out.int() - ref.int()).abs()
        assert diff.max() <= 1
        exact = reference_resize(x.float(), size)
        frac = (exact - exact.floor() - 0.5).abs()
        near_half = frac < 1e-3 * exact.abs().clamp(min=1)
        assert torch.all(near_half[diff > 0]), exact[(diff > 0) & ~near_half][:5]


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_by_hand(backend):
    # 2x downscale of a ramp: inside, 4 taps weighted 1:3:3:1 / 8 (e.g. (8 + 48 + 72 + 32) / 8
    # = 20); at the edges the cut-off taps are dropped and the rest renormalised:
    # (0*3 + 8*3 + 16*1) / 7 = 5.71 -> 6 and (40*1 + 48*3 + 56*3) / 7 = 50.29 -> 50.
    x = torch.tensor([[[0, 8, 16, 24, 32, 40, 48, 56]]], dtype=torch.int16)
    out = resize(x, (1, 4), backend=backend)
    assert out.flatten().tolist() == [6, 20, 36, 50]
    # A constant image stays constant at any size; identity size is exact.
    c = torch.full((2, 37, 23), -1000, dtype=torch.int16)
    assert torch.all(resize(c, (91, 10), backend=backend) == -1000)
    y = torch.randint(0, 255, (1, 9, 9, 3), dtype=torch.uint8)
    assert torch.equal(resize(y, 9, backend=backend), y)


@pytest.mark.parametrize(
    ("x", "size", "match"),
    [
        (torch.zeros(2, 4, 4, dtype=torch.int32), 2, "int16, uint8 or float32"),
        (torch.zeros(4, 4, dtype=torch.int16), 2, r"shape \(B, H, W\)"),
        (torch.zeros(1, 4, 4, dtype=torch.int16), 0, "size must be a positive"),
        (torch.zeros(1, 4, 4, dtype=torch.int16), (2, 2, 2), "size must be"),
        (torch.zeros(1, 0, 4, dtype=torch.int16), 2, "empty image side"),
    ],
)
def test_bad_input(x, size, match):
    with pytest.raises(ValueError, match=match):
        resize(x, size)


def test_empty_batch():
    assert resize(torch.zeros(0, 5, 5, 3, dtype=torch.uint8), 2).shape == (0, 2, 2, 3)


def test_opcheck_and_compile(gen):
    x = random_images(gen, (2, 20, 30), torch.int16)
    torch.library.opcheck(torch.ops.radengine.resize.default, (x, [10, 12], ""))
    compiled = torch.compile(lambda t: resize(t, (10, 12)).float() * 2, fullgraph=True)
    torch.testing.assert_close(compiled(x), resize(x, (10, 12)).float() * 2)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32], ids=str)
def test_resize_array_matches_the_op(gen, dtype):
    x = random_images(
        gen,
        (3, 41, 29, 3) if dtype == np.uint8 else (3, 41, 29),
        getattr(torch, np.dtype(dtype).name),
    )
    a = x.numpy()[:, ::-1]  # a non-contiguous view
    got = resize_array(a, (17, 33))
    assert got.dtype == dtype and got.shape == (3, 17, 33, *a.shape[3:])
    np.testing.assert_array_equal(got, resize(torch.from_numpy(a.copy()), (17, 33)).numpy())
    with pytest.raises(ValueError, match="int16, uint8 or float32"):
        resize_array(a.astype(np.int64), 4)

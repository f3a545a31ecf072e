"""augment_views, triton backend (kernels/augment.py) against reference_augment_views given
the same params: every feature, every output dtype and layout, awkward shapes and input
layouts, the noise bits, the kernels' math helpers, and backend selection. On CPU the
kernels run under TRITON_INTERPRET=1 (tests/conftest.py sets it when no GPU is present),
so sizes are small; with a GPU the same tests run on CUDA tensors."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from radengine.ops import _dispatch
from radengine.ops.augment import (
    IMPLS,
    AugmentParams,
    augment_views,
    noise_hash,
    sample_params,
)
from radengine.ops.hu_window import WindowSpec
from tests.conftest import DEVICES
from tests.ops.test_augment import (
    EVERYTHING,
    assert_within_one_ulp,
    fixed_window,
    multicrop_vs_reference,
    plain_params,
    random_hu,
    random_rgb,
)

TRITON_DEVICES = [d for d in DEVICES if _dispatch.unavailable_reason("triton", d) is None]
needs_triton = pytest.mark.skipif(
    not TRITON_DEVICES, reason="triton is not installed, or no GPU and TRITON_INTERPRET is off"
)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FP32_ATOL = 1e-5


def check(out: torch.Tensor, ref: torch.Tensor) -> float:
    """out (triton, any dtype) against the fp32 reference; returns the max |error|."""
    assert out.shape == ref.shape
    err = (out.float().cpu() - ref.float().cpu()).abs().max().item() if out.numel() else 0.0
    if out.dtype == torch.float32:
        torch.testing.assert_close(out.cpu(), ref.cpu(), rtol=0, atol=FP32_ATOL)
    else:
        assert_within_one_ulp(out.cpu(), ref.cpu())
    return err


def triton_vs_reference(
    x, spec, views, size, seed=0, dtypes=(torch.float32,), layouts=(False,), params=None, **kw
):
    """Both backends from the same params (drawn once); every dtype/layout asked for."""
    ref, p = augment_views(
        x, spec, views=views, size=size, seed=seed, params=params, backend="reference", **kw
    )
    ours32 = None
    for dtype, cl in itertools.product(dtypes, layouts):
        out, _ = augment_views(
            x, spec, views=views, size=size, params=p, backend="triton", dtype=dtype,
            channels_last=cl, **kw,
        )  # fmt: skip
        fmt = torch.channels_last if cl else torch.contiguous_format
        for o, r in zip(out, ref, strict=True):
            assert o.dtype == dtype and o.device == x.device
            assert o.is_contiguous(memory_format=fmt)
            check(o, r)
        if dtype == torch.float32:
            ours32 = out
        elif ours32 is not None:  # computed in fp32, rounded once to nearest even
            for o, o32 in zip(out, ours32, strict=True):
                assert torch.equal(o, o32.to(dtype))
    return p


def seed_of(gen) -> int:
    return int(torch.randint(1 << 30, (1,), generator=gen))


# ----------------------------------------------------------------------------- features

CASES = {  # kind, input shape, augment_views kwargs, views, output size
    "ct_minmax_x3_gray": ("int16", (3, 21, 26), dict(intensity="minmax", repeat=3), 2, (11, 13)),
    "ct_three_windows_norm": (
        "int16",
        (2, 19, 23),
        dict(
            intensity=["brain", "soft_tissue", "bone"],
            repeat=1,
            mean=[0.1, 0.2, 0.3],
            std=[0.5, 0.25, 2.0],
        ),
        2,
        (12, 9),
    ),
    "ct_two_windows_x2": (
        "int16",
        (2, 17, 20),
        dict(intensity=["lung", "bone"], repeat=2, mean=0.25, std=0.5),
        2,
        (9, 10),
    ),
    "ct_one_window": ("int16", (3, 15, 15), dict(intensity="soft_tissue", repeat=1), 2, (8, 7)),
    "rgb_imagenet": (
        "uint8",
        (3, 20, 17, 3),
        dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        2,
        (10, 12),
    ),
}


def make_input(gen, kind, shape, device):
    x = random_rgb(gen, shape) if kind == "uint8" else random_hu(gen, shape, -1500, 3000)
    return x.to(device)


@needs_triton
@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("spec", ["simclr", "ct", "none", "everything"])
@pytest.mark.parametrize("case", list(CASES))
def test_triton_matches_reference(gen, device, case, spec):
    kind, shape, kw, views, size = CASES[case]
    x = make_input(gen, kind, shape, device)
    spec = EVERYTHING if spec == "everything" else spec
    triton_vs_reference(x, spec, views, size, seed_of(gen), **kw)


@needs_triton
@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("case", ["ct_minmax_x3_gray", "ct_three_windows_norm", "rgb_imagenet"])
def test_triton_dtypes_and_layouts(gen, device, case):
    """fp32 within 1e-5, fp16/bf16 within one output ulp of the fp32 reference, contiguous
    and channels_last, with every feature often on."""
    kind, shape, kw, views, size = CASES[case]
    x = make_input(gen, kind, shape, device)
    triton_vs_reference(x, EVERYTHING, views, size, seed_of(gen), DTYPES, (False, True), **kw)


@needs_triton
@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("source", ["rgb", "ct_three_windows"])
def test_triton_every_jitter_order(gen, device, source):
    """All 24 orders of the four jitter ops, every op active on every row (so contrast's
    mean is taken after 0-3 other ops), plus grayscale, gamma and solarize on some rows;
    the hue factor includes |d| >= 1 (outside the spec's range, the remainder's general
    path)."""
    V, B, H, W = 2, 12, 9, 11
    g = torch.Generator().manual_seed(seed_of(gen))
    order = torch.tensor(list(itertools.permutations(range(4)))).view(V, B, 4)
    jitter = torch.stack(
        [
            0.3 + 1.4 * torch.rand(V, B, generator=g),
            0.3 + 1.4 * torch.rand(V, B, generator=g),
            0.3 + 1.4 * torch.rand(V, B, generator=g),
            -0.5 + torch.rand(V, B, generator=g),
        ],
        -1,
    )
    jitter[0, :4, 3] = torch.tensor([1.3, -2.7, 0.5, -0.5])
    coin = torch.rand(V, B, generator=g)
    fields = dict(
        jitter=jitter,
        order=order,
        grayscale=coin < 0.3,
        gamma=torch.where(coin > 0.5, 0.5 + torch.rand(V, B, generator=g), 1.0),
        solarize=(coin > 0.2) & (coin < 0.6),
        solarize_threshold=torch.rand(V, B, generator=g),
    )
    if source == "rgb":
        x = random_rgb(gen, (B, H, W, 3)).to(device)
        p = plain_params(V, B, H, W, **fields)
        kw = {}
    else:
        x = random_hu(gen, (B, H, W)).to(device)
        win = fixed_window(V, B, [(-160.0, 240.0), (-1350.0, 150.0), (-500.0, 1300.0)])
        p = plain_params(V, B, H, W, win, **fields)
        kw = dict(intensity=["soft_tissue", "lung", "bone"], repeat=1)
    triton_vs_reference(x, "simclr", V, (7, 8), params=p, **kw)


@needs_triton
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_triton_geometry_rotation_flips_window_jitter(gen, device):
    """Large rotations (fill outside the image), both flips, window jitter per view, in
    min-max mode and with fixed windows; views larger and smaller than the crop."""
    spec = {
        "preset": "ct",
        "crop_scale": (0.05, 1.0),
        "hflip_p": 0.5,
        "vflip_p": 0.5,
        "rotate_p": 0.9,
        "rotate_deg": 180,
        "window_jitter_p": 0.8,
        "window_center_shift": 0.4,
        "window_width_scale": (0.3, 2.0),
        "jitter_p": 0.0,
        "gamma_p": 0.0,
        "blur_p": 0.0,
        "noise_p": 0.0,
    }
    x = random_hu(gen, (3, 24, 19), -1200, 2500).to(device)
    for kw in (dict(intensity="minmax", repeat=1), dict(intensity=["brain", "bone"], repeat=1)):
        p = triton_vs_reference(x, spec, 3, (17, 30), seed_of(gen), **kw)
        assert bool((p.angle != 0).any() and p.hflip.any() and p.vflip.any())


@needs_triton
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_triton_blur_on_and_off_in_one_batch(gen, device):
    """Rows without blur, small and large sigma (radius beyond the view's width: replicated
    borders) in one batch, gray and RGB, with and without noise."""
    V, B, H, W = 2, 3, 10, 12
    sigma = torch.tensor([[0.0, 0.4, 3.0], [1.1, 0.0, 6.5]])
    noise = torch.tensor([[0.0, 0.05, 0.0], [0.1, 0.02, 0.0]])
    x = random_hu(gen, (B, H, W)).to(device)
    p = plain_params(V, B, H, W, fixed_window(V, B, [(-160.0, 240.0)] * 3))
    p = dataclasses.replace(p, blur_sigma=sigma, noise_std=noise)
    triton_vs_reference(x, "none", V, (5, 9), params=p, intensity="soft_tissue")
    rgb = random_rgb(gen, (B, H, W, 3)).to(device)
    q = dataclasses.replace(plain_params(V, B, H, W), blur_sigma=sigma, noise_std=noise)
    triton_vs_reference(rgb, "none", V, (13, 6), params=q, dtypes=DTYPES)


@needs_triton
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_triton_noise_is_noise_hash(gen, device):
    """A flat 0.5 image plus noise: z recovered from the output equals Box-Muller of
    noise_hash's words (float64 here), so the kernel's 32-bit hash has the same bits."""
    V, B, H, W = 2, 2, 6, 7
    x = torch.full((B, H, W), 40, dtype=torch.int16, device=device)  # (40, 400) -> 0.5
    seeds = torch.randint(-(2**62), 2**62, (V, B), generator=gen, dtype=torch.int64)
    p = plain_params(V, B, H, W, fixed_window(V, B, [(-160.0, 240.0)] * 2))
    p = dataclasses.replace(p, noise_std=torch.full((V, B), 0.05), noise_seed=seeds)
    out, _ = augment_views(
        x, "none", views=V, size=(H, W), params=p, intensity=["soft_tissue", (40, 400)],
        repeat=1, backend="triton",
    )  # fmt: skip
    z = (torch.stack(out).double().cpu() - 0.5) / 0.05
    n = torch.arange(V * B)
    a, b = noise_hash(seeds.reshape(-1), n // B, 2, H, W)
    u1 = ((a >> 8) + 1).double() * 2.0**-24
    u2 = (b >> 8).double() * 2.0**-24
    expected = (-2 * u1.log()).sqrt() * (2 * math.pi * u2).cos()
    torch.testing.assert_close(z.reshape(V * B, 2, H, W), expected, rtol=0, atol=2e-4)
    kw = dict(intensity=["soft_tissue", (40, 400)], repeat=1)
    triton_vs_reference(x, "none", V, (H, W), params=p, **kw)


# ----------------------------------------------------------------------------- shapes


@needs_triton
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_triton_awkward_sizes(gen, device):
    spec = {**EVERYTHING, "rotate_p": 0.5}
    for shape, size, views in [
        ((2, 1, 1), (1, 1), 2),  # 1x1 in, 1x1 out
        ((1, 9, 7), (1, 1), 3),  # 1x1 out
        ((2, 1, 1), (3, 5), 1),  # 1x1 in
        ((2, 5, 4), (23, 19), 2),  # the view larger than the input
        ((1, 1, 13), (7, 3), 2),  # a single input row
    ]:
        x = random_hu(gen, shape).to(device)
        triton_vs_reference(x, spec, views, size, seed_of(gen), DTYPES, intensity="minmax")
    rgb = random_rgb(gen, (1, 3, 2, 3)).to(device)
    triton_vs_reference(rgb, spec, 2, (17, 1), seed_of(gen), layouts=(False, True))


@needs_triton
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_triton_input_layouts(gen, device):
    """Non-contiguous inputs: the kernels take element strides."""
    base = random_hu(gen, (3, 20, 32)).to(device)
    for x in (base[:, :, ::2], base.transpose(1, 2), base[:, None], base[1:, 3:17, 5:29]):
        triton_vs_reference(x, EVERYTHING, 2, (9, 8), seed_of(gen), intensity="minmax", repeat=3)
    rgb = random_rgb(gen, (2, 3, 15, 11)).to(device).permute(0, 2, 3, 1)  # channel stride != 1
    triton_vs_reference(rgb, EVERYTHING, 2, (8, 9), seed_of(gen))
    rgb = random_rgb(gen, (2, 15, 22, 3)).to(device)[:, :, ::2]
    triton_vs_reference(rgb, "simclr", 2, (8, 9), seed_of(gen))


@needs_triton
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_triton_degenerate_windows(device):
    # a constant slice in min-max mode maps to 0; an empty window (lo == hi) too
    x = torch.full((2, 9, 9), 300, dtype=torch.int16, device=device)
    out, _ = augment_views(x, "none", size=5, intensity="minmax", backend="triton")
    assert torch.equal(out[0].cpu(), torch.zeros(2, 3, 5, 5))
    win = fixed_window(1, 2, [(100.0, 100.0), (0.0, 400.0)])
    p = plain_params(1, 2, 9, 9, win)
    triton_vs_reference(x, "none", 1, (4, 4), params=p, intensity=["brain", "bone"], repeat=1)


@pytest.mark.skipif("cuda" not in TRITON_DEVICES, reason="needs a CUDA GPU")
def test_triton_realistic_size_cuda(gen):
    """Study-A-sized batches on the GPU (too slow for the interpreter). No solarize: its
    threshold is the op's one discontinuity, where a 1-ulp difference in a few million
    values could flip a pixel (the small tests cover it)."""
    spec = {**EVERYTHING, "solarize_p": 0.0}
    x = random_hu(gen, (8, 512, 512)).cuda()
    for kw in (
        dict(intensity="minmax", repeat=3),
        dict(intensity=["brain", "lung", "bone"], repeat=1),
    ):
        triton_vs_reference(x, spec, 2, (224, 224), 1, DTYPES, (False, True), **kw)
    rgb = random_rgb(gen, (8, 300, 400, 3)).cuda()
    triton_vs_reference(rgb, "simclr", 2, (224, 224), 2, DTYPES, (False, True))


# ----------------------------------------------------------------------------- helpers


if TRITON_DEVICES:
    import triton
    import triton.language as tl

    from radengine.kernels import augment as K

    @triton.jit
    def _probe(x_ptr, y_ptr, z_ptr, out_ptr, n, WHICH: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        x = tl.load(x_ptr + offs, mask=m, other=1.0)
        y = tl.load(y_ptr + offs, mask=m, other=1.0)
        z = tl.load(z_ptr + offs, mask=m, other=1.0)
        if WHICH == 0:
            r = K._log(x)
        elif WHICH == 1:
            r = K._exp(x)
        elif WHICH == 2:
            r = K._cos(x)
        elif WHICH == 3:
            r = K._pow01(x, y)
        elif WHICH == 4:
            r = K._div(x, y, z)
        else:
            r = K._mix32(x.to(tl.uint32, bitcast=True)).to(tl.float32, bitcast=True)
        tl.store(out_ptr + offs, r, mask=m)


def probe(which: int, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    dev = TRITON_DEVICES[-1]
    x = x.to(dev)
    y = torch.ones_like(x) if y is None else y.to(dev)
    out = torch.empty_like(x)
    grid = (triton.cdiv(x.numel(), 4096),)
    _probe[grid](x, y, 1.0 / y, out, x.numel(), WHICH=which, BLOCK=4096)
    return out.cpu()


def max_ulps(got: torch.Tensor, exact: torch.Tensor) -> float:
    ref = exact.float().abs()
    ulp = (torch.nextafter(ref, torch.tensor(math.inf)) - ref).double()
    return ((got.double() - exact) / ulp).abs().max().item()


@needs_triton
def test_kernel_math_helpers():
    """log / exp / cos / pow against float64, the Markstein division against IEEE
    division bit for bit, lowbias32 against the reference's _mix32."""
    from radengine.ops.augment import _mix32

    g = torch.Generator().manual_seed(0)
    # log on the noise's u1 = k 2^-24 (both ends included) and on subnormals
    kk = torch.cat([torch.arange(1, 5000), torch.randint(1, 2**24, (20000,), generator=g)])
    u1 = torch.cat([(kk.double() * 2.0**-24).float(), torch.tensor([2.0**-149, 1e-40, 1.0])])
    assert max_ulps(probe(0, u1), u1.double().log()) <= 1.5
    t = torch.linspace(-87.0, 0.7, 20000)
    assert max_ulps(probe(1, t), t.double().exp()) <= 1.5
    t = torch.rand(20000, generator=g) * 6.2831855
    assert (probe(2, t).double() - t.double().cos()).abs().max().item() <= 2e-7
    y = torch.rand(20000, generator=g)
    y[:50] = 0.0
    y[50:100] = 1.0
    e = 0.3 + 1.4 * torch.rand(20000, generator=g)
    assert (probe(3, y, e).double() - y.double() ** e.double()).abs().max().item() <= 2e-7
    a = torch.randn(20000, generator=g) * 3000
    b = torch.rand(20000, generator=g) * 4000 + 1e-3
    assert torch.equal(probe(4, a, b), a / b)  # IEEE division, bit for bit
    u8 = torch.arange(256.0)
    assert torch.equal(probe(4, u8, torch.full_like(u8, 255.0)), u8 / 255.0)
    words = torch.randint(-(2**31), 2**31, (20000,), generator=g, dtype=torch.int32)
    mixed = probe(5, words.view(torch.float32)).view(torch.int32).long() & 0xFFFFFFFF
    assert torch.equal(mixed, _mix32(words.long() & 0xFFFFFFFF))


# ----------------------------------------------------------------------------- dispatch


def test_triton_backend_selection(monkeypatch):
    monkeypatch.delenv("RADENGINE_BACKEND", raising=False)
    assert IMPLS.get("triton") is not None
    # never a default for CPU tensors; the default for CUDA tensors when no cuda kernel runs
    assert _dispatch.default_backend(IMPLS, "cpu") != "triton"
    if _dispatch._triton_import_error() is None:
        monkeypatch.setattr(_dispatch, "_cuda_device_error", lambda: None)
        cuda_ok = "cuda" in IMPLS and _dispatch.unavailable_reason("cuda", "cuda") is None
        assert _dispatch.default_backend(IMPLS, "cuda") == ("cuda" if cuda_ok else "triton")
        monkeypatch.undo()
        monkeypatch.delenv("RADENGINE_BACKEND", raising=False)
    x = torch.zeros(2, 6, 6, dtype=torch.int16)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(_dispatch.BackendUnavailableError, match="needs TRITON_INTERPRET=1"):
        augment_views(x, size=4, backend="triton")
    monkeypatch.setenv("RADENGINE_BACKEND", "triton")
    with pytest.raises(_dispatch.BackendUnavailableError, match="backend 'triton' requested"):
        augment_views(x, size=4)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(
        _dispatch, "_triton_import_error", lambda: "triton is not installed (pip install triton)"
    )
    with pytest.raises(_dispatch.BackendUnavailableError, match="triton is not installed"):
        augment_views(x, size=4)


@needs_triton
def test_triton_forced_backend_runs(monkeypatch):
    """backend="triton" / RADENGINE_BACKEND=triton really call the triton kernels."""
    calls = []
    impl = IMPLS["triton"]
    monkeypatch.setitem(IMPLS, "triton", lambda *a: calls.append(1) or impl(*a))
    x = random_hu(torch.Generator().manual_seed(1), (2, 6, 6)).to(TRITON_DEVICES[-1])
    views, _ = augment_views(x, size=4, backend="triton")
    assert views[0].shape == (2, 3, 4, 4) and calls == [1]
    monkeypatch.setenv("RADENGINE_BACKEND", "triton")
    views, p = augment_views(x[:0], size=(3, 5), views=3, dtype=torch.bfloat16)
    assert [tuple(v.shape) for v in views] == [(0, 3, 3, 5)] * 3 and p.batch == 0
    augment_views(x, size=4)
    assert calls == [1, 1]  # (the empty batch returns before dispatch)


@needs_triton
@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_triton_opcheck(gen, device):
    op = torch.ops.radengine.augment_views.default
    p = sample_params("ct", 2, 2, (7, 9), WindowSpec.parse(["brain", "lung"]), seed=1)
    x = random_hu(gen, (2, 7, 9)).to(device)
    rest = ([4, 5], [0.0, 0.1], [1.0, 0.5], False, torch.float32, False, "triton")
    args = (x, *(t for _, t in p.items()), *rest)
    torch.library.opcheck(op, args)


@needs_triton
def test_params_slice_gives_same_views_triton(gen):
    """One rank's slice of the batch's params gives that rank the same views (noise
    included), as for the other backends."""
    x = random_hu(gen, (4, 12, 12)).to(TRITON_DEVICES[-1])
    spec = {"preset": "ct", "noise_p": 1.0}
    whole, p = augment_views(x, spec, size=8, intensity=(40, 400), seed=3, backend="triton")
    part = AugmentParams(**{k: None if v is None else v[:, 1:3] for k, v in p.items()})
    mine, _ = augment_views(
        x[1:3], spec, size=8, intensity=(40, 400), params=part, backend="triton"
    )
    for w_, m_ in zip(whole, mine, strict=True):
        assert torch.equal(m_, w_[1:3])


@needs_triton
@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("kind", ["ct", "rgb"])
def test_triton_multicrop_matches_reference(gen, device, kind):
    """Per-view specs and sizes (DINO's global and local crops): one launch per size."""
    x = make_input(
        gen,
        "uint8" if kind == "rgb" else "int16",
        (3, 30, 26, 3) if kind == "rgb" else (3, 30, 26),
        device,
    )
    multicrop_vs_reference(x, "triton", check)
    multicrop_vs_reference(x, "triton", check, dtype=torch.bfloat16)

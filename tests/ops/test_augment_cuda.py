"""augment_views: the ``cuda`` backend (csrc/cuda/augment.cu) against reference_augment_views
run on the same CUDA tensors, for every feature, output dtype and layout, awkward sizes and
input layouts; that it is the default on CUDA tensors. Skipped without a GPU (or with a
radengine._cuda built before this op), except the checks of what happens without one."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from radengine import _native
from radengine.ops import _dispatch
from radengine.ops.augment import (
    IMPLS,
    AugmentParams,
    augment_views,
    sample_params,
)
from radengine.ops.hu_window import WindowSpec
from tests.ops.test_augment import (
    CPU_CASES,
    EVERYTHING,
    assert_within_one_ulp,
    fixed_window,
    multicrop_vs_reference,
    plain_params,
    random_hu,
    random_rgb,
)

DEVICE = "cuda"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _missing() -> str | None:
    if "cuda" not in IMPLS:
        why = _native.ERRORS.get("_cuda") or "radengine._cuda was built before augment_views"
        return f"no cuda backend for augment_views ({why}; rebuild with `pip install -e .`)"
    return _dispatch.unavailable_reason("cuda", "cuda")


MISSING = _missing()
needs_cuda = pytest.mark.skipif(MISSING is not None, reason=f"cuda backend: {MISSING}")


@pytest.fixture(autouse=True)
def _exact_reference():
    """The reference blurs a single plane with cuDNN (groups = 1): keep TF32 out of it."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def cuda_vs_reference(
    x, spec, views, size, seed=0, params=None, dtypes=(torch.float32,), layouts=(False, True), **kw
) -> AugmentParams:
    """The cuda backend against the reference on the same device tensors: fp32 within 1e-5
    (after normalisation), fp16/bf16 within one of their ulps of the fp32 reference."""
    x = x.to(DEVICE)
    ref, p = augment_views(
        x, spec, views=views, size=size, seed=seed, params=params, backend="reference", **kw
    )
    for dtype in dtypes:
        for cl in layouts:
            out, _ = augment_views(
                x, spec, views=views, size=size, params=p, backend="cuda", dtype=dtype,
                channels_last=cl, **kw,
            )  # fmt: skip
            fmt = torch.channels_last if cl else torch.contiguous_format
            for o, r in zip(out, ref, strict=True):
                assert o.device == x.device and o.shape == r.shape and o.dtype == dtype
                assert o.is_contiguous(memory_format=fmt)
                if dtype == torch.float32:
                    torch.testing.assert_close(o, r, rtol=0, atol=1e-5)
                else:
                    assert_within_one_ulp(o, r)
    return p


def random_input(gen, kind, shape):
    return random_rgb(gen, shape) if kind == "uint8" else random_hu(gen, shape, -1500, 3000)


def some_seed(gen) -> int:
    return int(torch.randint(1 << 30, (1,), generator=gen))


# ----------------------------------------------------------------------------- every feature


@needs_cuda
@pytest.mark.parametrize("spec", ["simclr", "ct", "none", "everything"])
@pytest.mark.parametrize("case", list(CPU_CASES))
def test_cuda_matches_reference(gen, case, spec):
    kind, shape, kw, views, size = CPU_CASES[case]
    spec = EVERYTHING if spec == "everything" else spec
    cuda_vs_reference(
        random_input(gen, kind, shape), spec, views, size, some_seed(gen), None, DTYPES, **kw
    )


@needs_cuda
def test_cuda_every_feature_on_every_view(gen):
    """Probabilities 1: every op on every row, incl. hue's slow remainder (|d| >= 1) and a
    3-window CT view (where saturation and hue apply)."""
    spec = {
        **EVERYTHING,
        **{k: 1.0 for k in ("rotate_p", "jitter_p", "gamma_p", "solarize_p", "blur_p", "noise_p")},
    }
    x = random_hu(gen, (3, 50, 60))
    kw = dict(intensity=["brain", "soft_tissue", "bone"], repeat=1)
    p = cuda_vs_reference(x, spec, 2, (33, 41), 5, None, DTYPES, **kw)
    assert bool((p.noise_std > 0).all() and (p.blur_sigma > 0).all())
    jitter = p.jitter.clone()
    jitter[..., 3] = torch.tensor([[0.9, -1.3, 2.7], [0.0, 1.0, -0.5]])
    cuda_vs_reference(x, spec, 2, (33, 41), params=dataclasses.replace(p, jitter=jitter), **kw)


@needs_cuda
@pytest.mark.parametrize("source", ["rgb", "ct_three_windows", "ct_gray", "ct_two_windows"])
def test_cuda_every_jitter_order(gen, source):
    """All 24 orders of the four jitter ops, each row with every op active."""
    orders = torch.tensor(list(itertools.permutations(range(4))))  # (24, 4)
    V, B, H, W = 2, 12, 21, 17
    g = torch.Generator().manual_seed(some_seed(gen))
    jitter = torch.stack(
        [
            0.3 + 1.4 * torch.rand(V, B, generator=g),
            0.3 + 1.4 * torch.rand(V, B, generator=g),
            0.3 + 1.4 * torch.rand(V, B, generator=g),
            -0.45 + 0.9 * torch.rand(V, B, generator=g),
        ],
        -1,
    )
    order = orders.view(V, B, 4)
    if source == "rgb":
        x, window, kw = random_rgb(gen, (B, H, W, 3)), None, {}
    else:
        x = random_hu(gen, (B, H, W))
        pairs = {
            "ct_three_windows": [(-160, 240), (-1350, 150), (-500, 1800)],
            "ct_gray": [(-160, 240)] * 3,
            "ct_two_windows": [(-160, 240), (-1350, 150)],
        }[source]
        window, kw = fixed_window(V, B, pairs), dict(intensity=pairs, repeat=1)
        if len(pairs) != 3:
            jitter[..., 2:] = torch.tensor([1.0, 0.0])  # saturation, hue need 3 channels
    p = plain_params(V, B, H, W, window, jitter=jitter, order=order)
    p.crop[:] = torch.tensor([2.0, 1.0, 15.0, 13.0])
    cuda_vs_reference(x, "none", V, (19, 23), params=p, dtypes=DTYPES, **kw)


@needs_cuda
@pytest.mark.parametrize(
    "intensity, repeat",
    [
        ("minmax", 1),
        ("minmax", 3),
        (["brain", "bone"], 1),
        (["brain", "subdural", "liver", "lung"], 1),
        ([(40 + 10 * k, 400 + 50 * k) for k in range(16)], 1),  # 16 distinct windows
        (["lung", "mediastinum"], 8),  # 16 channels, two windows
    ],
)
def test_cuda_windows_and_window_jitter(gen, intensity, repeat):
    ws = WindowSpec.parse(intensity, repeat=repeat)
    C = ws.channels
    spec = {**EVERYTHING, "window_jitter_p": 0.8, "window_center_shift": 0.3}
    mean = [0.05 * c for c in range(C)]
    std = [0.2 + 0.1 * c for c in range(C)]
    x = random_hu(gen, (3, 37, 29))
    kw = dict(intensity=intensity, repeat=repeat, mean=mean, std=std)
    cuda_vs_reference(x, spec, 2, (26, 30), some_seed(gen), None, DTYPES, **kw)


@needs_cuda
def test_cuda_blur_mixed_within_a_batch(gen):
    """Rows without blur, small and large radii (up to sigma 16: radius 48, a halo wider than
    the 32-px tile) in one batch, views smaller and larger than a tile."""
    V, B = 2, 4
    sigma = torch.tensor([[0.0, 0.3, 1.7, 16.0], [4.2, 0.0, 0.05, 9.9]])
    for kind, shape, size, kw in [
        ("uint8", (B, 50, 70, 3), (45, 77), {}),
        ("int16", (B, 64, 64), (20, 9), dict(intensity=["brain", "bone"], repeat=1)),
        ("int16", (B, 64, 64), (70, 33), dict(intensity="minmax", repeat=3)),
    ]:
        x = random_input(gen, kind, shape)
        ws = None if kind == "uint8" else WindowSpec.parse(kw["intensity"], repeat=kw["repeat"])
        p = sample_params(EVERYTHING, V, B, shape[1:3], ws, seed=some_seed(gen))
        p = dataclasses.replace(p, blur_sigma=sigma)
        cuda_vs_reference(x, EVERYTHING, V, size, params=p, dtypes=DTYPES, **kw)


@needs_cuda
def test_cuda_blur_of_a_single_plane(gen):
    """One blurred row of one channel: the reference's conv2d has groups = 1 there (cuDNN)."""
    x = random_hu(gen, (2, 30, 30))
    p = plain_params(1, 2, 30, 30, fixed_window(1, 2, [(-160.0, 240.0)]))
    p = dataclasses.replace(p, blur_sigma=torch.tensor([[0.0, 1.3]]))
    cuda_vs_reference(x, "none", 1, (24, 24), params=p, intensity=(40, 400), repeat=1)


@needs_cuda
def test_cuda_noise_and_determinism(gen):
    x = random_hu(gen, (5, 40, 40)).to(DEVICE)
    spec = {**EVERYTHING, "noise_p": 1.0, "noise_std": (0.05, 0.2)}
    kw = dict(intensity=(40, 400), size=24)
    views, p = augment_views(x, spec, seed=3, backend="cuda", **kw)
    again, _ = augment_views(x, spec, params=p, backend="cuda", **kw)
    for a, b in zip(views, again, strict=True):
        assert torch.equal(a, b)  # no atomics, fixed reduction orders
    # a slice of the batch's parameters gives the same noise (the key is per sample)
    part = AugmentParams(**{k: None if v is None else v[:, 1:4] for k, v in p.items()})
    mine, _ = augment_views(x[1:4], spec, params=part, backend="cuda", **kw)
    for whole, piece in zip(views, mine, strict=True):
        assert torch.equal(piece, whole[1:4])
    cuda_vs_reference(x, spec, 2, 24, params=p, dtypes=DTYPES, intensity=(40, 400))


# ----------------------------------------------------------------------------- shapes, layouts


@needs_cuda
@pytest.mark.parametrize(
    "shape, size",
    [
        ((2, 1, 1), (1, 1)),
        ((2, 1, 1), (5, 4)),
        ((3, 1, 9), (7, 1)),
        ((3, 9, 1), (1, 7)),
        ((2, 33, 31), (32, 32)),
        ((1, 8, 6), (40, 50)),
        ((2, 300, 517), (224, 224)),
        ((1, 45, 1030), (1, 1025)),  # one row of just over a 1024-pixel tile
    ],
)
@pytest.mark.parametrize("spec", ["ct", "everything"])
def test_cuda_awkward_sizes(gen, shape, size, spec):
    spec = EVERYTHING if spec == "everything" else spec
    x = random_hu(gen, shape)
    cuda_vs_reference(x, spec, 3 if shape[0] == 1 else 2, size, some_seed(gen), None, DTYPES)
    rgb = random_rgb(gen, (*shape, 3))
    cuda_vs_reference(rgb, spec, 2, size, some_seed(gen), None, (torch.float32,), (True,))


@needs_cuda
def test_cuda_layouts_of_the_input(gen):
    """Non-contiguous int16 / uint8 inputs (the kernels take element strides)."""
    base = random_hu(gen, (3, 40, 64)).to(DEVICE)
    for x in (base[:, :, ::2], base.transpose(1, 2), base[:, None], base[1:, 3:, 5:]):
        cuda_vs_reference(x, EVERYTHING, 2, (12, 10), 3, None, DTYPES, intensity="minmax")
    rgb = random_rgb(gen, (2, 3, 30, 20)).to(DEVICE).permute(0, 2, 3, 1)  # channel stride != 1
    cuda_vs_reference(rgb, EVERYTHING, 2, (12, 10), 4)
    rgb = random_rgb(gen, (2, 30, 40, 3)).to(DEVICE)[:, :, ::2]
    cuda_vs_reference(rgb, "simclr", 2, (12, 10), 5)


@needs_cuda
def test_cuda_many_rows(gen):
    """More (view, sample) rows than a grid dimension holds (65535): the kernels loop."""
    x = random_hu(gen, (33000, 3, 4))
    spec = {**EVERYTHING, "blur_p": 0.5, "noise_p": 0.5, "jitter_p": 1.0}
    cuda_vs_reference(x, spec, 2, (2, 3), 8, None, (torch.bfloat16,), (True,), intensity="minmax")


@needs_cuda
def test_cuda_edge_cases(gen):
    # a constant slice in min-max mode maps to 0; so does an empty window (hi == lo)
    x = torch.full((2, 9, 9), 300, dtype=torch.int16, device=DEVICE)
    out, _ = augment_views(x, "none", size=5, intensity="minmax", backend="cuda")
    assert torch.equal(out[0], torch.zeros(2, 3, 5, 5, device=DEVICE))
    x = random_hu(gen, (2, 9, 9))
    p = plain_params(1, 2, 9, 9, fixed_window(1, 2, [(100.0, 100.0), (-160.0, 240.0)]))
    cuda_vs_reference(x, "none", 1, (6, 7), params=p, intensity=["brain", "bone"], repeat=1)
    # the gray path (one window repeated) equals three explicitly distinct computations
    x = random_hu(gen, (3, 24, 20))
    p = sample_params(EVERYTHING, 2, 3, (24, 20), WindowSpec.parse("soft_tissue", repeat=3), seed=2)
    cuda_vs_reference(x, EVERYTHING, 2, 16, params=p, dtypes=DTYPES, intensity="soft_tissue")


@needs_cuda
def test_cuda_runs_on_the_current_stream(gen):
    x = random_rgb(gen, (4, 32, 32, 3)).to(DEVICE)
    spec = {**EVERYTHING, "blur_p": 1.0}
    expected, p = augment_views(x, spec, size=20, seed=1, backend="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got, _ = augment_views(x, spec, size=20, params=p, backend="cuda")
    torch.cuda.current_stream().wait_stream(side)
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- dispatch


@needs_cuda
def test_cuda_is_the_default_for_cuda_tensors(gen, monkeypatch):
    monkeypatch.delenv("RADENGINE_BACKEND", raising=False)
    assert _dispatch.select("augment", IMPLS, torch.device(DEVICE))[0] == "cuda"
    calls = []
    impl = IMPLS["cuda"]
    monkeypatch.setitem(IMPLS, "cuda", lambda *a: calls.append(1) or impl(*a))
    x = random_hu(gen, (2, 16, 16)).to(DEVICE)
    views, _ = augment_views(x, "ct", size=8)
    assert calls == [1] and views[0].device == x.device
    views, _ = augment_views(x[:0], "ct", size=8)  # empty batch: no kernel call
    assert calls == [1] and views[0].shape == (0, 3, 8, 8)


@needs_cuda
def test_cuda_opcheck_and_compile(gen):
    op = torch.ops.radengine.augment_views.default
    ws = WindowSpec.parse(["brain", "lung"])
    p = sample_params("ct", 2, 3, (9, 12), ws, seed=1)
    x = random_hu(gen, (3, 9, 12)).to(DEVICE)
    torch.library.opcheck(
        op, (x, *(t for _, t in p.items()), [5, 7], [0.0, 0.1], [1.0, 0.5], False, torch.float32, False, "cuda")
    )  # fmt: skip
    params = sample_params("ct", 2, 2, (16, 16), WindowSpec.parse("minmax", repeat=3), seed=0)
    x = random_hu(gen, (2, 16, 16)).to(DEVICE)

    def two_views(x, params):
        views, _ = augment_views(
            x, "ct", size=8, params=params, dtype=torch.bfloat16, channels_last=True
        )
        return torch.cat(views) * 2 - 1

    compiled = torch.compile(two_views, fullgraph=True)
    torch.testing.assert_close(compiled(x, params), two_views(x, params))


def test_forcing_cuda_on_cpu_tensors_raises():
    """Runs anywhere: the cuda backend never takes CPU tensors (registered or not)."""
    x = torch.zeros(2, 6, 6, dtype=torch.int16)
    with pytest.raises(_dispatch.BackendUnavailableError, match="cuda"):
        augment_views(x, backend="cuda")
    assert _dispatch.default_backend(IMPLS, "cpu") != "cuda"


@pytest.mark.skipif(
    _native.cuda is None
    or not hasattr(_native.cuda, "augment_views")
    or _native.cuda.device_count()[0] > 0,
    reason="needs a radengine._cuda with augment_views on a machine without a usable GPU",
)
def test_kernel_without_a_gpu_raises():
    """Called directly with no usable device, the module raises (RuntimeError with the CUDA
    runtime's reason), never crashes; bad arguments are refused before any CUDA call."""
    cuda = _native.cuda
    args = dict(
        x=1, x_strides=[64, 8, 1, 0], rgb=False, V=1, B=1, H=8, W=8, out=1,
        out_strides=[48, 48, 16, 4, 1], C=3, h=4, w=4, rows=1, windows=1, noise_seed=1,
        blur_slot=1, blur_rows=1, n_blur=0, blur_radius=0, mean=[0.0] * 3, std=[1.0] * 3,
        minmax=False, gray=True, contrast=False, mask_outside=False, dtype=0, workspace=0,
        workspace_bytes=0, device=0, stream=0,
    )  # fmt: skip
    assert cuda.augment_views_workspace(False, 1, 1, 8, 8, 3, 4, 4, False, True, False, 0) == 0
    with pytest.raises(RuntimeError, match="CUDA"):
        cuda.augment_views(**args)
    with pytest.raises(ValueError, match="one mean and std per channel"):
        cuda.augment_views(**{**args, "std": [1.0]})
    with pytest.raises(ValueError, match="workspace"):
        cuda.augment_views(**{**args, "minmax": True})


@needs_cuda
@pytest.mark.parametrize("kind", ["ct", "rgb"])
def test_cuda_multicrop_matches_reference(gen, kind):
    """Per-view specs and sizes (DINO's global and local crops): one launch per size."""
    x = (random_rgb(gen, (3, 30, 26, 3)) if kind == "rgb" else random_hu(gen, (3, 30, 26))).to(
        DEVICE
    )

    def close(out, ref):
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)

    multicrop_vs_reference(x, "cuda", close)
    multicrop_vs_reference(x, "cuda", assert_within_one_ulp, dtype=torch.bfloat16)

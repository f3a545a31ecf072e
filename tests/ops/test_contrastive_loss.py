"""contrastive_loss: NT-Xent and InfoNCE through the custom op against the oracles and a
float64 loop formula; gradients (gradcheck), low precision, hard inputs (confident, nearly
identical, huge and tiny rows) with each gradient measured against its own size, bad input,
dispatch, opcheck, torch.compile, the 2-process gloo run against the single-process global
batch, and the triton (interpreted) and cpu (C++, every instruction-set path this machine
has) backends against float64."""

from __future__ import annotations

import math
import types
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from radengine import _native
from radengine.ops import _dispatch
from radengine.ops import contrastive_loss as contrastive_module
from radengine.ops.contrastive_loss import (
    IMPLS,
    info_nce,
    nt_xent,
    reference_info_nce,
    reference_nt_xent,
)
from tests.conftest import DEVICES

TEMPERATURES = [0.01, 0.07, 0.5, 1.0]
# Loss and gradients against the fp64 oracle, per input dtype (the op computes in fp32).
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-11),
    torch.float32: dict(rtol=2e-5, atol=2e-6),
}


def backends_for(device: str) -> list[str]:
    return [b for b in IMPLS if _dispatch.unavailable_reason(b, device) is None]


def cases():
    for device in DEVICES:
        for backend in backends_for(device):
            yield pytest.param(device, backend, id=f"{device}-{backend}")


# ------------------------------------------------------------------ written-out formulas


def loop_nt_xent(z: torch.Tensor, temperature: float, normalize: bool = True) -> float:
    """NT-Xent by its definition, one pair at a time in python floats (fp64)."""
    rows = [[float(v) for v in r] for r in z.tolist()]
    if normalize:
        rows = [[v / math.sqrt(sum(x * x for x in r)) for v in r] for r in rows]
    two_n = len(rows)
    n = two_n // 2

    def sim(a: int, b: int) -> float:
        return sum(x * y for x, y in zip(rows[a], rows[b], strict=True)) / temperature

    total = 0.0
    for i in range(two_n):
        positive = i + n if i < n else i - n
        sims = [sim(i, c) for c in range(two_n) if c != i]
        top = max(sims)
        denominator = sum(math.exp(s - top) for s in sims)
        total += -(sim(i, positive) - top - math.log(denominator))
    return total / two_n


def loop_info_nce(q, k, queue, temperature: float, normalize: bool = True) -> float:
    def unit(r):
        r = [float(v) for v in r]
        return [v / math.sqrt(sum(x * x for x in r)) for v in r] if normalize else r

    qs, ks = [unit(r) for r in q.tolist()], [unit(r) for r in k.tolist()]
    negs = None if queue is None else [unit(r) for r in queue.tolist()]

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True)) / temperature

    total = 0.0
    for i, qi in enumerate(qs):
        positive = dot(qi, ks[i])
        others = [dot(qi, kj) for j, kj in enumerate(ks) if j != i] if negs is None else []
        others += [dot(qi, r) for r in negs or []]
        top = max([positive, *others])
        lse = top + math.log(sum(math.exp(s - top) for s in [positive, *others]))
        total += lse - positive
    return total / len(qs)


def randn(gen, *shape, dtype=torch.float64, device="cpu"):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device, dtype)


# ---------------------------------------------------------------------------- values


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("d", [1, 3, 8])
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("normalize", [True, False])
def test_oracle_and_op_match_loop_formula(gen, n, d, temperature, normalize):
    z = randn(gen, 2 * n, d)
    if not normalize:
        z = z / 4  # keep raw dot products / 0.01 in a range where exp is meaningful
    expected = loop_nt_xent(z, temperature, normalize)
    assert reference_nt_xent(z, temperature, normalize).item() == pytest.approx(
        expected, rel=1e-10, abs=1e-12
    )
    for backend in backends_for("cpu"):
        got = nt_xent(z, temperature, normalize=normalize, backend=backend)
        assert got.dtype == torch.float64
        assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12), backend


@pytest.mark.parametrize("n", [1, 3, 4])
@pytest.mark.parametrize("queue_size", [None, 0, 1, 7])
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_info_nce_matches_loop_formula(gen, n, queue_size, temperature):
    q, k = randn(gen, n, 5), randn(gen, n, 5)
    queue = None if queue_size is None else randn(gen, queue_size, 5)
    expected = loop_info_nce(q, k, queue, temperature)
    assert reference_info_nce(q, k, queue, temperature).item() == pytest.approx(
        expected, rel=1e-10, abs=1e-12
    )
    for backend in backends_for("cpu"):
        got = info_nce(q, k, queue, temperature, backend=backend).item()
        assert got == pytest.approx(expected, rel=1e-10, abs=1e-12), backend


def test_nt_xent_by_hand():
    """z = [e1, e2 | e1, e2], T = 1: every row sees its positive at 1 and two zeros."""
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    z = torch.tensor([e1, e2, e1, e2], dtype=torch.float64)
    assert nt_xent(z, 1.0).item() == pytest.approx(math.log(2 + math.e) - 1)
    # Scaling rows changes nothing with normalisation, and scales the logits without.
    assert nt_xent(z * 3, 1.0).item() == pytest.approx(math.log(2 + math.e) - 1)
    assert nt_xent(z * 2, 1.0, normalize=False).item() == pytest.approx(
        -4 + math.log(2 + math.exp(4))
    )
    # One pair (N = 1): the only other column is the positive.
    assert nt_xent(torch.tensor([e1, e2]), 0.5).item() == 0.0


def test_symmetries(gen):
    z = randn(gen, 10, 6)
    n = 5
    swapped = torch.cat([z[n:], z[:n]])
    perm = torch.randperm(n, generator=gen)
    permuted = torch.cat([z[:n][perm], z[n:][perm]])
    base = nt_xent(z, 0.3)
    torch.testing.assert_close(nt_xent(swapped, 0.3), base)
    torch.testing.assert_close(nt_xent(permuted, 0.3), base)
    # Mismatching the pairs changes the loss: the positives really are i <-> i + N. With
    # views that agree (the second a slightly noisy copy of the first), the true pairing
    # is the easy one and a rolled pairing a much harder one, whatever the random draw
    # (on independent random rows the two losses can come within 1e-3 of each other).
    views = torch.cat([z[:n], z[:n] + 0.1 * z[n:]])
    broken = torch.cat([views[:n], views[n:].roll(1, 0)])
    assert nt_xent(broken, 0.3).item() > nt_xent(views, 0.3).item() + 0.5


@pytest.mark.parametrize(("device", "backend"), cases())
@pytest.mark.parametrize("shape", [(1, 8), (3, 1), (127, 128), (300, 33)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("temperature", [0.01, 0.5])
def test_op_matches_oracle_with_gradients(gen, device, backend, shape, dtype, temperature):
    n, d = shape
    z = randn(gen, 2 * n, d, dtype=dtype, device=device).requires_grad_()
    loss = nt_xent(z, temperature, backend=backend)
    (grad,) = torch.autograd.grad(loss, z)
    z64 = z.detach().double().requires_grad_()
    expected = reference_nt_xent(z64, temperature)
    (expected_grad,) = torch.autograd.grad(expected, z64)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert grad.dtype == dtype and grad.shape == z.shape
    # Compare gradients relative to their natural size, 1 / (2N T) per logit (the true
    # gradient is exactly zero for N = 1, a lone pair, and for D = 1, where every unit
    # vector is +-1). fp32 logits carry an error of ~eps32 / T that the softmax passes on.
    torch.testing.assert_close(loss.double(), expected, **TOL[dtype])
    scale = expected_grad.abs().max().clamp_min(1 / (2 * n * temperature))
    tol = dict(TOL[dtype])
    if dtype == torch.float32:
        tol["atol"] = max(tol["atol"], 1e-7 / temperature)
    torch.testing.assert_close(grad.double() / scale, expected_grad / scale, **tol)


@pytest.mark.parametrize(("device", "backend"), cases())
@pytest.mark.parametrize("queue_size", [None, 5, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_info_nce_op_matches_oracle_with_gradients(gen, device, backend, queue_size, dtype):
    q = randn(gen, 33, 16, dtype=dtype, device=device).requires_grad_()
    k = randn(gen, 33, 16, dtype=dtype, device=device).requires_grad_()
    queue = None if queue_size is None else randn(gen, queue_size, 16, dtype=dtype, device=device)
    if queue is not None:
        queue.requires_grad_()
    loss = info_nce(q, k, queue, 0.2, backend=backend)
    grads = torch.autograd.grad(loss, (q, k))
    q64, k64 = (t.detach().double().requires_grad_() for t in (q, k))
    expected = reference_info_nce(q64, k64, None if queue is None else queue.double(), 0.2)
    expected_grads = torch.autograd.grad(expected, (q64, k64))
    torch.testing.assert_close(loss.double(), expected, **TOL[dtype])
    for g, e in zip(grads, expected_grads, strict=True):
        assert g.dtype == dtype
        torch.testing.assert_close(g.double(), e, **TOL[dtype])
    if queue is not None:  # the queue is a constant
        loss = info_nce(q, k, queue, 0.2, backend=backend)
        loss.backward()
        assert queue.grad is None


@pytest.mark.parametrize("temperature", [0.01, 0.1, 1.0])
def test_stable_at_low_temperature_and_large_d(gen, temperature):
    z = randn(gen, 64, 2048, dtype=torch.float32).requires_grad_()
    z.data[32:] = z.data[:32] + 0.3 * z.data[32:]  # correlated views, as in training
    loss = nt_xent(z, temperature)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    z64 = z.detach().double().requires_grad_()
    expected = reference_nt_xent(z64, temperature)
    expected.backward()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z.grad.double(), z64.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_error_at_most_twice_torch(gen, dtype):
    """flash-attention's rule: error vs fp64 on the same inputs <= 2x that of plain torch
    computing in the input dtype (the N x N logits + cross entropy)."""
    z = randn(gen, 256, 128, dtype=dtype).requires_grad_()
    z64 = z.detach().double().requires_grad_()
    exact = reference_nt_xent(z64, 0.1)
    (exact_grad,) = torch.autograd.grad(exact, z64)

    def plain_torch(z):
        u = F.normalize(z, dim=1)
        logits = (u @ u.T / 0.1).masked_fill(torch.eye(256, dtype=torch.bool), float("-inf"))
        return F.cross_entropy(logits, (torch.arange(256) + 128) % 256)

    base = plain_torch(z)
    (base_grad,) = torch.autograd.grad(base, z)
    ours = nt_xent(z, 0.1)
    (our_grad,) = torch.autograd.grad(ours, z)
    assert our_grad.dtype == dtype
    assert abs(ours.double() - exact) <= 2 * abs(base.double() - exact) + 1e-6
    our_err = (our_grad.double() - exact_grad).abs().max()
    base_err = (base_grad.double() - exact_grad).abs().max()
    assert our_err <= 2 * base_err + 1e-9, (our_err, base_err)


# ------------------------------------------------------------------ triton (interpreted)

needs_triton = pytest.mark.skipif(
    _dispatch.unavailable_reason("triton", "cpu") is not None,
    reason="triton is not installed or TRITON_INTERPRET is off",
)


def _grad_err(got: torch.Tensor, exact: torch.Tensor) -> float:
    return (got.double() - exact).abs().max().item()


@needs_triton
@pytest.mark.parametrize("n", [1, 2, 3, 127])
@pytest.mark.parametrize("d", [8, 128])
@pytest.mark.parametrize("normalize", [True, False])
def test_triton_nt_xent_matches_fp64(gen, n, d, normalize):
    """fp32 in, against the fp64 oracle, over several tiles (127: 254 rows, 4 x 4 tiles of 64;
    D = 128: two D chunks); loss and gradient at every temperature."""
    z = randn(gen, 2 * n, d, dtype=torch.float32)
    if not normalize:
        z = z / d**0.5
    for temperature in (0.07, 0.5, 0.01):
        zt = z.clone().requires_grad_()
        loss = nt_xent(zt, temperature, normalize=normalize, backend="triton")
        (grad,) = torch.autograd.grad(loss, zt)
        z64 = z.double().requires_grad_()
        exact = reference_nt_xent(z64, temperature, normalize)
        (exact_grad,) = torch.autograd.grad(exact, z64)
        assert loss.dtype == torch.float32 and grad.dtype == torch.float32
        torch.testing.assert_close(loss.double(), exact, rtol=2e-5, atol=2e-6)
        scale = exact_grad.abs().max().clamp_min(1 / (2 * n * temperature))
        atol = max(2e-6, 1e-7 / temperature)
        torch.testing.assert_close(grad.double() / scale, exact_grad / scale, rtol=2e-5, atol=atol)


@needs_triton
@pytest.mark.parametrize("n", [1, 3, 127])
@pytest.mark.parametrize("queue_size", [None, 0, 70])
@pytest.mark.parametrize("normalize", [True, False])
def test_triton_info_nce_matches_fp64(gen, n, queue_size, normalize):
    q, k = randn(gen, n, 8, dtype=torch.float32), randn(gen, n, 8, dtype=torch.float32)
    queue = None if queue_size is None else randn(gen, queue_size, 8, dtype=torch.float32)
    if not normalize:
        q, k = q / 3, k / 3
        queue = None if queue is None else queue / 3
    for temperature in (0.07, 0.5):
        qt, kt = q.clone().requires_grad_(), k.clone().requires_grad_()
        loss = info_nce(qt, kt, queue, temperature, normalize=normalize, backend="triton")
        grads = torch.autograd.grad(loss, (qt, kt))
        q64, k64 = q.double().requires_grad_(), k.double().requires_grad_()
        queue64 = None if queue is None else queue.double()
        exact = reference_info_nce(q64, k64, queue64, temperature, normalize)
        exact_grads = torch.autograd.grad(exact, (q64, k64))
        torch.testing.assert_close(loss.double(), exact, rtol=2e-5, atol=2e-6)
        for g, e in zip(grads, exact_grads, strict=True):
            assert g.dtype == torch.float32
            torch.testing.assert_close(g.double(), e, rtol=2e-5, atol=2e-6 / temperature / n)


@needs_triton
def test_triton_nt_xent_large_d(gen):
    """D = 2048: 32 chunks of the K loop and of the gradient accumulation."""
    z = randn(gen, 6, 2048, dtype=torch.float32)
    z[3:] = z[:3] + 0.3 * z[3:]
    zt = z.clone().requires_grad_()
    loss = nt_xent(zt, 0.1, backend="triton")
    (grad,) = torch.autograd.grad(loss, zt)
    z64 = z.double().requires_grad_()
    exact = reference_nt_xent(z64, 0.1)
    (exact_grad,) = torch.autograd.grad(exact, z64)
    torch.testing.assert_close(loss.double(), exact, rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(grad.double(), exact_grad, rtol=1e-4, atol=1e-7)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_triton_low_precision_error_at_most_twice_torch(gen, dtype, temperature):
    """flash-attention's rule, for both losses: error vs fp64 <= 2x plain torch's in dtype."""
    n, d = 127, 64
    z = randn(gen, 2 * n, d, dtype=dtype).requires_grad_()
    z64 = z.detach().double().requires_grad_()
    exact = reference_nt_xent(z64, temperature)
    (exact_grad,) = torch.autograd.grad(exact, z64)
    u = F.normalize(z, dim=1)
    self_mask = torch.eye(2 * n, dtype=torch.bool)
    logits = (u @ u.T / temperature).masked_fill(self_mask, float("-inf"))
    base = F.cross_entropy(logits, (torch.arange(2 * n) + n) % (2 * n))
    (base_grad,) = torch.autograd.grad(base, z)
    ours = nt_xent(z, temperature, backend="triton")
    (our_grad,) = torch.autograd.grad(ours, z)
    assert ours.dtype == torch.float32 and our_grad.dtype == dtype
    assert abs(ours.double() - exact) <= 2 * abs(base.double() - exact) + 1e-6
    assert _grad_err(our_grad, exact_grad) <= 2 * _grad_err(base_grad, exact_grad) + 1e-9

    q, k = z.detach()[:n].requires_grad_(), z.detach()[n:].requires_grad_()
    queue = randn(gen, 70, d, dtype=dtype)
    q64, k64 = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    exact = reference_info_nce(q64, k64, queue.double(), temperature)
    exact_grads = torch.autograd.grad(exact, (q64, k64))
    uq, uk, uqueue = (F.normalize(t, dim=1) for t in (q, k, queue))
    logits = torch.cat([(uq * uk).sum(1, keepdim=True), uq @ uqueue.T], 1) / temperature
    base = F.cross_entropy(logits, torch.zeros(n, dtype=torch.long))
    base_grads = torch.autograd.grad(base, (q, k))
    ours = info_nce(q, k, queue, temperature, backend="triton")
    our_grads = torch.autograd.grad(ours, (q, k))
    assert abs(ours.double() - exact) <= 2 * abs(base.double() - exact) + 1e-6
    for g, b, e in zip(our_grads, base_grads, exact_grads, strict=True):
        assert g.dtype == dtype
        assert _grad_err(g, e) <= 2 * _grad_err(b, e) + 1e-9


@needs_triton
@pytest.mark.parametrize(("n_local", "world", "rank"), [(3, 3, 1), (35, 3, 2), (1, 2, 0)])
def test_triton_gathered_columns(gen, n_local, world, rank):
    """Rows of one rank against every rank's columns (at col_offset), both gradients, vs
    the reference backend in fp64 (and so vs the single-process formula it is tested on)."""
    m = 2 * n_local
    cols = randn(gen, world * m, 16)
    rows = cols[rank * m : (rank + 1) * m].clone()
    op = torch.ops.radengine.nt_xent
    results = {}
    for backend in ("reference", "triton"):
        r, c = rows.clone().requires_grad_(), cols.clone().requires_grad_()
        loss, stats = op(r, c, rank * m, 0.2, True, backend)
        results[backend] = (loss, stats, *torch.autograd.grad(loss, (r, c)))
    for got, expected in zip(results["triton"], results["reference"], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@needs_triton
def test_triton_gradcheck(gen):
    rows, others = randn(gen, 4, 3).requires_grad_(), randn(gen, 4, 3).requires_grad_()
    op = torch.ops.radengine.nt_xent

    def gathered(rows, others):
        return op(rows, torch.cat([others, rows]), 4, 0.3, True, "triton")[0]

    assert torch.autograd.gradcheck(gathered, (rows, others))
    z = randn(gen, 6, 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda z: nt_xent(z, 0.2, backend="triton"), z)
    q, k = randn(gen, 3, 4).requires_grad_(), randn(gen, 3, 4).requires_grad_()
    queue = randn(gen, 5, 4)
    for negatives in (None, queue):
        assert torch.autograd.gradcheck(
            lambda q, k, negatives=negatives: info_nce(q, k, negatives, 0.2, backend="triton"),
            (q, k),
        )


@needs_triton
def test_triton_opcheck(gen):
    rows = randn(gen, 6, 5).requires_grad_()
    cols = randn(gen, 12, 5).requires_grad_()
    q, k = randn(gen, 4, 5).requires_grad_(), randn(gen, 4, 5).requires_grad_()
    queue = randn(gen, 7, 5)
    for args in ((rows, None, 0, 0.5, True, "triton"), (rows, cols, 6, 0.1, False, "triton")):
        torch.library.opcheck(torch.ops.radengine.nt_xent.default, args)
    for args in ((q, k, queue, 0.07, True, "triton"), (q, k, None, 0.2, False, "triton")):
        torch.library.opcheck(torch.ops.radengine.info_nce.default, args)


def test_triton_dispatch(monkeypatch):
    """CPU tensors: triton only when forced and interpreted; CUDA tensors: triton by default."""
    monkeypatch.delenv("RADENGINE_BACKEND", raising=False)
    assert "triton" in IMPLS
    assert _dispatch.default_backend(IMPLS, "cpu") != "triton"
    monkeypatch.setattr(_dispatch, "_cuda_device_error", lambda: None)
    if _dispatch._triton_import_error() is None:
        assert _dispatch.default_backend(IMPLS, "cuda") == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    z = torch.randn(6, 4)
    with pytest.raises(_dispatch.BackendUnavailableError, match="needs TRITON_INTERPRET=1"):
        nt_xent(z, backend="triton")
    monkeypatch.setenv("RADENGINE_BACKEND", "triton")
    with pytest.raises(_dispatch.BackendUnavailableError, match="backend 'triton' requested"):
        info_nce(z[:3], z[3:])


# ------------------------------------------------------------------------ cpu (C++/OpenMP)

CPU_BUILT = "cpu" in IMPLS and _dispatch.unavailable_reason("cpu", "cpu") is None
needs_cpu = pytest.mark.skipif(
    not CPU_BUILT, reason="radengine._cpu is not built, or predates the contrastive kernels"
)


def cpu_isa_caps() -> list[int]:
    """One instruction-set cap (csrc ContrastiveIsa: 3 AVX-512, 2 AVX2, 1 portable C++) per
    distinct code path of the cpu kernels that this machine runs."""
    if not CPU_BUILT:
        return []
    paths: dict[str, int] = {}
    for cap in (3, 2, 1):
        paths.setdefault(_native.cpu.contrastive_isa(cap), cap)
    return list(paths.values())


def each_cpu_path(monkeypatch):
    """Yields the path name with the kernels capped to it."""
    for cap in cpu_isa_caps():
        monkeypatch.setattr(contrastive_module, "_cpu_isa", cap)
        yield _native.cpu.contrastive_isa(cap)


def two_views(gen, n: int, d: int, dtype=torch.float64) -> torch.Tensor:
    """(2n, d): correlated views, as in training (positives close, so low temperatures give
    tiles whose logits spread over ~2 / T, the kernels' two-exp path, next to narrow ones)."""
    x = randn(gen, n, d)
    return torch.cat([x + 0.3 * randn(gen, n, d), x + 0.3 * randn(gen, n, d)]).to(dtype)


def assert_grad_close(got: torch.Tensor, exact: torch.Tensor, rows: int, temperature: float):
    """fp32 gradients against fp64, relative to their natural size 1 / (rows T) per logit
    (logits carry an error of ~eps32 / T that the softmax passes on)."""
    scale = exact.abs().max().clamp_min(1 / (rows * temperature))
    atol = max(2e-6, 1e-7 / temperature)
    torch.testing.assert_close(got.double() / scale, exact / scale, rtol=2e-5, atol=atol)


@needs_cpu
@pytest.mark.parametrize(
    ("n", "d", "temperatures", "normalize"),
    [
        *((1, 8, TEMPERATURES, nm) for nm in (True, False)),
        *((2, 128, TEMPERATURES, nm) for nm in (True, False)),
        *((3, 2048, TEMPERATURES, nm) for nm in (True, False)),
        # 254 rows: 2 blocks of 128, the last one short by 2
        *((127, 256, TEMPERATURES, nm) for nm in (True, False)),
        # 5 blocks (an odd count); D padded to 48: a 32- and a 16-column chunk
        *((300, 33, (0.01, 0.5), nm) for nm in (True, False)),
        *((1000, 128, (0.07,), nm) for nm in (True, False)),
        (4097, 8, (0.1,), True),  # 8194 rows: 65 blocks, 2 rows in the last
    ],
    ids=str,
)
def test_cpu_nt_xent_matches_fp64(gen, monkeypatch, n, d, temperatures, normalize):
    """fp32 in, against the fp64 oracle, on every instruction-set path; loss and gradient."""
    z = two_views(gen, n, d, torch.float32)
    if not normalize:
        z = z / (1.1 * d**0.5)  # raw dot products up to ~1: logits up to ~1 / T
    for temperature in temperatures:
        z64 = z.double().requires_grad_()
        exact = reference_nt_xent(z64, temperature, normalize)
        (exact_grad,) = torch.autograd.grad(exact, z64)
        for path in each_cpu_path(monkeypatch):
            zt = z.clone().requires_grad_()
            loss = nt_xent(zt, temperature, normalize=normalize, backend="cpu")
            (grad,) = torch.autograd.grad(loss, zt)
            assert loss.dtype == torch.float32 and grad.dtype == torch.float32, path
            torch.testing.assert_close(
                loss.double(), exact, rtol=2e-5, atol=2e-6, msg=lambda m, p=path: f"{p}: {m}"
            )
            assert_grad_close(grad, exact_grad, 2 * n, temperature)


@needs_cpu
def test_cpu_rows_of_very_different_norms(gen, monkeypatch):
    """Raw dot products of rows whose norms span e^-3 .. e^1: tiles hold rows whose logits
    peak near 0 next to rows peaking near 1 / T, so a single exp shift per tile would
    underflow the small rows' terms; the kernels must take their two-exp path there."""
    n, d, temperature = 200, 16, 0.05
    norms = torch.empty(2 * n, 1, dtype=torch.float64).uniform_(-3, 1.1, generator=gen).exp()
    z = (randn(gen, 2 * n, d) * norms / d**0.5).float()
    z64 = z.double().requires_grad_()
    exact = reference_nt_xent(z64, temperature, normalize=False)
    (exact_grad,) = torch.autograd.grad(exact, z64)
    for _ in each_cpu_path(monkeypatch):
        zt = z.clone().requires_grad_()
        loss = nt_xent(zt, temperature, normalize=False, backend="cpu")
        (grad,) = torch.autograd.grad(loss, zt)
        torch.testing.assert_close(loss.double(), exact, rtol=2e-5, atol=2e-6)
        assert_grad_close(grad, exact_grad, 2 * n, temperature)


@needs_cpu
@pytest.mark.parametrize("n", [1, 3, 127, 300])
@pytest.mark.parametrize("queue_size", [None, 0, 70, 300])
@pytest.mark.parametrize("normalize", [True, False])
def test_cpu_info_nce_matches_fp64(gen, monkeypatch, n, queue_size, normalize):
    d = 40  # padded to 48 inside: a 32- and a 16-column chunk
    q, k = two_views(gen, n, d, torch.float32).split(n)
    queue = None if queue_size is None else randn(gen, queue_size, d, dtype=torch.float32)
    if not normalize:
        q, k = q / 8, k / 8
        queue = None if queue is None else queue / 8
    for temperature in (0.07, 0.5):
        q64, k64 = q.double().requires_grad_(), k.double().requires_grad_()
        queue64 = None if queue is None else queue.double()
        exact = reference_info_nce(q64, k64, queue64, temperature, normalize)
        exact_grads = torch.autograd.grad(exact, (q64, k64))
        for _ in each_cpu_path(monkeypatch):
            qt, kt = q.clone().requires_grad_(), k.clone().requires_grad_()
            loss = info_nce(qt, kt, queue, temperature, normalize=normalize, backend="cpu")
            grads = torch.autograd.grad(loss, (qt, kt))
            torch.testing.assert_close(loss.double(), exact, rtol=2e-5, atol=2e-6)
            for g, e in zip(grads, exact_grads, strict=True):
                assert g.dtype == torch.float32
                assert_grad_close(g, e, n, temperature)


@needs_cpu
@pytest.mark.parametrize(("n_local", "world", "rank"), [(1, 2, 0), (3, 3, 1), (70, 3, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_cpu_gathered_columns(gen, monkeypatch, n_local, world, rank, dtype):
    """Rows of one rank against every rank's columns (at col_offset), both gradients, vs
    the reference backend in fp64 (70: 140 rows and 420 columns, several blocks each)."""
    m = 2 * n_local
    cols = randn(gen, world * m, 16)
    rows = cols[rank * m : (rank + 1) * m].clone()
    op = torch.ops.radengine.nt_xent
    r, c = rows.clone().requires_grad_(), cols.clone().requires_grad_()
    loss, stats = op(r, c, rank * m, 0.2, True, "reference")
    expected = (loss, stats, *torch.autograd.grad(loss, (r, c)))
    for _ in each_cpu_path(monkeypatch):
        r = rows.to(dtype).requires_grad_()
        c = cols.to(dtype).requires_grad_()
        loss, stats = op(r, c, rank * m, 0.2, True, "cpu")
        got = (loss, stats, *torch.autograd.grad(loss, (r, c)))
        for g, e in zip(got, expected, strict=True):
            assert g.dtype == dtype
            if dtype == torch.float64:
                torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
            else:
                torch.testing.assert_close(g.double(), e, rtol=2e-5, atol=1e-6)


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_cpu_low_precision_error_at_most_twice_torch(gen, dtype, temperature):
    """flash-attention's rule, for both losses: error vs fp64 <= 2x plain torch's in dtype;
    gradients come back in the input dtype."""
    n, d = 300, 64
    z = two_views(gen, n, d, dtype).requires_grad_()
    z64 = z.detach().double().requires_grad_()
    exact = reference_nt_xent(z64, temperature)
    (exact_grad,) = torch.autograd.grad(exact, z64)
    u = F.normalize(z, dim=1)
    self_mask = torch.eye(2 * n, dtype=torch.bool)
    logits = (u @ u.T / temperature).masked_fill(self_mask, float("-inf"))
    base = F.cross_entropy(logits, (torch.arange(2 * n) + n) % (2 * n))
    (base_grad,) = torch.autograd.grad(base, z)
    ours = nt_xent(z, temperature, backend="cpu")
    (our_grad,) = torch.autograd.grad(ours, z)
    assert ours.dtype == torch.float32 and our_grad.dtype == dtype
    assert abs(ours.double() - exact) <= 2 * abs(base.double() - exact) + 1e-6
    assert _grad_err(our_grad, exact_grad) <= 2 * _grad_err(base_grad, exact_grad) + 1e-9

    q, k = z.detach()[:n].requires_grad_(), z.detach()[n:].requires_grad_()
    for queue in (randn(gen, 200, d, dtype=dtype), None):
        q64, k64 = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
        exact = reference_info_nce(q64, k64, None if queue is None else queue.double(), temperature)
        exact_grads = torch.autograd.grad(exact, (q64, k64))
        base = reference_info_nce_in_dtype(q, k, queue, temperature)
        base_grads = torch.autograd.grad(base, (q, k))
        ours = info_nce(q, k, queue, temperature, backend="cpu")
        our_grads = torch.autograd.grad(ours, (q, k))
        assert abs(ours.double() - exact) <= 2 * abs(base.double() - exact) + 1e-6
        for g, b, e in zip(our_grads, base_grads, exact_grads, strict=True):
            assert g.dtype == dtype
            assert _grad_err(g, e) <= 2 * _grad_err(b, e) + 1e-9


def reference_info_nce_in_dtype(q, k, queue, temperature):
    """MoCo's formula computed in the inputs' own dtype (the plain-torch baseline)."""
    uq, uk = F.normalize(q, dim=1), F.normalize(k, dim=1)
    if queue is None:
        return F.cross_entropy(uq @ uk.T / temperature, torch.arange(q.shape[0]))
    neg = F.normalize(queue, dim=1)
    logits = torch.cat([(uq * uk).sum(1, keepdim=True), uq @ neg.T], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long))


@needs_cpu
def test_cpu_gradcheck(gen, monkeypatch):
    """fp64 through the kernels (portable C++ at every instruction-set cap)."""
    op = torch.ops.radengine.nt_xent
    for _ in each_cpu_path(monkeypatch):
        rows, others = randn(gen, 4, 3).requires_grad_(), randn(gen, 4, 3).requires_grad_()

        def gathered(rows, others):
            return op(rows, torch.cat([others, rows]), 4, 0.3, True, "cpu")[0]

        assert torch.autograd.gradcheck(gathered, (rows, others))
        z = randn(gen, 6, 3).requires_grad_()
        for normalize in (True, False):
            assert torch.autograd.gradcheck(
                lambda z, nm=normalize: nt_xent(z, 0.2, normalize=nm, backend="cpu"), z
            )
        q, k = randn(gen, 3, 4).requires_grad_(), randn(gen, 3, 4).requires_grad_()
        for negatives in (None, randn(gen, 5, 4)):
            assert torch.autograd.gradcheck(
                lambda q, k, negatives=negatives: info_nce(q, k, negatives, 0.2, backend="cpu"),
                (q, k),
            )


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_cpu_opcheck(gen, dtype):
    rows = randn(gen, 6, 5, dtype=dtype).requires_grad_()
    cols = randn(gen, 12, 5, dtype=dtype).requires_grad_()
    q, k = randn(gen, 4, 5, dtype=dtype).requires_grad_(), randn(gen, 4, 5, dtype=dtype)
    queue = randn(gen, 7, 5, dtype=dtype)
    for args in ((rows, None, 0, 0.5, True, "cpu"), (rows, cols, 6, 0.1, False, "cpu")):
        torch.library.opcheck(torch.ops.radengine.nt_xent.default, args)
    for args in (
        (q, k, queue, 0.07, True, "cpu"),
        (q, k.requires_grad_(), None, 0.2, False, "cpu"),
    ):
        torch.library.opcheck(torch.ops.radengine.info_nce.default, args)


@needs_cpu
def test_cpu_results_do_not_depend_on_the_thread_count(gen):
    """Bitwise the same loss and gradients with 1, 2 and 3 threads: no atomics, and the
    tiles' contributions reach every row in a fixed order."""
    z = two_views(gen, 300, 40, torch.float32)  # 5 blocks: an odd tournament
    cols = randn(gen, 900, 40, dtype=torch.float32)
    q, k = randn(gen, 300, 40, dtype=torch.float32), randn(gen, 300, 40, dtype=torch.float32)

    def run():
        out = []
        zt = z.clone().requires_grad_()
        loss = nt_xent(zt, 0.1, backend="cpu")
        out += [loss, *torch.autograd.grad(loss, zt)]
        r, c = cols[300:600].clone().requires_grad_(), cols.clone().requires_grad_()
        loss = torch.ops.radengine.nt_xent(r, c, 300, 0.1, True, "cpu")[0]
        out += [loss, *torch.autograd.grad(loss, (r, c))]
        qt, kt = q.clone().requires_grad_(), k.clone().requires_grad_()
        loss = info_nce(qt, kt, None, 0.1, backend="cpu")
        out += [loss, *torch.autograd.grad(loss, (qt, kt))]
        return out

    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(run())
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


@needs_cpu
def test_cpu_is_the_default_for_cpu_tensors(gen, monkeypatch):
    monkeypatch.delenv("RADENGINE_BACKEND", raising=False)
    assert _dispatch.default_backend(IMPLS, "cpu") == "cpu"
    assert _dispatch.select("contrastive_loss", IMPLS, torch.device("cpu"))[0] == "cpu"
    calls = []
    forward = contrastive_module.CPU.nt_xent_fwd
    monkeypatch.setattr(
        contrastive_module,
        "CPU",
        contrastive_module.ContrastiveBackend(
            lambda *a: calls.append(1) or forward(*a),
            contrastive_module.CPU.nt_xent_bwd,
            contrastive_module.CPU.info_nce_fwd,
            contrastive_module.CPU.info_nce_bwd,
        ),
    )
    monkeypatch.setitem(IMPLS, "cpu", contrastive_module.CPU)
    z = randn(gen, 8, 4, dtype=torch.float32)
    torch.testing.assert_close(nt_xent(z, 0.5), reference_nt_xent(z, 0.5))
    assert calls == [1]


@needs_cpu
def test_cpu_stale_build_is_reported(monkeypatch):
    monkeypatch.setattr(_native, "cpu", types.SimpleNamespace())
    assert "rebuild" in contrastive_module._cpu_kernel_missing()
    with pytest.raises(
        _dispatch.BackendUnavailableError, match=r"backend 'cpu' requested.*rebuild"
    ):
        nt_xent(torch.randn(4, 3), backend="cpu")


# ------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_gradcheck(gen, n, normalize, temperature):
    z = randn(gen, 2 * n, 4).requires_grad_()
    assert torch.autograd.gradcheck(lambda z: nt_xent(z, temperature, normalize=normalize), z)


def test_nt_xent_gradcheck_rows_against_gathered_columns(gen):
    """The op as the distributed path calls it: rows (rank 1's) against separate columns."""
    rows = randn(gen, 4, 3).requires_grad_()
    others = randn(gen, 4, 3).requires_grad_()
    op = torch.ops.radengine.nt_xent

    def loss(rows, others):
        cols = torch.cat([others, rows])  # rank 1 of 2: its rows at offset 4
        return op(rows, cols, 4, 0.3, True, "")[0]

    assert torch.autograd.gradcheck(loss, (rows, others))
    torch.testing.assert_close(
        loss(rows, others), reference_like_rank(rows.detach(), others.detach(), 0.3)
    )


def reference_like_rank(rows, others, temperature):
    """Rank 1's loss written with the oracle's pieces: its 4 rows against all 8 columns."""
    u_rows = F.normalize(rows, dim=1)
    u_cols = F.normalize(torch.cat([others, rows]), dim=1)
    logits = u_rows @ u_cols.T / temperature
    j = torch.arange(4)
    logits[j, 4 + j] = float("-inf")
    return F.cross_entropy(logits, 4 + (j + 2) % 4)


@pytest.mark.parametrize("queue_size", [None, 0, 3])
@pytest.mark.parametrize("normalize", [True, False])
def test_info_nce_gradcheck(gen, queue_size, normalize):
    q, k = randn(gen, 3, 4).requires_grad_(), randn(gen, 3, 4).requires_grad_()
    queue = None if queue_size is None else randn(gen, queue_size, 4)
    assert torch.autograd.gradcheck(
        lambda q, k: info_nce(q, k, queue, 0.2, normalize=normalize), (q, k)
    )


def test_zero_row_gradient_is_finite():
    z = torch.tensor([[0.0, 0.0], [1.0, 0.5], [0.3, 1.0], [1.0, 1.0]], requires_grad=True)
    loss = nt_xent(z)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    z2 = z.detach().clone().requires_grad_()
    reference_nt_xent(z2).backward()
    torch.testing.assert_close(z.grad, z2.grad)


# ------------------------------------------------------------ bad input and dispatch


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(z=torch.zeros(3, 4)), r"z must hold two views.*3 rows"),
        (dict(z=torch.zeros(0, 4)), r"z must hold two views.*0 rows"),
        (dict(z=torch.zeros(4)), r"z must be 2-D"),
        (dict(z=torch.zeros(2, 4, 3)), r"z must be 2-D"),
        (dict(z=torch.zeros(4, 0)), r"z must have D >= 1"),
        (dict(z=torch.zeros(4, 3, dtype=torch.int64)), r"z must be a floating tensor"),
        (dict(z=[[1.0, 2.0]]), r"z must be a torch.Tensor"),
        (dict(temperature=0.0), r"temperature must be > 0"),
        (dict(temperature=-0.5), r"temperature must be > 0"),
        (dict(temperature=float("nan")), r"temperature must be > 0"),
        (dict(temperature="0.5"), r"temperature must be a number"),
        (dict(backend="gpu"), r"backend 'gpu' is not one of"),
    ],
)
def test_nt_xent_bad_input(kwargs, match):
    z = kwargs.pop("z", torch.randn(4, 3))
    with pytest.raises(ValueError, match=match):
        nt_xent(z, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(k=torch.zeros(4, 5)), r"k must have the shape of q \(4, 3\)"),
        (dict(k=torch.zeros(3, 3)), r"k must have the shape of q"),
        (dict(queue=torch.zeros(6, 5)), r"queue must have D = 3"),
        (dict(queue=torch.zeros(6)), r"queue must be 2-D"),
        (dict(queue=torch.zeros(6, 3, dtype=torch.float64)), r"queue must have the dtype of q"),
        (dict(k=torch.zeros(4, 3, dtype=torch.float16)), r"k must have the dtype of q"),
        (dict(q=torch.zeros(4, 3, dtype=torch.int32)), r"q must be a floating tensor"),
        (dict(q=torch.zeros(0, 3), k=torch.zeros(0, 3)), r"q must have at least one row"),
        (dict(temperature=0), r"temperature must be > 0"),
    ],
)
def test_info_nce_bad_input(kwargs, match):
    q = kwargs.pop("q", torch.randn(4, 3))
    k = kwargs.pop("k", torch.randn(4, 3))
    with pytest.raises(ValueError, match=match):
        info_nce(q, k, **kwargs)


def test_dispatch(monkeypatch):
    monkeypatch.delenv("RADENGINE_BACKEND", raising=False)
    z = torch.randn(6, 4)
    assert _dispatch.select("contrastive_loss", IMPLS, torch.device("cpu"))[0] in IMPLS
    with pytest.raises(
        _dispatch.BackendUnavailableError,
        match=r"contrastive_loss has no 'cuda' backend \(its backends: reference, triton",
    ):
        nt_xent(z, backend="cuda")
    monkeypatch.setenv("RADENGINE_BACKEND", "reference")
    torch.testing.assert_close(nt_xent(z), reference_nt_xent(z))
    monkeypatch.setenv("RADENGINE_BACKEND", "fastest")
    with pytest.raises(ValueError, match="RADENGINE_BACKEND"):
        nt_xent(z)


# ------------------------------------------------------------ opcheck and compile


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(gen, device):
    rows = randn(gen, 6, 5, device=device).requires_grad_()
    cols = randn(gen, 12, 5, device=device).requires_grad_()
    q, k = randn(gen, 4, 5, device=device).requires_grad_(), randn(gen, 4, 5, device=device)
    queue = randn(gen, 7, 5, device=device)
    for args in ((rows, None, 0, 0.5, True, ""), (rows, cols, 6, 0.1, False, "reference")):
        torch.library.opcheck(torch.ops.radengine.nt_xent.default, args)
    for args in ((q, k, queue, 0.07, True, ""), (q, k.requires_grad_(), None, 0.2, False, "")):
        torch.library.opcheck(torch.ops.radengine.info_nce.default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(gen, device):
    def both(z, q, k, queue):
        return nt_xent(z, 0.5) + 0.5 * info_nce(q, k, queue, 0.2)

    inputs = [randn(gen, 10, 6, dtype=torch.float32, device=device) for _ in range(3)]
    inputs.append(randn(gen, 9, 6, dtype=torch.float32, device=device))
    eager = [t.clone().requires_grad_() for t in inputs[:3]]
    compiled_in = [t.clone().requires_grad_() for t in inputs[:3]]
    compiled = torch.compile(both, fullgraph=True)
    out = compiled(*compiled_in, inputs[3])
    ref = both(*eager, inputs[3])
    torch.testing.assert_close(out, ref)
    out.backward()
    ref.backward()
    for a, b in zip(compiled_in, eager, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


# ------------------------------------------------------------------- distributed (gloo)

WORLD, N_GLOBAL, D_IN, D_OUT, T = 2, 6, 7, 5, 0.2


def _distributed_worker(rank: int, init_file: str, out_dir: str, data: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        n = N_GLOBAL // WORLD
        mine = slice(rank * n, (rank + 1) * n)
        # Each rank holds both views of its own n images: [z1_r; z2_r].
        x = torch.cat([data["x1"][mine], data["x2"][mine]])
        results = {}
        for mode in ("gathered", "naive"):
            model = nn.Linear(D_IN, D_OUT).double()
            model.load_state_dict(data["model"])
            ddp = nn.parallel.DistributedDataParallel(model)
            z = ddp(x)
            z.retain_grad()
            if mode == "gathered":
                loss = nt_xent(z, T)
            else:  # the usual mistake: gather without a gradient, keep only the local one
                parts = [torch.empty_like(z) for _ in range(WORLD)]
                dist.all_gather(parts, z.detach())
                parts[rank] = z
                cols = torch.cat(parts)
                loss = torch.ops.radengine.nt_xent(z, cols, rank * 2 * n, T, True, "")[0]
            loss.backward()
            global_loss = loss.detach().clone()
            dist.all_reduce(global_loss)
            results[mode] = dict(
                loss=loss.detach(),
                global_loss=global_loss / WORLD,
                z_grad=z.grad.detach(),
                weight_grad=model.weight.grad.detach(),
                bias_grad=model.bias.grad.detach(),
            )
        results["local_only"] = nt_xent(z.detach(), T, gather=False)
        results["local_oracle"] = reference_nt_xent(z.detach(), T)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_matches_single_process(tmp_path):
    gen = torch.Generator().manual_seed(7)
    x1 = torch.randn(N_GLOBAL, D_IN, generator=gen, dtype=torch.float64)
    x2 = x1 + 0.5 * torch.randn(N_GLOBAL, D_IN, generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    model = nn.Linear(D_IN, D_OUT).double()
    data = {"x1": x1, "x2": x2, "model": model.state_dict()}
    mp.spawn(
        _distributed_worker,
        args=(str(tmp_path / "init"), str(tmp_path), data),
        nprocs=WORLD,
        join=True,
    )

    # One process, the global batch [z1_0; z1_1; z2_0; z2_1].
    z = model(torch.cat([x1, x2]))
    z.retain_grad()
    loss = nt_xent(z, T)
    loss.backward()
    n = N_GLOBAL // WORLD
    torch.testing.assert_close(loss, reference_nt_xent(z.detach(), T))

    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        g = got["gathered"]
        own = torch.cat([z.grad[rank * n : (rank + 1) * n], z.grad[N_GLOBAL + rank * n :][:n]])
        # The mean of the rank losses is the global loss; each rank's z gets the gradient of
        # the summed rank losses (WORLD x the global loss); DDP's average makes it exact.
        torch.testing.assert_close(g["global_loss"], loss.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g["z_grad"], WORLD * own, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g["weight_grad"], model.weight.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g["bias_grad"], model.bias.grad, rtol=1e-10, atol=1e-12)
        # gather=False: local negatives only (study A's DataParallel behaviour).
        torch.testing.assert_close(got["local_only"], got["local_oracle"])
        assert abs(got["local_only"].item() - g["loss"].item()) > 1e-6
        # The gradient-less gather gets the same loss but a wrong gradient: this test sees it.
        naive = got["naive"]
        torch.testing.assert_close(naive["global_loss"], loss.detach())
        assert (naive["weight_grad"] - model.weight.grad).abs().max() > 1e-3


@pytest.mark.parametrize("loss", ["nt_xent", "info_nce"])
def test_autocast_does_not_lower_the_accumulation(gen, loss):
    # training calls the loss inside bf16 autocast; the op must still compute in fp32
    z = torch.randn(64, 32, generator=gen, requires_grad=True)
    k = torch.randn(32, 32, generator=gen)

    def run():
        if loss == "nt_xent":
            return nt_xent(z, 0.1)
        return info_nce(z[:32], k, z[32:].detach(), 0.1)

    expected = run()
    (g_expected,) = torch.autograd.grad(expected, z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run()
    (g_got,) = torch.autograd.grad(got, z)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_got, g_expected, rtol=1e-5, atol=1e-7)


# ------------------------------------------- hard inputs: each gradient against its own size
# The gradients above are compared on the scale 1 / (rows T) of the largest ones, which
# hides rows whose gradient is far smaller: a confident row (positive nearly equal to the
# anchor, negatives far, low T) has a tiny loss and a tiny gradient, and forming its
# positive's p - 1 as exp(s_pos - lse) - 1 loses every digit of it. Here each row of the
# input gradient is measured against its own norm, against an fp64 oracle that is itself
# free of that cancellation (fp64 cross entropy is not: at T = 0.01 the true 1 - p can be
# 1e-22, far below eps64 |lse|).


def exact_nt_xent(z: torch.Tensor, temperature: float, normalize: bool = True) -> torch.Tensor:
    """NT-Xent in fp64 as loss_i = log(1 + sum_{j neg} exp(s_ij - s_i,pos)), written as
    logaddexp(0, lse_neg - s_pos); autograd then gives the positive's p - 1 as -sigmoid(x)
    (no cancellation) and every negative's p from its own logit."""
    z = z.double()
    u = F.normalize(z, dim=1) if normalize else z
    two_n = z.shape[0]
    j = torch.arange(two_n)
    pos = (j + two_n // 2) % two_n
    logits = u @ u.T / temperature
    s_pos = logits[j, pos]
    neg = logits.masked_fill(torch.eye(two_n, dtype=torch.bool), float("-inf"))
    neg = neg.index_put((j, pos), torch.tensor(float("-inf"), dtype=torch.float64))
    x = torch.logsumexp(neg, dim=1) - s_pos
    return torch.logaddexp(torch.zeros_like(x), x).mean()


def exact_gathered_nt_xent(rows, cols, offset: int, temperature: float) -> torch.Tensor:
    """The gathered-columns NT-Xent of one rank (rows at [offset, offset + M) of cols) in
    the cancellation-free form of :func:`exact_nt_xent`, fp64."""
    u_rows, u_cols = F.normalize(rows.double(), dim=1), F.normalize(cols.double(), dim=1)
    m = rows.shape[0]
    j = torch.arange(m)
    pos = offset + (j + m // 2) % m
    logits = u_rows @ u_cols.T / temperature
    s_pos = logits[j, pos]
    inf = torch.tensor(float("-inf"), dtype=torch.float64)
    neg = logits.index_put((j, offset + j), inf).index_put((j, pos), inf)
    x = torch.logsumexp(neg, dim=1) - s_pos
    return torch.logaddexp(torch.zeros_like(x), x).mean()


def exact_info_nce(q, k, queue, temperature: float) -> torch.Tensor:
    """InfoNCE in fp64 in the same cancellation-free form as :func:`exact_nt_xent`."""
    uq, uk = F.normalize(q.double(), dim=1), F.normalize(k.double(), dim=1)
    if queue is None:
        logits = uq @ uk.T / temperature
        s_pos = logits.diagonal()
        neg = logits.masked_fill(torch.eye(q.shape[0], dtype=torch.bool), float("-inf"))
    else:
        s_pos = (uq * uk).sum(1) / temperature
        neg = uq @ F.normalize(queue.double(), dim=1).T / temperature
    x = torch.logsumexp(neg, dim=1) - s_pos
    return torch.logaddexp(torch.zeros_like(x), x).mean()


def row_rel_err(got: torch.Tensor, exact: torch.Tensor, floor: float) -> torch.Tensor:
    """Per input row: ||got - exact|| / max(||exact||, floor)."""
    return (got.double() - exact).norm(dim=1) / exact.norm(dim=1).clamp_min(floor)


# fp32 cannot hold a probability below ~1e-38 (and the kernels flush at e^-87), so a row
# whose gradient is below this floor times 1 / (rows T) is measured against the floor.
GRAD_FLOOR = 1e-30


def hard_views(gen, kind: str, n: int, d: int) -> torch.Tensor:
    """(2n, d) fp64 two views of a hard kind:
    * confident: each positive the anchor plus 1% noise (cosine ~1 - 5e-5), negatives
      random (cosines ~ +-0.5 in d = 32): at T = 0.05 the losses are ~e^-10, at 0.01 ~e^-50;
    * correlated: positive = anchor + 30% noise, as in training;
    * identical: every row the same vector plus 1e-3 noise (all logits within ~1e-5 / T).
    """
    if kind == "identical":
        return randn(gen, 1, d) + 1e-3 * randn(gen, 2 * n, d)
    x = randn(gen, n, d)
    noise = 0.01 if kind == "confident" else 0.3
    return torch.cat([x, x + noise * randn(gen, n, d)])


def plain_torch_nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """What a user would write, in z's own dtype: the logits and cross entropy."""
    two_n = z.shape[0]
    u = F.normalize(z, dim=1)
    logits = (u @ u.T / temperature).masked_fill(torch.eye(two_n, dtype=torch.bool), float("-inf"))
    return F.cross_entropy(logits, (torch.arange(two_n) + two_n // 2) % two_n)


HARD_BACKENDS = [
    b
    for b in ("reference", "cpu", "triton")
    if b in IMPLS and _dispatch.unavailable_reason(b, "cpu") is None
]
# Relative error per row in fp32 (measured: <= 3e-5 on confident and correlated rows, where
# it was 5e-3 .. 4e20 before the fix; ~2.5e-4 on the nearly identical rows, as plain torch,
# where the softmax's deviations from uniform are ~1e-5 / T against logit errors of
# ~eps32 / T).
HARD_RTOL = {"confident": 2e-4, "correlated": 2e-4, "identical": 1e-3}


@pytest.mark.parametrize("backend", HARD_BACKENDS)
@pytest.mark.parametrize("kind", ["confident", "correlated", "identical"])
@pytest.mark.parametrize("temperature", [0.05, 0.01])
def test_hard_rows_fp32_gradient_relative_to_its_own_size(gen, backend, kind, temperature):
    """fp32 NT-Xent and InfoNCE (with and without a queue): every row's gradient within
    HARD_RTOL of the cancellation-free fp64 oracle relative to its own size, and the loss
    within 1e-4 relative (lse - s_pos lost it all for the confident rows at T = 0.01)."""
    n, d = 70, 32
    z = hard_views(gen, kind, n, d).float()
    z64 = z.double().requires_grad_()
    exact = exact_nt_xent(z64, temperature)
    (exact_grad,) = torch.autograd.grad(exact, z64)
    zt = z.clone().requires_grad_()
    loss = nt_xent(zt, temperature, backend=backend)
    (grad,) = torch.autograd.grad(loss, zt)
    err = row_rel_err(grad, exact_grad, GRAD_FLOOR / (2 * n * temperature))
    rtol = HARD_RTOL[kind]
    assert err.max() <= rtol, (err.max(), err.argmax(), exact_grad.norm(dim=1)[err.argmax()])
    assert abs(loss.double() - exact) <= 1e-4 * exact + 1e-300, (loss, exact)

    q, k = z[:n], z[n:]
    queue = hard_views(gen, "correlated", 40, d)[:80].float()
    for negatives in (None, queue):
        q64, k64 = q.double().requires_grad_(), k.double().requires_grad_()
        exact = exact_info_nce(q64, k64, negatives, temperature)
        exact_grads = torch.autograd.grad(exact, (q64, k64))
        qt, kt = q.clone().requires_grad_(), k.clone().requires_grad_()
        loss = info_nce(qt, kt, negatives, temperature, backend=backend)
        grads = torch.autograd.grad(loss, (qt, kt))
        assert abs(loss.double() - exact) <= 1e-4 * exact + 1e-300, (loss, exact)
        for g, e in zip(grads, exact_grads, strict=True):
            err = row_rel_err(g, e, GRAD_FLOOR / (n * temperature))
            assert err.max() <= rtol, (negatives is None, err.max())


@pytest.mark.parametrize("backend", HARD_BACKENDS)
@pytest.mark.parametrize("temperature", [0.05, 0.01])
def test_hard_rows_gathered_columns_fp32(gen, backend, temperature):
    """The distributed path (rows of rank 1 of 3 against every rank's columns, both
    gradients) on confident rows: each gradient row relative to its own size."""
    world, rank, n, d = 3, 1, 20, 32
    m = 2 * n
    cols = torch.cat([hard_views(gen, "confident", n, d) for _ in range(world)]).float()
    rows = cols[rank * m : (rank + 1) * m].clone()
    r64, c64 = rows.double().requires_grad_(), cols.double().requires_grad_()
    exact = exact_gathered_nt_xent(r64, c64, rank * m, temperature)
    exact_grads = torch.autograd.grad(exact, (r64, c64))
    r, c = rows.clone().requires_grad_(), cols.clone().requires_grad_()
    loss, _ = torch.ops.radengine.nt_xent(r, c, rank * m, temperature, True, backend)
    grads = torch.autograd.grad(loss, (r, c))
    assert abs(loss.double() - exact) <= 1e-4 * exact, (loss, exact)
    for g, e in zip(grads, exact_grads, strict=True):
        err = row_rel_err(g, e, GRAD_FLOOR / (m * temperature))
        assert err.max() <= HARD_RTOL["confident"], err.max()


@pytest.mark.parametrize("backend", HARD_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["confident", "correlated", "identical"])
def test_hard_rows_low_precision_at_most_twice_torch(gen, backend, dtype, kind):
    """flash-attention's rule on the hard inputs, row by row relative to each gradient's
    size: the worst and the median row error vs fp64 at most 2x those of plain torch
    computing in the input dtype."""
    n, d, temperature = 70, 32, 0.05
    z = hard_views(gen, kind, n, d).to(dtype)
    z64 = z.double().requires_grad_()
    (exact_grad,) = torch.autograd.grad(exact_nt_xent(z64, temperature), z64)
    zt = z.clone().requires_grad_()
    (grad,) = torch.autograd.grad(nt_xent(zt, temperature, backend=backend), zt)
    zb = z.clone().requires_grad_()
    (base_grad,) = torch.autograd.grad(plain_torch_nt_xent(zb, temperature), zb)
    assert grad.dtype == dtype
    floor = GRAD_FLOOR / (2 * n * temperature)
    err = row_rel_err(grad, exact_grad, floor)
    base_err = row_rel_err(base_grad, exact_grad, floor)
    assert err.max() <= 2 * base_err.max(), (err.max(), base_err.max())
    assert err.median() <= 2 * base_err.median(), (err.median(), base_err.median())


def test_exact_oracles_match_the_plain_ones(gen):
    """The cancellation-free oracles are the same functions as reference_nt_xent and
    reference_info_nce (checked where the latter are accurate)."""
    z = randn(gen, 12, 5).requires_grad_()
    for exact, plain in ((exact_nt_xent(z, 0.3), reference_nt_xent(z, 0.3)),):
        grads = [torch.autograd.grad(f, z)[0] for f in (exact, plain)]
        torch.testing.assert_close(exact, plain, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(*grads, rtol=1e-10, atol=1e-14)
    # A lone rank's gathered columns are its own rows.
    torch.testing.assert_close(
        exact_gathered_nt_xent(z, z, 0, 0.3), reference_nt_xent(z, 0.3), rtol=1e-12, atol=1e-14
    )
    q, k, queue = randn(gen, 6, 5), randn(gen, 6, 5), randn(gen, 4, 5)
    for negatives in (None, queue):
        torch.testing.assert_close(
            exact_info_nce(q, k, negatives, 0.2),
            reference_info_nce(q, k, negatives, 0.2),
            rtol=1e-12,
            atol=1e-14,
        )


@pytest.mark.parametrize("backend", HARD_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_huge_tiny_and_zero_norm_rows(gen, backend, dtype):
    """Rows scaled to norms ~1e30 and 1e25 (fp32 squares overflow above ~1.8e19: the norm
    was inf, the loss a constant and the gradient zero), ~1e-30 and subnormal (below eps:
    divided by eps, as F.normalize does) and a zero row, against fp64 (whose squares
    hold them all); NT-Xent and InfoNCE."""
    n, d, temperature = 6, 8, 0.2
    z = hard_views(gen, "correlated", n, d)
    scales = torch.tensor([1e30, 1e25, 1.0, 1e-30, 1.0, 1e20, 1e-40, 3.0, 1e30, 1.0, 0.0, 1e-20])
    z = (z * scales.double()[:, None]).to(dtype)
    assert torch.isfinite(z).all()
    z64 = z.double().requires_grad_()
    exact = exact_nt_xent(z64, temperature)
    (exact_grad,) = torch.autograd.grad(exact, z64)
    zt = z.clone().requires_grad_()
    loss = nt_xent(zt, temperature, backend=backend)
    (grad,) = torch.autograd.grad(loss, zt)
    assert grad.dtype == dtype
    rtol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: the gradient's own rounding
    torch.testing.assert_close(loss.double(), exact, rtol=1e-6, atol=0)
    err = row_rel_err(grad, exact_grad, 1e-300)  # every row, the zero one's g / eps too
    assert err.max() <= rtol, (err, exact_grad.norm(dim=1))

    q, k = z[:n], z[n:]
    q64, k64 = q.double().requires_grad_(), k.double().requires_grad_()
    exact = exact_info_nce(q64, k64, None, temperature)
    exact_grads = torch.autograd.grad(exact, (q64, k64))
    qt, kt = q.clone().requires_grad_(), k.clone().requires_grad_()
    loss = info_nce(qt, kt, None, temperature, backend=backend)
    grads = torch.autograd.grad(loss, (qt, kt))
    torch.testing.assert_close(loss.double(), exact, rtol=1e-6, atol=0)
    for g, e in zip(grads, exact_grads, strict=True):
        assert row_rel_err(g, e, 1e-300).max() <= rtol


@pytest.mark.parametrize("backend", HARD_BACKENDS)
@pytest.mark.parametrize(
    ("dtype", "scale"), [(torch.float32, 2.0**100), (torch.float64, 2.0**700)], ids=str
)
def test_normalised_loss_is_scale_invariant(gen, backend, dtype, scale):
    """Normalised rows make the loss invariant to scaling z, and the gradient scale by
    1 / scale, also where the squares of the scaled rows overflow (fp32 above ~1.8e19, fp64
    above ~1e154). A power-of-two scale keeps the scaled inputs exact."""
    z = hard_views(gen, "correlated", 20, 16).to(dtype)
    grads = []
    for c in (1.0, scale):
        zt = (z * c).requires_grad_()
        loss = nt_xent(zt, 0.1, backend=backend)
        grads.append(torch.autograd.grad(loss, zt)[0] * c)
        if c == 1.0:
            base = loss
        else:
            torch.testing.assert_close(loss, base, rtol=1e-6, atol=0)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=0)

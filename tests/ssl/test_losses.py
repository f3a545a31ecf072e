"""The SSL losses (radengine.ssl.losses) against independent implementations of the
authors' formulas written here the way the papers' code writes them: values and gradients,
fp32 and bf16 inputs, on random and on hard inputs (near-identical rows, confident
distributions, correlated dimensions). Each gradient is compared with its own scale."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from radengine.ssl.losses import (
    barlow_twins_loss,
    byol_loss,
    dino_loss,
    moco_v3_loss,
    simsiam_loss,
    vicreg_loss,
)

# ----------------------------------------------------------------------------- oracles


def oracle_byol(p, z):
    # BYOL's JAX code: normalise both, 2 - 2 <p, z>
    p, z = F.normalize(p, dim=-1), F.normalize(z, dim=-1)
    return (2 - 2 * (p * z).sum(dim=-1)).mean()


def oracle_simsiam(p, z):
    # SimSiam's Algorithm 1: D(p, z) = -(normalize(p) * normalize(z.detach())).sum(dim=1).mean()
    z = z.detach()
    p, z = F.normalize(p, dim=1), F.normalize(z, dim=1)
    return -(p * z).sum(dim=1).mean()


def _off_diagonal(x):
    # the Barlow Twins authors' helper
    n, _ = x.shape
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def oracle_barlow(z1, z2, lambd):
    bn = torch.nn.BatchNorm1d(z1.shape[1], affine=False).to(z1.dtype)
    bn.train()
    c = bn(z1).T @ bn(z2)
    c = c / z1.shape[0]
    on_diag = torch.diagonal(c).add(-1).pow(2).sum()
    off_diag = _off_diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


def oracle_vicreg(x, y, sim=25.0, std=25.0, cov=1.0):
    # the VICReg authors' forward, one process
    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    n, d = x.shape
    cov_x = (x.T @ x) / (n - 1)
    cov_y = (y.T @ y) / (n - 1)
    cov_loss = _off_diagonal(cov_x).pow_(2).sum().div(d) + _off_diagonal(cov_y).pow_(2).sum().div(d)
    return sim * repr_loss + std * std_loss + cov * cov_loss


def oracle_moco_v3(q, k, T):
    # MoCo v3's contrastive_loss, one process
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1)
    logits = torch.einsum("nc,mc->nm", [q, k]) / T
    labels = torch.arange(logits.shape[0], dtype=torch.long)
    return F.cross_entropy(logits, labels) * (2 * T)


def oracle_dino(student_output, teacher_output, center, student_temp, temp, ncrops):
    # DINOLoss.forward of the authors' code (student and teacher outputs concatenated)
    student_out = student_output / student_temp
    student_out = student_out.chunk(ncrops)
    teacher_out = F.softmax((teacher_output - center) / temp, dim=-1)
    teacher_out = teacher_out.detach().chunk(2)
    total_loss = 0
    n_loss_terms = 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue
            loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
            total_loss += loss.mean()
            n_loss_terms += 1
    return total_loss / n_loss_terms


# ----------------------------------------------------------------------------- inputs


def _pair(gen, n, d, kind):
    """Two (n, d) embeddings: random, near-identical views, or strongly correlated dims."""
    a = torch.randn(n, d, generator=gen, dtype=torch.float64)
    if kind == "random":
        b = torch.randn(n, d, generator=gen, dtype=torch.float64)
    elif kind == "near_identical":
        b = a + 1e-4 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    else:  # correlated dimensions: a low-rank embedding plus a little noise
        basis = torch.randn(3, d, generator=gen, dtype=torch.float64)
        a = torch.randn(n, 3, generator=gen, dtype=torch.float64) @ basis
        b = a + 0.1 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    return a, b


def _check(ours_fn, oracle_fn, inputs, dtype, rtol_loss):
    """Value and every input's gradient against the fp64 oracle on the same (rounded)
    inputs, each gradient's error relative to that gradient's own max magnitude.

    Where the problem itself is ill-conditioned (near-identical rows: the loss is a small
    difference of nearly equal unit vectors), no fp32 evaluation can be accurate to 1e-4; the
    bound is then the error of the authors' formula run in fp32 (times 4), so the check asks
    "as accurate as the reference code in fp32, or within 1e-4 of fp64"."""
    xs = [x.to(dtype).requires_grad_(True) for x in inputs]
    ref_in = [x.detach().double().requires_grad_(True) for x in xs]
    f32_in = [x.detach().float().requires_grad_(True) for x in xs]
    ours = ours_fn(*xs)
    ref = oracle_fn(*ref_in)
    ref32 = oracle_fn(*f32_in)
    assert ours.dtype == torch.float32
    err, err32 = abs(float(ours) - float(ref)), abs(float(ref32) - float(ref))
    assert err <= max(rtol_loss * max(abs(float(ref)), 1e-3), 4 * err32), (float(ours), float(ref))
    ours.backward()
    ref.backward()
    ref32.backward()
    for x, r, r32 in zip(xs, ref_in, f32_in, strict=True):
        if r.grad is None:
            assert x.grad is None or not x.grad.any()
            continue
        assert x.grad.dtype == dtype
        scale = max(float(r.grad.abs().max()), 1e-30)
        err = float((x.grad.double() - r.grad).abs().max())
        err32 = float((r32.grad.double() - r.grad).abs().max())
        # fp32 math on fp32 inputs; bf16 gradients are rounded once to bf16 (2^-8 relative)
        tol = 1e-4 if dtype == torch.float32 else 2**-7
        assert err <= max(tol * scale, 4 * err32 + (0 if dtype == torch.float32 else 2**-8 * scale)), (
            err, err32, scale)  # fmt: skip


DTYPES = [torch.float32, torch.bfloat16]
KINDS = ["random", "near_identical", "correlated"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_byol_and_simsiam(gen, dtype, kind):
    p, z = _pair(gen, 32, 16, kind)
    _check(byol_loss, oracle_byol, (p, z), dtype, 1e-5)
    _check(simsiam_loss, oracle_simsiam, (p, z), dtype, 1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_barlow_twins(gen, dtype, kind):
    z1, z2 = _pair(gen, 64, 24, kind)
    _check(lambda a, b: barlow_twins_loss(a, b, 0.0051),
           lambda a, b: oracle_barlow(a, b, 0.0051), (z1, z2), dtype, 1e-4)  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_vicreg(gen, dtype, kind):
    z1, z2 = _pair(gen, 64, 24, kind)
    _check(vicreg_loss, oracle_vicreg, (z1, z2), dtype, 1e-4)
    _check(lambda a, b: vicreg_loss(a, b, 1.0, 5.0, 0.5),
           lambda a, b: oracle_vicreg(a, b, 1.0, 5.0, 0.5), (z1, z2), dtype, 1e-4)  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T", [1.0, 0.2, 0.02])
def test_moco_v3(gen, dtype, kind, T):
    q, k = _pair(gen, 32, 16, kind)
    # the keys are the momentum encoder's (no gradient): only q's gradient is compared
    _check(lambda a, b: moco_v3_loss(a, b, T), lambda a, b: oracle_moco_v3(a, b.detach(), T),
           (q, k), dtype, 1e-4)  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("confident", [False, True])
def test_dino(gen, dtype, confident):
    n, K, crops = 8, 64, 5
    s = torch.randn(crops * n, K, generator=gen, dtype=torch.float64)
    t = torch.randn(2 * n, K, generator=gen, dtype=torch.float64)
    if confident:  # one prototype dominates every teacher row: a near one-hot target
        t[torch.arange(2 * n), torch.randint(K, (2 * n,), generator=gen)] += 30.0
    center = 0.1 * torch.randn(1, K, generator=gen, dtype=torch.float64)

    def ours(s_, t_):
        return dino_loss(list(s_.chunk(crops)), list(t_.chunk(2)), center.float(), 0.1, 0.04)

    def ref(s_, t_):
        return oracle_dino(s_, t_, center, 0.1, 0.04, crops)

    _check(ours, ref, (s, t), dtype, 1e-4)
    # a 0-dim tensor temperature (the module's buffer) gives the same value
    same = dino_loss(list(s.float().chunk(crops)), list(t.float().chunk(2)), center.float(), 0.1,
                     torch.tensor(0.04))  # fmt: skip
    assert torch.allclose(same, ours(s.float(), t.float()))


# ----------------------------------------------------------------------------- 2 ranks


def _rank_losses(rank: int, world: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        torch.save(_losses_and_grads(rank, world), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _inputs():
    g = torch.Generator().manual_seed(0)
    n, d = 16, 12
    z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    return z1, 0.7 * z1 + 0.5 * z2


def _losses_and_grads(rank: int, world: int) -> dict:
    """Each loss on this rank's rows of the batch of _inputs(): value and d/d(rows)."""
    z1, z2 = _inputs()
    n = z1.shape[0] // world
    rows = slice(rank * n, (rank + 1) * n)
    out = {}
    fns = {
        "barlow": lambda a, b: barlow_twins_loss(a, b, 0.0051),
        "vicreg": vicreg_loss,
        "moco_v3": lambda a, b: moco_v3_loss(a, b, 0.2),
    }
    for name, fn in fns.items():
        a = z1[rows].clone().requires_grad_(True)
        b = z2[rows].clone().requires_grad_(True)
        loss = fn(a, b)
        loss.backward()
        out[name] = (float(loss), a.grad, b.grad)
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_give_the_global_loss_and_its_gradient(tmp_path):
    """On W ranks the mean of the rank losses is the single-process loss of the global batch
    and each rank's gradient is W times the single-process gradient of its rows (DDP's
    average divides W out): the gathered / all-reduced statistics are exactly global."""
    world = 2
    torch.multiprocessing.spawn(_rank_losses, args=(world, _free_port(), str(tmp_path)),
                                nprocs=world)  # fmt: skip
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    one = _losses_and_grads(0, 1)
    for name, (loss, ga, gb) in one.items():
        mean = sum(r[name][0] for r in ranks) / world
        assert mean == pytest.approx(loss, rel=1e-6), name
        for i, g in ((1, ga), (2, gb)):
            if g is None:  # MoCo v3's keys take no gradient
                assert all(r[name][i] is None for r in ranks)
                continue
            got = torch.cat([r[name][i] for r in ranks]) / world
            err = float((got - g).abs().max())
            assert err <= 1e-5 * float(g.abs().max()), (name, i, err)

"""The SSL losses as pure functions of embeddings, and the collectives they need.

Each takes this rank's rows and returns this rank's loss, chosen so that the mean of the
rank losses is the single-process loss on the global batch and DDP's gradient average gives
its gradient (:mod:`radengine.ssl.base`). Where a loss needs global statistics the rows or
sums are gathered with a gradient (:func:`all_reduce_sum`, ``all_gather_with_grad``): the
backward of such a collective sums the gradients of every rank's loss, so each rank holds
the gradient of the SUM of the rank losses, and DDP's average divides the extra factor out.
Without torch.distributed (or with one rank) every collective is the identity.

The contrastive ones with a kernel behind them (NT-Xent, InfoNCE against a queue) are
``radengine.ops.nt_xent`` / ``info_nce``; the ones here are a few matrix products each, and
measured against the backbone they cost a few percent of a step (docs/benchmarks.md), so
they stay plain torch. Every loss computes in fp32 (autocast's bf16 embeddings are cast up
first), as the authors' code does under mixed precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from radengine.ops.contrastive_loss import all_gather_with_grad

__all__ = [
    "all_gather",
    "all_reduce_sum",
    "barlow_twins_loss",
    "byol_loss",
    "dino_loss",
    "moco_v3_loss",
    "rank_and_world",
    "simsiam_loss",
    "vicreg_loss",
]


# ----------------------------------------------------------------------------- collectives


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        g = grad.clone()
        dist.all_reduce(g)
        return g


def all_reduce_sum(x: Tensor) -> Tensor:
    """The sum of ``x`` over ranks, on every rank, with a gradient (backward: the sum of
    the ranks' gradients). The identity on one process."""
    if rank_and_world()[1] == 1:
        return x
    return _AllReduceSum.apply(x)


@torch.no_grad()
def all_gather(x: Tensor) -> Tensor:
    """(n, ...) on each rank -> (W n, ...) in rank order, no gradient (momentum keys)."""
    _, world = rank_and_world()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def _gather_rows(x: Tensor) -> Tensor:
    return x if rank_and_world()[1] == 1 else all_gather_with_grad(x)


# ----------------------------------------------------------------------------- losses


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's regression loss (Grill et al. 2020, eq. 2): ``2 - 2 cos(p_i, z_i)``, mean
    over rows.

    Args:
        p: (N, D) online predictions.
        z: (N, D) target projections (the caller detaches them: the target is the EMA
            network's).
    Returns:
        () mean over the N rows; in [0, 4].
    """
    return (2 - 2 * F.cosine_similarity(p.float(), z.float(), dim=-1)).mean()


def simsiam_loss(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's D(p, z) (Chen & He 2021, eq. 1): the negative cosine similarity with a
    stop-gradient on z, mean over rows.

    Args:
        p: (N, D) predictions of one view.
        z: (N, D) projections of the other view (detached here: the stop-gradient).
    Returns:
        () mean over the N rows; in [-1, 1].
    """
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1).mean()


def _standardize(z: Tensor, n_global: int, eps: float = 1e-5) -> Tensor:
    """Per dimension, over the global batch: (z - mean) / sqrt(biased var + eps), as
    ``BatchNorm1d(affine=False)`` in training mode (SyncBatchNorm across ranks)."""
    mean = all_reduce_sum(z.sum(0)) / n_global
    var = all_reduce_sum(((z - mean) ** 2).sum(0)) / n_global
    return (z - mean) / torch.sqrt(var + eps)


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambd: float = 0.0051) -> Tensor:
    """Barlow Twins (Zbontar et al. 2021, eq. 1) over the global batch.

    With each embedding dimension standardised over the global batch of N rows
    (``BatchNorm1d(affine=False)``), the cross-correlation ``C = z1n^T z2n / N`` (D x D) and

        loss = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2

    On W ranks each computes its rows' share of C and the shares are summed
    (:func:`all_reduce_sum`), so every rank's loss is the global loss.

    Args:
        z1, z2: (n, D) this rank's projections of the two views.
        lambd: weight of the redundancy-reduction term (5e-3 in the paper, 0.0051 in the
            authors' code).
    Returns:
        () the global loss (the same on every rank).
    """
    z1, z2 = z1.float(), z2.float()
    n_global = z1.shape[0] * rank_and_world()[1]
    c = all_reduce_sum(_standardize(z1, n_global).T @ _standardize(z2, n_global)) / n_global
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


def _off_diagonal_sq_sum(m: Tensor) -> Tensor:
    return m.pow(2).sum() - torch.diagonal(m).pow(2).sum()


def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
) -> Tensor:
    """VICReg (Bardes et al. 2022, eqs. 1-6): invariance + variance + covariance.

    ``invariance = mean_i ||z1_i - z2_i||^2 / D`` (mean squared error) over this rank's rows;
    over the global batch of N rows (gathered from every rank with a gradient), per view z,
    centred: ``variance = mean_d relu(1 - sqrt(Var_d(z) + eps))`` (unbiased variance) and
    ``covariance = sum_{i != j} Cov(z)_ij^2 / D`` with ``Cov = z^T z / (N - 1)``; each of
    the two averaged over the views:

        loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance

    Args:
        z1, z2: (n, D) this rank's expander outputs of the two views.
        sim_coeff, std_coeff, cov_coeff: the paper's lambda, mu, nu (25, 25, 1).
        eps: inside the square root of the variance (1e-4).
    Returns:
        () this rank's loss; the mean over ranks is the global loss.
    """
    z1, z2 = z1.float(), z2.float()
    invariance = F.mse_loss(z1, z2)
    g1, g2 = _gather_rows(z1), _gather_rows(z2)
    n, d = g1.shape
    g1, g2 = g1 - g1.mean(0), g2 - g2.mean(0)
    std1 = torch.sqrt(g1.var(0) + eps)
    std2 = torch.sqrt(g2.var(0) + eps)
    variance = (F.relu(1 - std1).mean() + F.relu(1 - std2).mean()) / 2
    cov1, cov2 = g1.T @ g1 / (n - 1), g2.T @ g2 / (n - 1)
    covariance = (_off_diagonal_sq_sum(cov1) + _off_diagonal_sq_sum(cov2)) / d
    return sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance


def moco_v3_loss(q: Tensor, k: Tensor, temperature: float = 0.2) -> Tensor:
    """MoCo v3's contrastive loss (Chen, Xie & He 2021, Algorithm 1): InfoNCE of each query
    against the momentum keys of the whole global batch, scaled by ``2 T``.

    Each rank's queries meet every rank's keys (gathered, no gradient: they come from the
    momentum encoder); the positive of local query i is the key of the same image, at row
    ``rank * n + i`` of the gathered keys.

    Args:
        q: (n, D) this rank's predictor outputs of one view.
        k: (n, D) this rank's momentum-encoder projections of the other view.
        temperature: T (0.2 for ViT in the paper; 1.0 for ResNet-50 in its code).
    Returns:
        () the mean over this rank's queries; the mean over ranks is the global loss.
    """
    q = F.normalize(q.float(), dim=1)
    keys = F.normalize(all_gather(k.detach().float()), dim=1)
    rank, _ = rank_and_world()
    logits = q @ keys.T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + rank * q.shape[0]
    return F.cross_entropy(logits, labels) * (2 * temperature)


def dino_loss(
    student: Sequence[Tensor],
    teacher: Sequence[Tensor],
    center: Tensor,
    student_temp: float,
    teacher_temp: float | Tensor,
) -> Tensor:
    """DINO's cross-entropy between teacher and student distributions (Caron et al. 2021,
    eq. 3 and Algorithm 1).

    The teacher's output of each global view is centred and sharpened,
    ``P_t = softmax((t - center) / teacher_temp)``; each student view gives
    ``log P_s = log_softmax(s / student_temp)``. The loss is ``-sum_k P_t,k log P_s,k``
    averaged over the rows and over every (teacher view, student view) pair of different
    views (student view v and teacher view v are the same crop when v < 2).

    Args:
        student: V tensors (n, K): the student head's outputs, global views first.
        teacher: 2 tensors (n, K): the teacher head's outputs of the global views (a
            target: no gradient flows into them).
        center: (K,) or (1, K) the running center of the teacher outputs.
        student_temp: tau_s (0.1).
        teacher_temp: tau_t (0.04 to 0.07 after warm-up); a float or a 0-dim tensor.
    Returns:
        () the mean over this rank's rows and the pairs.
    """
    targets = [F.softmax((t.detach().float() - center) / teacher_temp, dim=-1) for t in teacher]
    logs = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student]
    total, pairs = 0.0, 0
    for iq, q in enumerate(targets):
        for v, log_p in enumerate(logs):
            if v == iq:
                continue
            total = total + torch.sum(-q * log_p, dim=-1).mean()
            pairs += 1
    return total / pairs

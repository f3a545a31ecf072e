"""contrastive_loss: NT-Xent (SimCLR) and InfoNCE (MoCo) with an analytic backward.

NT-Xent. Two views of N images give embeddings z (2N, D); row i and row i+N are the
positive pair. With u = z / ||z|| (cosine similarity; skipped when ``normalize=False``)
and temperature T, for every row i::

    s_ic = u_i . u_c / T
    l_i  = -s_{i,p(i)} + log sum_{c != i} exp(s_ic),   p(i) = (i + N) mod 2N
    loss = mean_i l_i

InfoNCE. Queries q (N, D), positive keys k (N, D) and a queue of negatives (K, D)::

    with a queue:    logits_i = [u_qi . u_ki, u_qi . u_queue_1, ..., u_qi . u_queue_K] / T
    queue is None:   logits_i = [u_qi . u_k1, ..., u_qi . u_kN] / T  (in-batch negatives)
    loss = mean_i (logsumexp(logits_i) - logits_i[positive])

The queue is a constant: no gradient flows into it.

Distributed NT-Xent (``gather=True`` and torch.distributed initialised with world size W).
Each rank holds its own 2n rows ``[z1_r; z2_r]`` (view 1 then view 2 of its n images, so
row j's positive is row (j + n) mod 2n on the same rank) and computes its rows against the
columns of ALL ranks, gathered with :class:`_AllGatherWithGrad`. Rank r's loss is the mean
over its own 2n rows, so with equal n on every rank:

* the global loss, the single-process loss on the global batch of 2Wn rows, is the mean of
  the rank losses (``all_reduce(loss) / W``, for logging);
* the gather's backward sums the column gradients of every rank (all_reduce) and keeps the
  local slice, so ``z.grad`` on rank r is the gradient of ``sum_r loss_r = W * global loss``
  with respect to rank r's rows: W times the single-process gradient of those rows;
* DDP averages parameter gradients over ranks, dividing that W out again: the parameters
  get exactly the single-process gradient of the global loss. Do not rescale the loss.

The global batch equivalent to W ranks is ``z = [z1_0; ...; z1_{W-1}; z2_0; ...; z2_{W-1}]``:
each row's loss depends only on its positive and on the set of all columns, not on their
order, so the rank-major column order of the gather changes nothing.

Numerics, in every backend: each row's log-sum-exp is taken over its negatives alone and
combined with the positive logit in a form that does not cancel (see ``_finish_rows``): the
loss and the positive's gradient p - 1 of a confident row (a tiny loss, at low temperature)
keep their relative accuracy instead of being lost to the rounding of lse, and the rows are
scaled by a power of two before their norms are taken, so that norms beyond the fp32 range
of the squares (~1.8e19) still normalise (``_row_norms``).

Backends: ``reference`` (plain torch below: the N x N logits and an analytic backward that
uses the saved per-row statistics, as a tiled kernel would), ``triton``
(kernels/contrastive_loss.py: flash-attention-style tiles with an online log-sum-exp, the
logits never stored; the backward recomputes them from the saved log-sum-exp) and ``cpu``
(csrc/cpu/contrastive_loss.cpp, C++/OpenMP: 128 x 128 tiles from AVX-512 micro-kernels on
packed panels, the logits never stored; single-process NT-Xent uses s_ic = s_ci and
computes only the tiles on and above the diagonal, each tile feeding the log-sum-exp and
the gradient of both its row block and its column block, about 2 (2N)^2 D multiply-adds
for forward + backward; memory O(N D); deterministic and independent of the thread
count). In triton and cpu the L2 normalisation and its backward stay in torch. Default:
``triton`` for CUDA tensors, ``cpu`` for CPU tensors (``reference`` where radengine._cpu
is not built; triton runs on CPU tensors only when forced under TRITON_INTERPRET=1, for
tests). Every backend computes in fp32 (fp64 for fp64 inputs, which cpu runs in portable
C++ rather than its AVX-512 kernels; triton's matmuls in IEEE fp32, never TF32) and
returns the loss in that precision; gradients come in the input's dtype (float16 and
bfloat16 inputs are converted to fp32 for the kernels, O(N D)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from radengine import _native
from radengine.ops import _dispatch

__all__ = [
    "IMPLS",
    "ContrastiveBackend",
    "all_gather_with_grad",
    "info_nce",
    "nt_xent",
    "reference_info_nce",
    "reference_nt_xent",
]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
NORM_EPS = 1e-12  # as torch.nn.functional.normalize


# ----------------------------------------------------------------------------- public API


def nt_xent(
    z: Tensor,
    temperature: float = 0.5,
    *,
    normalize: bool = True,
    gather: bool = True,
    group: dist.ProcessGroup | None = None,
    backend: str | None = None,
) -> Tensor:
    """SimCLR's NT-Xent loss over two views, positives at rows i <-> i + N.

    Args:
        z: (2N, D) embeddings, view 1 in rows [0, N), view 2 in rows [N, 2N); float32,
            float16, bfloat16 or float64; N >= 1, D >= 1.
        temperature: T > 0 (study A: 0.5).
        normalize: L2-normalise the rows first (cosine similarity); False uses the raw dot
            products.
        gather: when torch.distributed is initialised with more than one rank, take the
            negatives from every rank's ``z`` (the correct SimCLR; see the module docstring
            for the row layout each rank must hold and how the losses combine). Every rank
            must pass the same 2N. False, or a single process: local negatives only.
        group: the process group to gather over (default: the world).
        backend: force ``reference``, ``cpu`` or ``triton`` (else RADENGINE_BACKEND, else the
            fastest available for the device: triton on CUDA, cpu on CPU).

    Returns:
        () the mean loss over this rank's 2N rows; float32 (float64 for float64 ``z``).
        Differentiable with respect to ``z``.

    Raises:
        ValueError: naming the argument: not a floating tensor, not 2-D, an odd or zero row
            count, D = 0, or temperature <= 0.
    """
    _check_embeddings(z, "z")
    if z.shape[0] % 2 or z.shape[0] == 0:
        raise ValueError(
            f"z must hold two views, shape (2N, D) with N >= 1, but has {z.shape[0]} rows"
        )
    temperature = _check_temperature(temperature)
    backend_name = _dispatch.requested_backend(backend) or ""
    cols, offset = None, 0
    if gather and _world_size(group) > 1:
        cols = all_gather_with_grad(z, group)
        offset = dist.get_rank(group) * z.shape[0]
    loss, _ = torch.ops.radengine.nt_xent(z, cols, offset, temperature, normalize, backend_name)
    return loss


def info_nce(
    q: Tensor,
    k: Tensor,
    queue: Tensor | None = None,
    temperature: float = 0.07,
    *,
    normalize: bool = True,
    backend: str | None = None,
) -> Tensor:
    """MoCo's InfoNCE: each query against its key (positive) and the queue (negatives).

    Args:
        q: (N, D) queries; float32, float16, bfloat16 or float64; N >= 1, D >= 1.
        k: (N, D) positive keys, same dtype and device (usually from the momentum encoder
            and detached by the caller; the loss is differentiable with respect to both).
        queue: (K, D) negatives, K >= 0, treated as a constant (no gradient). None: the
            other keys of the batch are the negatives (MoCo v3).
        temperature: T > 0 (MoCo: 0.07; MoCo v2: 0.2).
        normalize: L2-normalise q, k and the queue first.
        backend: force ``reference``, ``cpu`` or ``triton`` (else RADENGINE_BACKEND, else the
            fastest available for the device: triton on CUDA, cpu on CPU).

    Returns:
        () the mean loss over the N queries; float32 (float64 for float64 inputs).

    Raises:
        ValueError: naming the argument: dtype, rank, mismatched shapes, D or devices, or
            temperature <= 0.
    """
    _check_embeddings(q, "q")
    _check_embeddings(k, "k")
    if q.shape[0] == 0:
        raise ValueError("q must have at least one row, got shape (0, D)")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    _check_same(k, q, "k")
    if queue is not None:
        _check_embeddings(queue, "queue")
        if queue.shape[1] != q.shape[1]:
            raise ValueError(
                f"queue must have D = {q.shape[1]} columns like q, got shape {tuple(queue.shape)}"
            )
        _check_same(queue, q, "queue")
        queue = queue.detach()
    temperature = _check_temperature(temperature)
    backend_name = _dispatch.requested_backend(backend) or ""
    loss, _ = torch.ops.radengine.info_nce(q, k, queue, temperature, normalize, backend_name)
    return loss


def reference_nt_xent(z: Tensor, temperature: float = 0.5, normalize: bool = True) -> Tensor:
    """The oracle, in plain torch as SSL libraries write it: the (2N, 2N) logits with the
    diagonal masked, then cross entropy against the positive column. Single process, local
    rows only; differentiable through torch autograd. Computes in fp32 (fp64 for fp64)."""
    z = z.to(_acc_dtype(z.dtype))
    if normalize:
        z = F.normalize(z, dim=1)
    two_n = z.shape[0]
    logits = z @ z.T / temperature
    self_mask = torch.eye(two_n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    positives = (torch.arange(two_n, device=z.device) + two_n // 2) % two_n
    return F.cross_entropy(logits, positives)


def reference_info_nce(
    q: Tensor,
    k: Tensor,
    queue: Tensor | None = None,
    temperature: float = 0.07,
    normalize: bool = True,
) -> Tensor:
    """The oracle, as in the MoCo paper's pseudocode: logits [l_pos, l_neg] and cross entropy
    with label 0 (or, without a queue, q @ k.T with the diagonal as labels). Differentiable
    through torch autograd; the queue is detached. Computes in fp32 (fp64 for fp64)."""
    acc = _acc_dtype(q.dtype)
    q, k = q.to(acc), k.to(acc)
    if normalize:
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    if queue is None:
        logits = q @ k.T / temperature
        labels = torch.arange(q.shape[0], device=q.device)
    else:
        neg = queue.detach().to(acc)
        if normalize:
            neg = F.normalize(neg, dim=1)
        l_pos = (q * k).sum(dim=1, keepdim=True)
        l_neg = q @ neg.T
        logits = torch.cat([l_pos, l_neg], dim=1) / temperature
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels)


# ------------------------------------------------------------------------- distributed


class _AllGatherWithGrad(torch.autograd.Function):
    """(m, D) on each of W ranks -> (W*m, D) rank-major on every rank, with a gradient.

    Every rank's loss depends on every rank's rows through the gathered columns, so the
    gradient of the sum of the rank losses with respect to rank r's rows is the sum over
    ranks of each one's gradient for the slice r of its gathered tensor: an all_reduce(sum)
    of the incoming gradients, then the local slice. (A reduce_scatter does the same with
    half the traffic where the backend has it; gloo does not.)
    """

    @staticmethod
    def forward(ctx, x: Tensor, group: dist.ProcessGroup | None) -> Tensor:
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        ctx.rows = x.shape[0]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x, group=group)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows], None


def all_gather_with_grad(x: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Gather (m, D) from every rank into (W*m, D), rank-major, differentiably.

    Every rank must pass the same shape. The gradient each rank receives for ``x`` is the
    sum over ranks of the gradients flowing into its slice of the gathered tensor.
    """
    if _world_size(group) <= 1:
        return x
    return _AllGatherWithGrad.apply(x, group)


def _world_size(group: dist.ProcessGroup | None) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


# ------------------------------------------------------------------------------ checks


def _check_embeddings(x: object, name: str) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{name} must be a floating tensor (float32, float16, bfloat16 or float64), "
            f"got {x.dtype}"
        )
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows, D), got shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have D >= 1 columns, got shape {tuple(x.shape)}")


def _check_same(x: Tensor, ref: Tensor, name: str) -> None:
    if x.dtype != ref.dtype:
        raise ValueError(f"{name} must have the dtype of q ({ref.dtype}), got {x.dtype}")
    if x.device != ref.device:
        raise ValueError(f"{name} must be on the device of q ({ref.device}), got {x.device}")


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be > 0 and finite, got {temperature}")
    return float(temperature)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ------------------------------------------------------------- shared numerics (all backends)
# Row statistics. Each row's log-sum-exp is split into its positive logit s_pos and the
# log-sum-exp of the other (negative) columns, lse_neg, accumulated with the positive left
# out. With x = lse_neg - s_pos:
#
#     row loss    = lse - s_pos        = softplus(x)   = max(x, 0) + log1p(exp(-|x|))
#     log(1 - p)  = lse_neg - lse      = x - softplus(x) = min(x, 0) - log1p(exp(-|x|))
#     lse         = s_pos + softplus(x)
#
# where p = exp(s_pos - lse) is the positive's softmax probability. Forming the loss as
# lse - s_pos, or the positive's gradient p - 1 as exp(s_pos - lse) - 1, cancels
# catastrophically when the positive dominates (a confident row at low temperature: lse
# rounded to fp32 carries an absolute error of ~eps |lse|, against a true loss or 1 - p of
# e.g. 1e-5): relative errors up to 1 and beyond. The forms above have none, and the
# backward takes p - 1 = -(sum of the negatives' probabilities) = -exp(log(1 - p)) from the
# saved statistic. The forward therefore saves (2, M) statistics ``[lse; log(1 - p)]``.


def _softplus_parts(x: Tensor) -> tuple[Tensor, Tensor]:
    """(softplus(x), x - softplus(x)) without cancellation or overflow, exact for x = -inf
    (a row without negatives: loss 0, log(1 - p) = -inf). torch's F.softplus switches to
    the identity above a threshold, an absolute error of up to 2e-9 that fp64 would see."""
    tail = torch.log1p(torch.exp(-x.abs()))
    return x.clamp_min(0) + tail, x.clamp_max(0) - tail


def _finish_rows(s_pos: Tensor, lse_neg: Tensor) -> tuple[Tensor, Tensor]:
    """Row losses (M,) and the saved statistics (2, M) [lse; log(1 - p_pos)] from each row's
    positive logit and the log-sum-exp of its negatives."""
    loss, log_q = _softplus_parts(lse_neg - s_pos)
    return loss, torch.stack([s_pos + loss, log_q])


# Row normalisation, shared by every backend. The squares in ||x|| overflow fp32 for norms
# above ~1.8e19 (||x|| became inf, u = 0: a constant loss log(C) and zero gradients, with
# no error) and flush to zero for tiny ones; so each row is first divided by a power of two
# s <= max |x| (exact), which brings its largest entry into [1, 2): ||x|| = s ||x / s||.
# Rows with ||x|| <= eps are divided by eps instead, as torch.nn.functional.normalize does.

_EXPONENT_BITS = {
    torch.float32: (torch.int32, 0x7F800000),
    torch.float64: (torch.int64, 0x7FF0000000000000),
}


@dataclass(frozen=True)
class _RowNorms:
    """u = (x / scale) / denom: ``scale`` (M, 1) the power of two, ``denom`` (M, 1)
    ||x / scale|| (or eps / scale where ||x|| <= eps), ``unit`` (M, 1) whether ||x|| > eps."""

    scale: Tensor
    denom: Tensor
    unit: Tensor


def _row_norms(x: Tensor) -> tuple[Tensor, _RowNorms]:
    """x / scale (a fresh (M, D) tensor) and the row norms of x (accumulation dtype)."""
    int_dtype, mask = _EXPONENT_BITS[x.dtype]
    # max |x| from two reductions: no (M, D) temporary for |x| (this runs on every call).
    top = torch.maximum(x.amax(dim=1, keepdim=True), -x.amin(dim=1, keepdim=True))
    # The exponent bits alone: the largest power of two <= max |x|; 0 for a zero or
    # subnormal row, whose norm is far below eps, so any scale (1) serves there.
    scale = (top.view(int_dtype) & mask).view(x.dtype)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    scaled = x / scale
    norm = torch.linalg.vector_norm(scaled, dim=1, keepdim=True)
    unit = norm * scale > NORM_EPS  # may be inf: still > eps
    # eps / scale underflows only on rows with a huge scale, which take the other branch.
    denom = torch.where(unit, norm, NORM_EPS / scale)
    return scaled, _RowNorms(scale, denom, unit)


def _unit(x: Tensor, normalize: bool) -> tuple[Tensor, _RowNorms | None]:
    """x / max(||x||, eps) in the accumulation dtype, contiguous, and the norms its backward
    needs (None without normalisation: x itself)."""
    x = x.to(_acc_dtype(x.dtype))
    if not normalize:
        return x.contiguous(), None
    scaled, norms = _row_norms(x)
    return scaled.div_(norms.denom).contiguous(), norms


def _normalize_fwd(x: Tensor, normalize: bool) -> Tensor:
    return _unit(x, normalize)[0]


def _normalize_bwd_into(u: Tensor, norms: _RowNorms | None, grad_u: Tensor) -> Tensor:
    """The gradient through u = x / max(||x||, eps), in place: ``grad_u`` (the loss's
    gradient for u, a fresh buffer) becomes (g - u (u . g)) / ||x|| (or g / eps where
    ||x|| <= eps) and ``u`` (no longer needed) is the scratch, so a backend's memory stays at
    a few (M, D) buffers. The division goes by ||x / s|| then by the power of two s, so that
    it neither overflows nor underflows where ||x|| itself would."""
    if norms is None:
        return grad_u
    dot = torch.bmm(u.unsqueeze(1), grad_u.unsqueeze(2)).squeeze(2)  # (M, 1): u . g
    dot = torch.where(norms.unit, dot, torch.zeros_like(dot))  # no projection below eps
    return grad_u.sub_(u.mul_(dot)).div_(norms.denom).div_(norms.scale)


def _normalize_bwd(x: Tensor, grad_u: Tensor, normalize: bool) -> Tensor:
    """Gradient through u = x / max(||x||, eps): (g - u (u . g)) / ||x||, or g / eps."""
    if not normalize:
        return grad_u
    u, norms = _unit(x.to(grad_u.dtype), normalize)
    return _normalize_bwd_into(u, norms, grad_u.clone())


# ------------------------------------------------------------------ reference backend


def _nt_xent_logits(
    u_rows: Tensor, u_cols: Tensor, offset: int, temperature: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(M, C) logits with each row's own column at -inf, and the (M,) self/positive columns."""
    m = u_rows.shape[0]
    j = torch.arange(m, device=u_rows.device)
    self_col = offset + j
    pos_col = offset + (j + m // 2) % m
    logits = (u_rows @ u_cols.T) / temperature
    logits[j, self_col] = float("-inf")
    return logits, self_col, pos_col


def _rows_from_logits(logits: Tensor, pos_col: Tensor) -> tuple[Tensor, Tensor]:
    """Row losses and statistics (see :func:`_finish_rows`) of (M, C) logits whose row i has
    its positive at column pos_col[i]."""
    j = torch.arange(logits.shape[0], device=logits.device)
    s_pos = logits[j, pos_col]
    negatives = logits.clone()
    negatives[j, pos_col] = float("-inf")
    return _finish_rows(s_pos, torch.logsumexp(negatives, dim=1))


def _dlogits(logits: Tensor, pos_col: Tensor, stats: Tensor, scale: Tensor) -> Tensor:
    """scale * (P - Y): P = exp(s - lse) (0 on masked columns), and at the positive
    p - 1 = -exp(log(1 - p)) from the saved statistic (not exp(s - lse) - 1, which cancels)."""
    dlogits = torch.exp(logits - stats[0][:, None])
    j = torch.arange(logits.shape[0], device=logits.device)
    dlogits[j, pos_col] = -torch.exp(stats[1])
    return dlogits.mul_(scale)


def _nt_xent_fwd_reference(
    rows: Tensor, cols: Tensor | None, offset: int, temperature: float, normalize: bool
) -> tuple[Tensor, Tensor]:
    """Loss () and the per-row statistics (2, M) that the backward reuses."""
    u_rows = _normalize_fwd(rows, normalize)
    u_cols = u_rows if cols is None else _normalize_fwd(cols, normalize)
    logits, _, pos_col = _nt_xent_logits(u_rows, u_cols, offset, temperature)
    row_loss, stats = _rows_from_logits(logits, pos_col)
    return row_loss.mean(), stats


def _nt_xent_bwd_reference(
    grad: Tensor,
    rows: Tensor,
    cols: Tensor | None,
    offset: int,
    temperature: float,
    normalize: bool,
    stats: Tensor,
) -> tuple[Tensor, Tensor | None]:
    """dloss/drows (M, D) and dloss/dcols (C, D) (None when cols is None: then the column
    term is already added into the rows' gradient). With P = softmax of the masked logits
    and Y the positive one-hot: dlogits = grad * (P - Y) / M."""
    m = rows.shape[0]
    u_rows = _normalize_fwd(rows, normalize)
    u_cols = u_rows if cols is None else _normalize_fwd(cols, normalize)
    logits, _, pos_col = _nt_xent_logits(u_rows, u_cols, offset, temperature)
    # Also d(s)/d(u.u) = 1/T.
    dlogits = _dlogits(logits, pos_col, stats, grad.to(logits.dtype) / (m * temperature))
    grad_u_rows = dlogits @ u_cols
    grad_u_cols = dlogits.T @ u_rows
    if cols is None:
        grad_rows = _normalize_bwd(rows, grad_u_rows + grad_u_cols, normalize)
        return grad_rows.to(rows.dtype), None
    grad_rows = _normalize_bwd(rows, grad_u_rows, normalize)
    grad_cols = _normalize_bwd(cols, grad_u_cols, normalize)
    return grad_rows.to(rows.dtype), grad_cols.to(cols.dtype)


def _info_nce_logits(
    u_q: Tensor, u_k: Tensor, u_queue: Tensor | None, temperature: float
) -> tuple[Tensor, Tensor]:
    n = u_q.shape[0]
    if u_queue is None:
        return (u_q @ u_k.T) / temperature, torch.arange(n, device=u_q.device)
    l_pos = (u_q * u_k).sum(dim=1, keepdim=True)
    logits = torch.cat([l_pos, u_q @ u_queue.T], dim=1) / temperature
    return logits, torch.zeros(n, dtype=torch.long, device=u_q.device)


def _info_nce_fwd_reference(
    q: Tensor, k: Tensor, queue: Tensor | None, temperature: float, normalize: bool
) -> tuple[Tensor, Tensor]:
    u_q, u_k = _normalize_fwd(q, normalize), _normalize_fwd(k, normalize)
    u_queue = None if queue is None else _normalize_fwd(queue, normalize)
    logits, pos = _info_nce_logits(u_q, u_k, u_queue, temperature)
    row_loss, stats = _rows_from_logits(logits, pos)
    return row_loss.mean(), stats


def _info_nce_bwd_reference(
    grad: Tensor,
    q: Tensor,
    k: Tensor,
    queue: Tensor | None,
    temperature: float,
    normalize: bool,
    stats: Tensor,
) -> tuple[Tensor, Tensor]:
    n = q.shape[0]
    u_q, u_k = _normalize_fwd(q, normalize), _normalize_fwd(k, normalize)
    u_queue = None if queue is None else _normalize_fwd(queue, normalize)
    logits, pos = _info_nce_logits(u_q, u_k, u_queue, temperature)
    dlogits = _dlogits(logits, pos, stats, grad.to(logits.dtype) / (n * temperature))
    if u_queue is None:
        grad_u_q = dlogits @ u_k
        grad_u_k = dlogits.T @ u_q
    else:
        d_pos = dlogits[:, :1]
        grad_u_q = d_pos * u_k + dlogits[:, 1:] @ u_queue
        grad_u_k = d_pos * u_q
    grad_q = _normalize_bwd(q, grad_u_q, normalize).to(q.dtype)
    grad_k = _normalize_bwd(k, grad_u_k, normalize).to(k.dtype)
    return grad_q, grad_k


def _positive_outside_cols(
    grad: Tensor, u_q: Tensor, u_k: Tensor, stats: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """InfoNCE with a queue, the positive logit's share of the gradients for u_q and u_k
    (it is no column of the kernels): d l_pos = (p - 1) grad / (N T), p - 1 = -exp(log(1 - p))."""
    d_pos = -torch.exp(stats[1].to(u_q.dtype))[:, None] * (
        grad.to(u_q.dtype) / (u_q.shape[0] * temperature)
    )
    return d_pos * u_k, d_pos * u_q


# --------------------------------------------------------------------- triton backend
# kernels/contrastive_loss.py: tiled, the logits never materialised. Normalisation and its
# backward stay in torch (O(MD)); the kernels see unit rows in the accumulation dtype.


def _triton_kernels():
    from radengine.kernels import contrastive_loss as kernel

    return kernel


def _nt_xent_fwd_triton(
    rows: Tensor, cols: Tensor | None, offset: int, temperature: float, normalize: bool
) -> tuple[Tensor, Tensor]:
    u_rows, _ = _unit(rows, normalize)
    u_cols = u_rows if cols is None else _unit(cols, normalize)[0]
    row_loss, stats = _triton_kernels().forward(
        u_rows,
        u_cols,
        temperature,
        col_offset=offset,
        half=rows.shape[0] // 2,
        self_mask=True,
        pos_in_cols=True,
    )
    return row_loss.mean(), stats


def _nt_xent_bwd_triton(
    grad: Tensor,
    rows: Tensor,
    cols: Tensor | None,
    offset: int,
    temperature: float,
    normalize: bool,
    stats: Tensor,
) -> tuple[Tensor, Tensor | None]:
    u_rows, norms_rows = _unit(rows, normalize)
    u_cols, norms_cols = (u_rows, None) if cols is None else _unit(cols, normalize)
    grad_u_rows = torch.zeros_like(u_rows)
    # Single process: the rows are the columns, both kernels add into one buffer.
    grad_u_cols = grad_u_rows if cols is None else torch.zeros_like(u_cols)
    _triton_kernels().backward(
        grad,
        u_rows,
        u_cols,
        stats.to(u_rows.dtype).contiguous(),
        temperature,
        grad_u_rows,
        grad_u_cols,
        col_offset=offset,
        half=rows.shape[0] // 2,
        self_mask=True,
        pos_in_cols=True,
    )
    grad_rows = _normalize_bwd_into(u_rows, norms_rows, grad_u_rows).to(rows.dtype)
    if cols is None:
        return grad_rows, None
    return grad_rows, _normalize_bwd_into(u_cols, norms_cols, grad_u_cols).to(cols.dtype)


def _info_nce_fwd_triton(
    q: Tensor, k: Tensor, queue: Tensor | None, temperature: float, normalize: bool
) -> tuple[Tensor, Tensor]:
    kernel = _triton_kernels()
    u_q, u_k = _unit(q, normalize)[0], _unit(k, normalize)[0]
    if queue is None:  # in-batch negatives: the positive is the diagonal
        row_loss, stats = kernel.forward(u_q, u_k, temperature, pos_in_cols=True)
        return row_loss.mean(), stats
    # With a queue the positive is one extra logit per row, outside the column tiles.
    l_pos = (u_q * u_k).sum(dim=1) / temperature
    if queue.shape[0] == 0:  # no negatives: loss 0, p = 1
        row_loss, stats = _finish_rows(l_pos, torch.full_like(l_pos, float("-inf")))
        return row_loss.mean(), stats
    row_loss, stats = kernel.forward(
        u_q, _unit(queue, normalize)[0], temperature, pos_in_cols=False, extra=l_pos.contiguous()
    )
    return row_loss.mean(), stats


def _info_nce_bwd_triton(
    grad: Tensor,
    q: Tensor,
    k: Tensor,
    queue: Tensor | None,
    temperature: float,
    normalize: bool,
    stats: Tensor,
) -> tuple[Tensor, Tensor]:
    kernel = _triton_kernels()
    (u_q, norms_q), (u_k, norms_k) = _unit(q, normalize), _unit(k, normalize)
    stats = stats.to(u_q.dtype).contiguous()
    grad_u_q = torch.zeros_like(u_q)
    if queue is None:
        grad_u_k = torch.zeros_like(u_k)
        kernel.backward(grad, u_q, u_k, stats, temperature, grad_u_q, grad_u_k, pos_in_cols=True)
    else:
        if queue.shape[0] > 0:  # the queue's columns; no gradient for the queue itself
            u_queue = _unit(queue, normalize)[0]
            kernel.backward(
                grad, u_q, u_queue, stats, temperature, grad_u_q, None, pos_in_cols=False
            )
        share_q, grad_u_k = _positive_outside_cols(grad, u_q, u_k, stats, temperature)
        grad_u_q += share_q
    grad_q = _normalize_bwd_into(u_q, norms_q, grad_u_q).to(q.dtype)
    grad_k = _normalize_bwd_into(u_k, norms_k, grad_u_k).to(k.dtype)
    return grad_q, grad_k


# ------------------------------------------------------------------------ cpu backend
# csrc/cpu/contrastive_loss.cpp on raw pointers: the kernels see contiguous unit (or raw)
# rows in the accumulation dtype; normalisation and its backward stay in torch, as for
# triton. The kernel returns the per-row loss and the (2, M) statistics (the mean is taken
# here).

# Instruction-set cap for the cpu kernels (0: the best the CPU has; 1 portable C++, 2 AVX2,
# 3 AVX-512); tests lower it to run every code path this machine can.
_cpu_isa = 0


def _cpu_kernel_missing() -> str | None:
    if _native.cpu is not None and not hasattr(_native.cpu, "contrastive_forward"):
        return (
            "radengine._cpu was built before the contrastive loss kernels existed; rebuild it "
            "with `pip install -e .`"
        )
    return None


def _ptr(x: Tensor | None) -> int:
    return 0 if x is None else x.data_ptr()


def _cpu_forward(
    u: Tensor,
    v: Tensor | None,
    extra: Tensor | None,
    temperature: float,
    *,
    col_offset: int = 0,
    half: int = 0,
    self_mask: bool = False,
    pos_in_cols: bool = True,
) -> tuple[Tensor, Tensor]:
    """Per-row loss (M,) and statistics (2, M) [lse; log(1 - p_pos)] of u (M, D) against
    v (C, D) (None: u itself, the symmetric single-process NT-Xent), contiguous, fp32 or
    fp64; ``extra`` (M,) the positive logits when they are not columns."""
    m, d = u.shape
    stats = torch.empty(2, m, dtype=u.dtype)
    row_loss = torch.empty(m, dtype=u.dtype)
    _native.cpu.contrastive_forward(
        _ptr(u), _ptr(v), _ptr(extra), m, m if v is None else v.shape[0], d,
        1.0 / temperature, col_offset, half, self_mask, pos_in_cols, v is None,
        u.dtype == torch.float64, stats.data_ptr(), row_loss.data_ptr(),
        isa=_cpu_isa, num_threads=torch.get_num_threads(),
    )  # fmt: skip
    return row_loss, stats


def _cpu_backward(
    grad: Tensor,
    u: Tensor,
    v: Tensor | None,
    stats: Tensor,
    temperature: float,
    *,
    want_v: bool,
    col_offset: int = 0,
    half: int = 0,
    self_mask: bool = False,
    pos_in_cols: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """d(grad * mean row loss)/du (M, D) and, if ``want_v``, d/dv (C, D)."""
    m, d = u.shape
    grad_u = torch.empty_like(u)
    grad_v = torch.empty_like(v) if want_v and v is not None else None
    stats = stats.to(u.dtype).contiguous()  # kept alive across the call
    _native.cpu.contrastive_backward(
        float(grad), _ptr(u), _ptr(v), stats.data_ptr(), m,
        m if v is None else v.shape[0], d, 1.0 / temperature, col_offset, half, self_mask,
        pos_in_cols, v is None, u.dtype == torch.float64, grad_u.data_ptr(), _ptr(grad_v),
        isa=_cpu_isa, num_threads=torch.get_num_threads(),
    )  # fmt: skip
    return grad_u, grad_v


def _nt_xent_fwd_cpu(
    rows: Tensor, cols: Tensor | None, offset: int, temperature: float, normalize: bool
) -> tuple[Tensor, Tensor]:
    u_rows, _ = _unit(rows, normalize)
    u_cols = None if cols is None else _unit(cols, normalize)[0]
    row_loss, stats = _cpu_forward(
        u_rows,
        u_cols,
        None,
        temperature,
        col_offset=offset,
        half=rows.shape[0] // 2,
        self_mask=True,
        pos_in_cols=True,
    )
    return row_loss.mean(), stats


def _nt_xent_bwd_cpu(
    grad: Tensor,
    rows: Tensor,
    cols: Tensor | None,
    offset: int,
    temperature: float,
    normalize: bool,
    stats: Tensor,
) -> tuple[Tensor, Tensor | None]:
    u_rows, norms_rows = _unit(rows, normalize)
    u_cols, norms_cols = (None, None) if cols is None else _unit(cols, normalize)
    # Single process: the kernel's row gradient already holds the column term.
    grad_u_rows, grad_u_cols = _cpu_backward(
        grad,
        u_rows,
        u_cols,
        stats,
        temperature,
        want_v=True,
        col_offset=offset,
        half=rows.shape[0] // 2,
        self_mask=True,
        pos_in_cols=True,
    )
    grad_rows = _normalize_bwd_into(u_rows, norms_rows, grad_u_rows).to(rows.dtype)
    if cols is None:
        return grad_rows, None
    return grad_rows, _normalize_bwd_into(u_cols, norms_cols, grad_u_cols).to(cols.dtype)


def _info_nce_fwd_cpu(
    q: Tensor, k: Tensor, queue: Tensor | None, temperature: float, normalize: bool
) -> tuple[Tensor, Tensor]:
    u_q, u_k = _unit(q, normalize)[0], _unit(k, normalize)[0]
    if queue is None:  # in-batch negatives: the positive is the diagonal
        row_loss, stats = _cpu_forward(u_q, u_k, None, temperature)
        return row_loss.mean(), stats
    # With a queue the positive is one extra logit per row, outside the columns.
    l_pos = ((u_q * u_k).sum(dim=1) / temperature).contiguous()
    row_loss, stats = _cpu_forward(
        u_q, _unit(queue, normalize)[0], l_pos, temperature, pos_in_cols=False
    )
    return row_loss.mean(), stats


def _info_nce_bwd_cpu(
    grad: Tensor,
    q: Tensor,
    k: Tensor,
    queue: Tensor | None,
    temperature: float,
    normalize: bool,
    stats: Tensor,
) -> tuple[Tensor, Tensor]:
    (u_q, norms_q), (u_k, norms_k) = _unit(q, normalize), _unit(k, normalize)
    if queue is None:
        grad_u_q, grad_u_k = _cpu_backward(grad, u_q, u_k, stats, temperature, want_v=True)
    else:  # the queue's columns (no gradient for the queue), then the positive's share
        grad_u_q, _ = _cpu_backward(
            grad, u_q, _unit(queue, normalize)[0], stats, temperature, want_v=False,
            pos_in_cols=False,
        )  # fmt: skip
        share_q, grad_u_k = _positive_outside_cols(grad, u_q, u_k, stats, temperature)
        grad_u_q += share_q
    grad_q = _normalize_bwd_into(u_q, norms_q, grad_u_q).to(q.dtype)
    grad_k = _normalize_bwd_into(u_k, norms_k, grad_u_k).to(k.dtype)
    return grad_q, grad_k


@dataclass(frozen=True)
class ContrastiveBackend:
    """One backend's kernels: forward -> (loss, per-row statistics (2, M) [lse; log(1 - p)],
    see :func:`_finish_rows`); backward -> input grads.

    ``nt_xent_fwd(rows, cols | None, col_offset, T, normalize)``;
    ``nt_xent_bwd(grad, rows, cols | None, col_offset, T, normalize, stats)``;
    ``info_nce_fwd(q, k, queue | None, T, normalize)``;
    ``info_nce_bwd(grad, q, k, queue | None, T, normalize, stats)``.
    """

    nt_xent_fwd: Callable[..., tuple[Tensor, Tensor]]
    nt_xent_bwd: Callable[..., tuple[Tensor, Tensor | None]]
    info_nce_fwd: Callable[..., tuple[Tensor, Tensor]]
    info_nce_bwd: Callable[..., tuple[Tensor, Tensor]]


REFERENCE = ContrastiveBackend(
    _nt_xent_fwd_reference,
    _nt_xent_bwd_reference,
    _info_nce_fwd_reference,
    _info_nce_bwd_reference,
)

TRITON = ContrastiveBackend(
    _nt_xent_fwd_triton,
    _nt_xent_bwd_triton,
    _info_nce_fwd_triton,
    _info_nce_bwd_triton,
)

CPU = ContrastiveBackend(
    _nt_xent_fwd_cpu,
    _nt_xent_bwd_cpu,
    _info_nce_fwd_cpu,
    _info_nce_bwd_cpu,
)

# backend name -> kernels. "cpu" is left out when radengine._cpu predates its kernels (a
# stale build); a missing radengine._cpu is reported by the dispatcher instead.
IMPLS: dict[str, ContrastiveBackend] = {"reference": REFERENCE, "triton": TRITON}
if _cpu_kernel_missing() is None:
    IMPLS["cpu"] = CPU


def _select(device: torch.device, backend: str) -> ContrastiveBackend:
    if (backend or _dispatch.requested_backend()) == "cpu" and (why := _cpu_kernel_missing()):
        raise _dispatch.BackendUnavailableError(
            f"contrastive_loss: backend 'cpu' requested but {why}"
        )
    return _dispatch.select("contrastive_loss", IMPLS, device, backend or None)[1]  # type: ignore[arg-type]


def _fake_loss_and_stats(x: Tensor, rows: int) -> tuple[Tensor, Tensor]:
    acc = _acc_dtype(x.dtype)
    return x.new_empty((), dtype=acc), x.new_empty((2, rows), dtype=acc)


def _no_autocast(x: Tensor):
    """The op runs inside the caller's autocast region (training uses bf16 autocast); its
    matmuls must stay in fp32 as documented, so autocast is off inside the op."""
    return torch.autocast(x.device.type, enabled=False)


# ------------------------------------------------------------- torch.library registration
# Rows against columns: ``cols`` None means the rows themselves (single process); else the
# gathered columns of every rank, which hold a copy of ``rows`` at [col_offset, col_offset+M).


@torch.library.custom_op("radengine::nt_xent", mutates_args=())
def _nt_xent_op(
    rows: Tensor,
    cols: Tensor | None,
    col_offset: int,
    temperature: float,
    normalize: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    impl = _select(rows.device, backend)
    with _no_autocast(rows):
        return impl.nt_xent_fwd(rows, cols, col_offset, temperature, normalize)


@_nt_xent_op.register_fake
def _(rows, cols, col_offset, temperature, normalize, backend):
    return _fake_loss_and_stats(rows, rows.shape[0])


@torch.library.custom_op("radengine::nt_xent_backward", mutates_args=())
def _nt_xent_backward_op(
    grad: Tensor,
    rows: Tensor,
    cols: Tensor | None,
    col_offset: int,
    temperature: float,
    normalize: bool,
    backend: str,
    stats: Tensor,
) -> tuple[Tensor, Tensor]:
    impl = _select(rows.device, backend)
    with _no_autocast(rows):
        grad_rows, grad_cols = impl.nt_xent_bwd(
            grad, rows, cols, col_offset, temperature, normalize, stats
        )
    # A custom op cannot return None: an empty tensor stands for "no cols".
    return grad_rows, grad_cols if grad_cols is not None else rows.new_empty((0,))


@_nt_xent_backward_op.register_fake
def _(grad, rows, cols, col_offset, temperature, normalize, backend, stats):
    return rows.new_empty(rows.shape), (
        cols.new_empty(cols.shape) if cols is not None else rows.new_empty((0,))
    )


def _nt_xent_setup_context(ctx, inputs, output) -> None:
    rows, cols, col_offset, temperature, normalize, backend = inputs
    ctx.has_cols = cols is not None
    ctx.args = (col_offset, temperature, normalize, backend)
    ctx.save_for_backward(rows, cols, output[1])
    ctx.mark_non_differentiable(output[1])


def _nt_xent_backward(ctx, grad_loss: Tensor, _grad_stats: Tensor | None):
    rows, cols, stats = ctx.saved_tensors
    col_offset, temperature, normalize, backend = ctx.args
    grad_rows, grad_cols = torch.ops.radengine.nt_xent_backward(
        grad_loss, rows, cols, col_offset, temperature, normalize, backend, stats
    )
    return grad_rows, (grad_cols if ctx.has_cols else None), None, None, None, None


_nt_xent_op.register_autograd(_nt_xent_backward, setup_context=_nt_xent_setup_context)


@torch.library.custom_op("radengine::info_nce", mutates_args=())
def _info_nce_op(
    q: Tensor,
    k: Tensor,
    queue: Tensor | None,
    temperature: float,
    normalize: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    impl = _select(q.device, backend)
    with _no_autocast(q):
        return impl.info_nce_fwd(q, k, queue, temperature, normalize)


@_info_nce_op.register_fake
def _(q, k, queue, temperature, normalize, backend):
    return _fake_loss_and_stats(q, q.shape[0])


@torch.library.custom_op("radengine::info_nce_backward", mutates_args=())
def _info_nce_backward_op(
    grad: Tensor,
    q: Tensor,
    k: Tensor,
    queue: Tensor | None,
    temperature: float,
    normalize: bool,
    backend: str,
    stats: Tensor,
) -> tuple[Tensor, Tensor]:
    impl = _select(q.device, backend)
    with _no_autocast(q):
        return impl.info_nce_bwd(grad, q, k, queue, temperature, normalize, stats)


@_info_nce_backward_op.register_fake
def _(grad, q, k, queue, temperature, normalize, backend, stats):
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _info_nce_setup_context(ctx, inputs, output) -> None:
    q, k, queue, temperature, normalize, backend = inputs
    ctx.args = (temperature, normalize, backend)
    ctx.save_for_backward(q, k, queue, output[1])
    ctx.mark_non_differentiable(output[1])


def _info_nce_backward(ctx, grad_loss: Tensor, _grad_stats: Tensor | None):
    q, k, queue, stats = ctx.saved_tensors
    temperature, normalize, backend = ctx.args
    grad_q, grad_k = torch.ops.radengine.info_nce_backward(
        grad_loss, q, k, queue, temperature, normalize, backend, stats
    )
    return grad_q, grad_k, None, None, None, None


_info_nce_op.register_autograd(_info_nce_backward, setup_context=_info_nce_setup_context)

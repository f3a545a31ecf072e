"""NT-Xent / InfoNCE in Triton, tiled so the (M, C) logits never exist in memory.

Math: radengine/ops/contrastive_loss.py (module docstring and the reference backend). The
kernels take unit (or raw) rows U (M, D) and columns V (C, D), already in the accumulation
dtype (fp32, or fp64 for fp64 inputs; normalisation and its backward stay in torch), and
the logits s_ic = (u_i . v_c) / T with two optional twists:

* SELF_MASK: column ``col_offset + i`` is row i itself (NT-Xent) and is left out;
* POS_IN_COLS: row i's positive is column ``col_offset + (i + half) mod M`` (NT-Xent:
  half = M / 2; in-batch InfoNCE: col_offset = half = 0, the diagonal). Otherwise
  (InfoNCE with a queue) the positive logit comes in as ``extra`` (M,).

Forward (``_fwd_kernel``, one program per BLOCK_M rows): loop over column tiles of BLOCK_N,
each tile's logits a K-loop of BLOCK_D chunks of tl.dot, folded into an online log-sum-exp
(running max m and sum l) of the negatives only: the positive column is left out and kept
apart as s_pos. With x = lse_neg - s_pos, writes the per-row loss softplus(x) (= lse - s_pos
without its cancellation when the positive dominates) and the statistics (2, M):
lse = s_pos + softplus(x) and log(1 - p_pos) = x - softplus(x) (the formulas:
radengine/ops/contrastive_loss.py, ``_finish_rows``); the mean is taken outside. Traffic: U
once, V once per row block (M / BLOCK_M times), 3M outputs.

Backward, with P = exp(s - lse) (the recomputed softmax) and Y the positive one-hot:
dS = (P - Y) * grad / (M T) on every tile, recomputed from U, V and the saved statistics;
at the positive, p - 1 = -exp(log(1 - p_pos)) (exp(s_pos - lse) - 1 would cancel).

* ``_bwd_rows_kernel`` (one program per row block and BLOCK_DO gradient columns):
  grad_U_i += sum_c dS_ic v_c;
* ``_bwd_cols_kernel`` (one program per column block and BLOCK_DO gradient columns):
  grad_V_c += sum_i dS_ic u_i.

Each program owns its (BLOCK, BLOCK_DO) gradient tile and keeps it in registers (no
atomics, no read-modify-write per tile), adding it once at the end into a zero-initialised
fp32/fp64 buffer; for single-process NT-Xent U and V are one tensor and the column kernel
adds onto the row kernel's result. With D > BLOCK_DO (128 for fp32) each program recomputes
the logits of its tiles, so the backward costs (2 ceil(D / BLOCK_DO) + 2) M C D
multiply-adds: 4 M C D for the usual SSL projector widths (D <= 128) against the forward's
M C D. Extra memory: O(M + C) plus the (M, D) and (C, D) gradient buffers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _logits_tile(
    u_ptr,
    v_ptr,
    rows,
    cols,
    row_ok,
    col_ok,
    inv_t,
    D,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """(BLOCK_M, BLOCK_N) logits u_rows . v_cols / T, accumulated over D in BLOCK_D chunks."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=u_ptr.dtype.element_ty)
    u_base = u_ptr + rows.to(tl.int64)[:, None] * D
    v_base = v_ptr + cols.to(tl.int64)[:, None] * D
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        d_ok = dd < D
        u = tl.load(u_base + dd[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        v = tl.load(v_base + dd[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        acc = tl.dot(u, tl.trans(v), acc, input_precision="ieee")
    return acc * inv_t


@triton.jit
def _add_into(out_ptr, idx, idx_ok, dd, d_ok, acc, D):
    """out[idx, dd] += acc, once per program at the end (buffers start at zero; for
    single-process NT-Xent the column kernel adds onto the row kernel's result)."""
    ptrs = out_ptr + idx.to(tl.int64)[:, None] * D + dd[None, :]
    mask = idx_ok[:, None] & d_ok[None, :]
    tl.store(ptrs, tl.load(ptrs, mask=mask, other=0.0) + acc, mask=mask)


@triton.jit
def _log1p_small(y):
    """log(1 + y) for y in [0, 1] to full relative precision, tiny y included, as
    2 atanh(t) = 2 (t + t^3 / 3 + ... + t^35 / 35), t = y / (2 + y) <= 1/3 (truncation
    < 9^-18, below fp64's eps). No log of a number near 1: an approximate GPU log has an
    absolute error there that would be a large relative one in the result."""
    t = y / (2.0 + y)
    t2 = t * t
    p = t2 * 0.0 + 1.0 / 35.0
    for k in tl.static_range(16, -1, -1):
        p = p * t2 + 1.0 / (2 * k + 1)
    return 2.0 * t * p


@triton.jit
def _dlogits(
    s,
    lse,
    log_q,
    g,
    rows,
    cols,
    row_ok,
    col_ok,
    col_offset,
    half,
    M,
    SELF_MASK: tl.constexpr,
    POS_IN_COLS: tl.constexpr,
):
    """dS = (softmax - positive one-hot) * g, zero outside the valid, unmasked entries; the
    positive's p - 1 is -exp(log_q), log_q = log(1 - p) saved by the forward."""
    keep = row_ok[:, None] & col_ok[None, :]
    if SELF_MASK:
        keep = keep & (cols[None, :] != (col_offset + rows)[:, None])
    # Masked entries become exp(-inf) = 0 (never exp of a huge number, as padding could).
    ds = tl.exp(tl.where(keep, s, float("-inf")) - lse[:, None])
    if POS_IN_COLS:
        pos_col = col_offset + (rows + half) % M
        is_pos = keep & (cols[None, :] == pos_col[:, None])
        ds = tl.where(is_pos, -tl.exp(log_q)[:, None], ds)
    return ds * g


@triton.jit
def _fwd_kernel(
    u_ptr,
    v_ptr,
    extra_ptr,  # (M,) positive logits, read when HAS_EXTRA
    params_ptr,  # (1,) 1 / T in the accumulation dtype
    stats_ptr,  # (2, M): lse, log(1 - p_pos)
    loss_ptr,
    M,
    C,
    D,
    col_offset,
    half,
    SELF_MASK: tl.constexpr,
    POS_IN_COLS: tl.constexpr,
    HAS_EXTRA: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    inv_t = tl.load(params_ptr)
    dt = u_ptr.dtype.element_ty
    if HAS_EXTRA:
        pos = tl.load(extra_ptr + rows, mask=row_ok, other=0.0)
    else:
        pos = tl.zeros((BLOCK_M,), dt)
    # The online log-sum-exp of the negatives (the positive is combined at the end).
    m_i = tl.full((BLOCK_M,), float("-inf"), dt)
    l_i = tl.zeros((BLOCK_M,), dt)
    self_col = col_offset + rows
    pos_col = col_offset + (rows + half) % M
    for c0 in range(0, C, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_ok = cols < C
        s = _logits_tile(
            u_ptr, v_ptr, rows, cols, row_ok, col_ok, inv_t, D, BLOCK_M, BLOCK_N, BLOCK_D
        )
        keep = col_ok[None, :]
        if POS_IN_COLS:
            is_pos = cols[None, :] == pos_col[:, None]
            pos += tl.sum(tl.where(is_pos, s, 0.0), axis=1)
            keep = keep & ~is_pos
        if SELF_MASK:
            keep = keep & (cols[None, :] != self_col[:, None])
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # A row that has seen only masked columns keeps m = -inf; shift by 0 there.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(tl.exp(s - m_safe[:, None]), axis=1)
        m_i = m_new
    # x = lse_neg - s_pos (-inf without negatives: loss 0, log(1 - p) = -inf; log is only
    # taken of a positive sum).
    has_neg = l_i > 0
    lse_neg = tl.where(has_neg, m_i + tl.log(tl.where(has_neg, l_i, 1.0)), float("-inf"))
    x = lse_neg - pos
    tail = _log1p_small(tl.exp(-tl.abs(x)))
    loss = tl.maximum(x, 0.0) + tail
    tl.store(stats_ptr + rows, pos + loss, mask=row_ok)
    tl.store(stats_ptr + M + rows, tl.minimum(x, 0.0) - tail, mask=row_ok)
    tl.store(loss_ptr + rows, loss, mask=row_ok)


@triton.jit
def _bwd_rows_kernel(
    u_ptr,
    v_ptr,
    stats_ptr,  # (2, M): lse, log(1 - p_pos)
    params_ptr,  # (2,) 1 / T and grad / (M T)
    out_ptr,  # (M, D) accumulation buffer: += dS @ V
    M,
    C,
    D,
    col_offset,
    half,
    SELF_MASK: tl.constexpr,
    POS_IN_COLS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DO: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    dd = tl.program_id(1) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    d_ok = dd < D
    inv_t = tl.load(params_ptr)
    g = tl.load(params_ptr + 1)
    lse = tl.load(stats_ptr + rows, mask=row_ok, other=0.0)
    log_q = tl.load(stats_ptr + M + rows, mask=row_ok, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_DO), dtype=u_ptr.dtype.element_ty)
    for c0 in range(0, C, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_ok = cols < C
        s = _logits_tile(
            u_ptr, v_ptr, rows, cols, row_ok, col_ok, inv_t, D, BLOCK_M, BLOCK_N, BLOCK_D
        )
        ds = _dlogits(
            s,
            lse,
            log_q,
            g,
            rows,
            cols,
            row_ok,
            col_ok,
            col_offset,
            half,
            M,
            SELF_MASK,
            POS_IN_COLS,
        )
        v_ptrs = v_ptr + cols.to(tl.int64)[:, None] * D + dd[None, :]
        v = tl.load(v_ptrs, mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        acc = tl.dot(ds, v, acc, input_precision="ieee")
    _add_into(out_ptr, rows, row_ok, dd, d_ok, acc, D)


@triton.jit
def _bwd_cols_kernel(
    u_ptr,
    v_ptr,
    stats_ptr,  # (2, M): lse, log(1 - p_pos)
    params_ptr,  # (2,) 1 / T and grad / (M T)
    out_ptr,  # (C, D) accumulation buffer: += dS.T @ U
    M,
    C,
    D,
    col_offset,
    half,
    SELF_MASK: tl.constexpr,
    POS_IN_COLS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DO: tl.constexpr,
):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < C
    dd = tl.program_id(1) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    d_ok = dd < D
    inv_t = tl.load(params_ptr)
    g = tl.load(params_ptr + 1)
    acc = tl.zeros((BLOCK_N, BLOCK_DO), dtype=u_ptr.dtype.element_ty)
    for r0 in range(0, M, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        lse = tl.load(stats_ptr + rows, mask=row_ok, other=0.0)
        log_q = tl.load(stats_ptr + M + rows, mask=row_ok, other=0.0)
        s = _logits_tile(
            u_ptr, v_ptr, rows, cols, row_ok, col_ok, inv_t, D, BLOCK_M, BLOCK_N, BLOCK_D
        )
        ds = _dlogits(
            s,
            lse,
            log_q,
            g,
            rows,
            cols,
            row_ok,
            col_ok,
            col_offset,
            half,
            M,
            SELF_MASK,
            POS_IN_COLS,
        )
        u_ptrs = u_ptr + rows.to(tl.int64)[:, None] * D + dd[None, :]
        u = tl.load(u_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        acc = tl.dot(tl.trans(ds), u, acc, input_precision="ieee")
    _add_into(out_ptr, cols, col_ok, dd, d_ok, acc, D)


def _blocks(u: torch.Tensor) -> tuple[int, int, int, int, int]:
    """BLOCK_M, BLOCK_N, BLOCK_D (K loop), BLOCK_DO (gradient columns per program) and
    num_warps. tl.dot needs every tile side >= 16. Untuned (written without a GPU at hand);
    fp64 takes half the chunks for registers."""
    d = max(16, triton.next_power_of_2(u.shape[1]))
    wide = u.dtype != torch.float64
    return 64, 64, min(64 if wide else 32, d), min(128 if wide else 64, d), 4


def forward(
    u: torch.Tensor,
    v: torch.Tensor,
    temperature: float,
    *,
    col_offset: int = 0,
    half: int = 0,
    self_mask: bool = False,
    pos_in_cols: bool = True,
    extra: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row loss (M,) and statistics (2, M) [lse; log(1 - p_pos)] of u (M, D) against
    v (C, D), both contiguous fp32 or fp64 on one device. ``extra`` (M,): the positive logit
    when it is not a column."""
    m, d = u.shape
    c = v.shape[0]
    bm, bn, bd, _, warps = _blocks(u)
    params = torch.full((1,), 1.0 / temperature, dtype=u.dtype, device=u.device)
    stats = torch.empty(2, m, dtype=u.dtype, device=u.device)
    loss = torch.empty(m, dtype=u.dtype, device=u.device)
    _fwd_kernel[(triton.cdiv(m, bm),)](
        u,
        v,
        extra if extra is not None else loss,
        params,
        stats,
        loss,
        m,
        c,
        d,
        col_offset,
        half,
        SELF_MASK=self_mask,
        POS_IN_COLS=pos_in_cols,
        HAS_EXTRA=extra is not None,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_D=bd,
        num_warps=warps,
    )
    return loss, stats


def backward(
    grad: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    stats: torch.Tensor,
    temperature: float,
    grad_u: torch.Tensor,
    grad_v: torch.Tensor | None,
    *,
    col_offset: int = 0,
    half: int = 0,
    self_mask: bool = False,
    pos_in_cols: bool = True,
) -> None:
    """Adds d(mean loss)/du * grad into ``grad_u`` (M, D) and, unless None, d/dv into
    ``grad_v`` (C, D); both buffers in u's dtype (they may be the same tensor)."""
    m, d = u.shape
    c = v.shape[0]
    bm, bn, bd, bdo, warps = _blocks(u)
    params = torch.cat(
        [
            torch.full((1,), 1.0 / temperature, dtype=u.dtype, device=u.device),
            grad.reshape(1).to(u.dtype) / (m * temperature),
        ]
    )
    flags = dict(
        SELF_MASK=self_mask,
        POS_IN_COLS=pos_in_cols,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_D=bd,
        BLOCK_DO=bdo,
    )
    d_blocks = triton.cdiv(d, bdo)
    args = (stats, params)
    _bwd_rows_kernel[(triton.cdiv(m, bm), d_blocks)](
        u, v, *args, grad_u, m, c, d, col_offset, half, **flags, num_warps=warps
    )
    if grad_v is not None:
        _bwd_cols_kernel[(triton.cdiv(c, bn), d_blocks)](
            u, v, *args, grad_v, m, c, d, col_offset, half, **flags, num_warps=warps
        )

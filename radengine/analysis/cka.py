"""Centered kernel alignment (CKA) between representations (Kornblith et al., ICML 2019).

For features ``X (n, p1)`` and ``Y (n, p2)`` of the same ``n`` examples, with Gram matrices
``K`` and ``L`` (``K = X X^T`` for the linear kernel),

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)).

- **Biased HSIC (the default)**: ``HSIC = tr(K H L H) / (n - 1)^2`` with the centring
  matrix ``H = I - 11^T / n``: the estimator of Kornblith et al. and of study A's feature
  reuse analysis. For linear kernels it reduces to
  ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` on column-centred features. It lies in
  [0, 1] and is biased upwards for few examples and many features.
- **Debiased** (``debiased=True``): the unbiased HSIC U-statistic of Song et al. (JMLR
  2012), computed as the Frobenius inner product of U-centred Gram matrices (Szekely &
  Rizzo's U-centring; ``<U(K), U(L)> = n (n - 3) HSIC_u``). Needs ``n >= 4``; the value can
  fall slightly below 0 for unrelated representations.

The RBF kernel is ``k(x, y) = exp(-||x - y||^2 / (2 sigma^2))`` with ``sigma^2 =
sigma_frac^2 * median(||x_i - x_j||^2)``, the median taken over all ``n^2`` pairs (the
zero diagonal included) as in Kornblith et al.'s code, and ``sigma_frac`` the "fraction of
the median distance" of their paper (they report 0.2, 0.4 and 0.8; the default here, 1.0,
is their code's default).

Everything is computed in float64 on the device of the inputs. CKA is NaN when a
representation is constant over the examples (a zero centred Gram matrix).

Linear CKA also streams over minibatches, exactly (:class:`LinearCKAAccumulator`): the
feature-space formula needs only sums of ``x``, ``x x^T``-type cross moments and (for the
debiased estimator) a few per-row norm moments, all of which add over batches; the features
are shifted by the first batch's mean before accumulating, which keeps the later centring
free of cancellation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = [
    "LayerCKA",
    "LinearCKAAccumulator",
    "center_gram",
    "cka_from_grams",
    "gram_linear",
    "gram_rbf",
    "layer_cka",
    "linear_cka",
    "rbf_cka",
]

Pooling = Literal["avg", "flatten"]
Kernel = Literal["linear", "rbf"]

# Columns per float64 chunk when forming Gram matrices from large (flattened) features.
_GRAM_CHUNK_ELEMS = 1 << 24


# --------------------------------------------------------------------------------------
# checks


def _check_features(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be (n, p) features, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.double()
    if torch.isnan(x).any() or torch.isinf(x).any():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _check_pair(x: object, y: object, debiased: bool) -> tuple[Tensor, Tensor]:
    x = _check_features(x, "x")
    y = _check_features(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same examples: {x.shape[0]} vs {y.shape[0]} rows")
    _check_n(x.shape[0], debiased)
    return x, y


def _check_n(n: int, debiased: bool) -> None:
    need = 4 if debiased else 2
    if n < need:
        raise ValueError(
            f"CKA needs at least {need} examples{' (debiased)' if debiased else ''}, got {n}"
        )


def _check_sigma_frac(sigma_frac: float) -> float:
    sigma_frac = float(sigma_frac)
    if not sigma_frac > 0 or sigma_frac == float("inf"):
        raise ValueError(f"sigma_frac must be positive and finite, got {sigma_frac}")
    return sigma_frac


# --------------------------------------------------------------------------------------
# Gram matrices


def gram_linear(x: Tensor) -> Tensor:
    """``X X^T`` in float64, ``(n, n)``, formed in column chunks for wide ``x (n, p)``."""
    x = _check_features(x, "x")
    n, p = x.shape
    chunk = max(1, _GRAM_CHUNK_ELEMS // max(n, 1))
    gram = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for c0 in range(0, p, chunk):
        xc = x[:, c0 : c0 + chunk].double()
        gram.addmm_(xc, xc.T)
    return gram


def _median_all(values: Tensor) -> Tensor:
    """numpy-style median (mean of the two middle values for an even count)."""
    flat = values.flatten()
    m = flat.numel()
    hi = flat.kthvalue(m // 2 + 1).values
    if m % 2:
        return hi
    return 0.5 * (flat.kthvalue(m // 2).values + hi)


def _rbf_from_linear_gram(gram: Tensor, sigma_frac: float) -> Tensor:
    sq_norms = gram.diagonal()
    sq_dist = (sq_norms.unsqueeze(0) + sq_norms.unsqueeze(1) - 2 * gram).clamp_min(0)
    sq_dist.fill_diagonal_(0)
    bandwidth = 2 * sigma_frac**2 * _median_all(sq_dist)
    if bandwidth == 0:
        # More than half the pairs coincide: the sigma -> 0 limit, 1 for equal points.
        return (sq_dist == 0).double()
    return torch.exp(-sq_dist / bandwidth)


def gram_rbf(x: Tensor, sigma_frac: float = 1.0) -> Tensor:
    """RBF Gram matrix ``(n, n)`` in float64 with the median-distance bandwidth.

    Args:
        x: ``(n, p)`` features.
        sigma_frac: ``sigma`` as a fraction of the median pairwise distance (see the module
            docstring). If more than half of all pairs coincide (median 0), the Gram
            matrix is the ``sigma -> 0`` limit: 1 for identical examples, 0 otherwise.
    """
    return _rbf_from_linear_gram(gram_linear(x), _check_sigma_frac(sigma_frac))


def center_gram(gram: Tensor, unbiased: bool = False) -> Tensor:
    """Centre a Gram matrix, in float64.

    Args:
        gram: symmetric ``(n, n)``.
        unbiased: U-centring (zero diagonal; ``<U(K), U(L)> / (n (n - 3))`` is the unbiased
            HSIC) instead of the double centring ``H K H``. Needs ``n >= 4``.

    Returns:
        ``(n, n)`` float64.
    """
    if not isinstance(gram, Tensor) or gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be a square (n, n) tensor, got {getattr(gram, 'shape', gram)}")
    n = gram.shape[0]
    _check_n(n, unbiased)
    g = gram.double().clone()
    if not unbiased:
        g -= g.mean(dim=0, keepdim=True)
        g -= g.mean(dim=1, keepdim=True)
        return g
    g.fill_diagonal_(0)
    # U-centring: K_ij - r_i - r_j + t for i != j, with r the row sums over n - 2 and t the
    # total over (n - 1)(n - 2).
    row = g.sum(dim=0) / (n - 2)
    row -= g.sum() / (2 * (n - 1) * (n - 2))
    g -= row.unsqueeze(0)
    g -= row.unsqueeze(1)
    g.fill_diagonal_(0)
    return g


def _normalized(centered: Tensor) -> Tensor:
    norm = torch.linalg.matrix_norm(centered)
    return centered / norm  # NaN for a zero matrix: CKA is undefined there


def cka_from_grams(gram_x: Tensor, gram_y: Tensor, debiased: bool = False) -> Tensor:
    """CKA of two ``(n, n)`` Gram matrices of the same examples.

    Args:
        gram_x: Gram matrix of the first representation.
        gram_y: Gram matrix of the second.
        debiased: use the unbiased HSIC (see the module docstring).

    Returns:
        0-d float64.
    """
    if (
        not isinstance(gram_x, Tensor)
        or not isinstance(gram_y, Tensor)
        or gram_x.shape != gram_y.shape
    ):
        raise ValueError(
            "gram_x and gram_y must be Gram matrices of one shape, got "
            f"{getattr(gram_x, 'shape', gram_x)} and {getattr(gram_y, 'shape', gram_y)}"
        )
    kc = center_gram(gram_x, debiased)
    lc = center_gram(gram_y.to(gram_x.device), debiased)
    return (kc * lc).sum() / torch.sqrt((kc * kc).sum() * (lc * lc).sum())


# --------------------------------------------------------------------------------------
# feature-space linear CKA, streamable


class _Stream:
    """Moments of one feature stream that add over batches (shifted by the first mean)."""

    def __init__(self) -> None:
        self.n = 0
        self.shift: Tensor | None = None
        self.sum_u: Tensor | None = None
        self.sum_sq = 0.0  # sum over rows of ||u_i||^2 (a 0-d tensor after the first batch)

    def prepare(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.double()
        if self.shift is None:
            self.shift = x.mean(dim=0)
            self.sum_u = torch.zeros_like(self.shift)
        elif x.shape[1] != self.shift.shape[0]:
            raise ValueError(f"feature width changed from {self.shift.shape[0]} to {x.shape[1]}")
        u = x - self.shift
        return u, (u * u).sum(dim=1)

    def add(self, u: Tensor, sq: Tensor) -> None:
        self.n += u.shape[0]
        self.sum_u += u.sum(dim=0)
        self.sum_sq = self.sum_sq + sq.sum()


class _Cross:
    """Cross moments of two streams: ``sum u v^T`` and, for the debiased HSIC,
    ``sum a b``, ``sum a v`` and ``sum b u`` with ``a, b`` the rows' squared norms."""

    def __init__(self, debiased: bool) -> None:
        self.debiased = debiased
        self.uv: Tensor | None = None
        self.ab: Tensor | float = 0.0
        self.av: Tensor | float = 0.0
        self.bu: Tensor | float = 0.0

    def add(self, u: Tensor, a: Tensor, v: Tensor, b: Tensor) -> None:
        uv = u.T @ v
        self.uv = uv if self.uv is None else self.uv + uv
        if self.debiased:
            self.ab = self.ab + (a * b).sum()
            self.av = self.av + a @ v
            self.bu = self.bu + b @ u


def _hsic_numerator(c: _Cross, sx: _Stream, sy: _Stream) -> Tensor:
    """``n (n - 3) HSIC_u`` (debiased) or ``(n - 1)^2 HSIC`` (biased) from the moments.

    With centred rows x_i = u_i - m_x (m_x the mean of u) and a_i = ||x_i||^2:
    biased: ||X^T Y||_F^2; debiased: ||X^T Y||_F^2 - n / (n - 2) sum a_i b_i
    + (sum a_i)(sum b_i) / ((n - 1)(n - 2)) (Song et al.'s estimator, with the terms in
    1^T K 1 vanishing for centred features).
    """
    n = sx.n
    mx, my = sx.sum_u / n, sy.sum_u / n
    xty = c.uv - n * torch.outer(mx, my)
    num = (xty * xty).sum()
    if not c.debiased:
        return num
    mx2, my2 = mx @ mx, my @ my
    sum_a = sx.sum_sq - n * mx2
    sum_b = sy.sum_sq - n * my2
    # sum_i (alpha_i - 2 u_i.m_x + |m_x|^2)(beta_i - 2 v_i.m_y + |m_y|^2), expanded with
    # alpha_i = |u_i|^2, beta_i = |v_i|^2 and sum_i u_i = n m_x.
    sum_ab = (
        c.ab
        - 2 * (my @ c.av)
        - 2 * (mx @ c.bu)
        + 4 * (mx @ c.uv @ my)
        + my2 * sx.sum_sq
        + mx2 * sy.sum_sq
        - 3 * n * mx2 * my2
    )
    return num - n / (n - 2) * sum_ab + sum_a * sum_b / ((n - 1) * (n - 2))


class _LinearCKAMatrix:
    """Exact streaming linear CKA between every stream of group A and every one of B."""

    def __init__(self, num_a: int, num_b: int, debiased: bool) -> None:
        self.debiased = debiased
        self.a = [_Stream() for _ in range(num_a)]
        self.b = [_Stream() for _ in range(num_b)]
        self.self_a = [_Cross(debiased) for _ in range(num_a)]
        self.self_b = [_Cross(debiased) for _ in range(num_b)]
        self.cross = [[_Cross(debiased) for _ in range(num_b)] for _ in range(num_a)]

    def update(self, xs: Sequence[Tensor], ys: Sequence[Tensor]) -> None:
        pa = [s.prepare(x) for s, x in zip(self.a, xs, strict=True)]
        pb = [s.prepare(y) for s, y in zip(self.b, ys, strict=True)]
        # The devices of the two groups may differ (two encoders on two GPUs).
        dev = pa[0][0].device
        pb_on_a = [(u.to(dev), sq.to(dev)) for u, sq in pb]
        for i, (u, a) in enumerate(pa):
            self.self_a[i].add(u, a, u, a)
            for j, (v, b) in enumerate(pb_on_a):
                self.cross[i][j].add(u, a, v, b)
        for j, (v, b) in enumerate(pb):
            self.self_b[j].add(v, b, v, b)
        for s, (u, a) in zip(self.a, pa, strict=True):
            s.add(u, a)
        for s, (v, b) in zip(self.b, pb, strict=True):
            s.add(v, b)

    def compute(self) -> Tensor:
        n = self.a[0].n
        _check_n(n, self.debiased)
        na = torch.stack(
            [_hsic_numerator(c, s, s) for c, s in zip(self.self_a, self.a, strict=True)]
        )
        nb = torch.stack(
            [_hsic_numerator(c, s, s) for c, s in zip(self.self_b, self.b, strict=True)]
        )
        dev = na.device
        out = torch.empty(len(self.a), len(self.b), dtype=torch.float64, device=dev)
        for i, sa in enumerate(self.a):
            for j, sb in enumerate(self.b):
                # Stream b's moments are on b's device; the cross moments on a's.
                sb_here = _Stream()
                sb_here.n, sb_here.sum_u = sb.n, sb.sum_u.to(dev)
                sb_here.sum_sq = torch.as_tensor(sb.sum_sq, device=dev)
                out[i, j] = _hsic_numerator(self.cross[i][j], sa, sb_here)
        return out / torch.sqrt(na.unsqueeze(1) * nb.to(dev).unsqueeze(0))


class LinearCKAAccumulator:
    """Exact linear CKA of two feature streams, accumulated over minibatches.

    Memory is ``O(p1 p2)`` (the cross moment ``X^T Y``) whatever the number of examples;
    the result equals :func:`linear_cka` on the concatenated batches up to float64
    rounding.

    Args:
        debiased: use the unbiased HSIC (see the module docstring).
    """

    def __init__(self, debiased: bool = False) -> None:
        self.debiased = debiased
        self._m = _LinearCKAMatrix(1, 1, debiased)

    @property
    def num_samples(self) -> int:
        """Examples seen so far."""
        return self._m.a[0].n

    @torch.no_grad()
    def update(self, x: Tensor, y: Tensor) -> None:
        """Add a batch: ``x (b, p1)`` and ``y (b, p2)`` for the same ``b`` examples."""
        x = _check_features(x, "x")
        y = _check_features(y, "y")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must hold the same examples: {x.shape[0]} vs {y.shape[0]}")
        if x.shape[0] == 0:
            return
        self._m.update([x], [y])

    def compute(self) -> Tensor:
        """CKA over every example seen, 0-d float64."""
        return self._m.compute()[0, 0]


def linear_cka(x: Tensor, y: Tensor, *, debiased: bool = False) -> Tensor:
    """Linear CKA between ``x (n, p1)`` and ``y (n, p2)``.

    Invariant to orthogonal transforms and isotropic scaling of either representation (not
    to general invertible linear maps). Uses the feature-space formula when the feature
    widths are small relative to ``n`` and the Gram matrices otherwise: the same number.

    Args:
        x: features of ``n`` examples.
        y: features of the same examples.
        debiased: use the unbiased HSIC (needs ``n >= 4``).

    Returns:
        0-d float64 on the device of ``x``.
    """
    x, y = _check_pair(x, y, debiased)
    n, p, q = x.shape[0], x.shape[1], y.shape[1]
    if p * p + q * q + p * q <= n * (p + q):
        m = _LinearCKAMatrix(1, 1, debiased)
        m.update([x], [y.to(x.device)])
        return m.compute()[0, 0]
    return cka_from_grams(gram_linear(x), gram_linear(y).to(x.device), debiased)


def rbf_cka(x: Tensor, y: Tensor, *, sigma_frac: float = 1.0, debiased: bool = False) -> Tensor:
    """RBF-kernel CKA between ``x (n, p1)`` and ``y (n, p2)``.

    Args:
        x: features of ``n`` examples.
        y: features of the same examples.
        sigma_frac: bandwidth as a fraction of the median pairwise distance (per input).
        debiased: use the unbiased HSIC (needs ``n >= 4``).

    Returns:
        0-d float64; in [0, 1] for the biased estimator.
    """
    x, y = _check_pair(x, y, debiased)
    return cka_from_grams(gram_rbf(x, sigma_frac), gram_rbf(y, sigma_frac).to(x.device), debiased)


# --------------------------------------------------------------------------------------
# between the layers of two encoders


@dataclass(frozen=True)
class LayerCKA:
    """CKA between the layers of two encoders.

    Attributes:
        matrix: ``(len(layers_a), len(layers_b))`` float64 on the CPU; ``matrix[i, j]`` is
            the CKA of ``layers_a[i]`` of model A and ``layers_b[j]`` of model B.
        layers_a: layer names of model A, in row order.
        layers_b: layer names of model B, in column order.
        num_samples: examples used.
    """

    matrix: Tensor
    layers_a: list[str]
    layers_b: list[str]
    num_samples: int


def _pool(t: Tensor, pooling: Pooling) -> Tensor:
    """``(B, ...)`` activations -> ``(B, p)`` features."""
    if t.ndim < 2:
        raise ValueError(f"activations must be at least (B, p), got shape {tuple(t.shape)}")
    if pooling == "flatten" or t.ndim == 2:
        return t.reshape(t.shape[0], -1)
    if t.ndim == 3:  # (B, tokens, D): ViT blocks; average the tokens
        return t.mean(dim=1)
    return t.mean(dim=tuple(range(2, t.ndim)))  # (B, C, *spatial): conv maps


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _batches(data: Tensor | Iterable[object], batch_size: int) -> Iterable[Tensor]:
    if isinstance(data, Tensor):
        for i in range(0, data.shape[0], batch_size):
            yield data[i : i + batch_size]
        return
    for item in data:
        if isinstance(item, Tensor):
            yield item
        elif isinstance(item, tuple | list) and item and isinstance(item[0], Tensor):
            yield item[0]
        elif isinstance(item, dict) and isinstance(item.get("image"), Tensor):
            yield item["image"]
        else:
            raise ValueError(
                "data must be a tensor or yield tensors, (images, ...) tuples or dicts with "
                f"an 'image' tensor; got a {type(item).__name__}"
            )


class _LayerTap:
    """Runs ``forward_intermediates`` and collects the named layers, pooled.

    Names that are keys of ``forward_intermediates``'s output are taken from it; any other
    name must be a submodule (``"conv1"``, ``"layer1.0.conv2"``), whose output is caught
    with a forward hook (and must run exactly once per forward).
    """

    def __init__(self, model: nn.Module, names: Sequence[str] | None, pooling: Pooling) -> None:
        if not callable(getattr(model, "forward_intermediates", None)):
            raise ValueError(
                f"{type(model).__name__} has no forward_intermediates(x) -> dict[str, Tensor]"
            )
        self.model = model
        self.names = None if names is None else list(names)
        if self.names is not None and (not self.names or len(set(self.names)) != len(self.names)):
            raise ValueError(f"layer names must be non-empty and unique, got {self.names}")
        self.pooling = pooling
        self.device = _model_device(model)
        self._hooked: list[str] = []
        self._caught: dict[str, list[Tensor]] = {}

    def setup(self, probe: Tensor) -> list[str]:
        """Resolve the names on one example; returns the final layer list."""
        keys = list(self.model.forward_intermediates(probe[:1].to(self.device)).keys())
        if self.names is None:
            self.names = keys
        modules = dict(self.model.named_modules())
        for name in self.names:
            if name in keys:
                continue
            if name not in modules or name == "":
                raise ValueError(
                    f"layer {name!r} of {type(self.model).__name__} is neither an output of "
                    f"forward_intermediates ({keys}) nor a submodule name"
                )
            self._hooked.append(name)
        return self.names

    def __call__(self, x: Tensor) -> list[Tensor]:
        handles = []
        self._caught = {name: [] for name in self._hooked}
        modules = dict(self.model.named_modules())

        def make_hook(name: str):
            def hook(_mod: nn.Module, _inp: object, out: object) -> None:
                if not isinstance(out, Tensor):
                    raise ValueError(
                        f"module {name!r} returns a {type(out).__name__}, not a tensor; "
                        "pick a module whose output is one feature map"
                    )
                # Pool now: a later in-place op (ReLU) may overwrite `out`; clone a view.
                f = _pool(out, self.pooling)
                self._caught[name].append(f.clone() if f.data_ptr() == out.data_ptr() else f)

            return hook

        try:
            for name in self._hooked:
                handles.append(modules[name].register_forward_hook(make_hook(name)))
            inter = self.model.forward_intermediates(x.to(self.device))
        finally:
            for h in handles:
                h.remove()
        feats = []
        assert self.names is not None
        for name in self.names:
            if name in inter:
                feats.append(_pool(inter[name], self.pooling))
                continue
            got = self._caught[name]
            if len(got) != 1:
                raise ValueError(
                    f"module {name!r} ran {len(got)} times in one forward; CKA needs a module "
                    "that runs exactly once (a shared ReLU does not)"
                )
            feats.append(got[0])
        return feats


@torch.no_grad()
def layer_cka(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Tensor | Iterable[object],
    *,
    layers_a: Sequence[str] | None = None,
    layers_b: Sequence[str] | None = None,
    kernel: Kernel = "linear",
    pooling: Pooling = "avg",
    debiased: bool = False,
    sigma_frac: float = 1.0,
    batch_size: int = 64,
) -> LayerCKA:
    """CKA matrix between the layers of two encoders on the same data.

    Both models run in eval mode (restored afterwards) under ``no_grad``, each on the
    device of its parameters; the batches are moved there. Pass the same model twice for
    the layer-by-layer self-similarity of one encoder (it then runs once per batch).

    Layers are named by the keys of ``forward_intermediates(x)`` (ResNet: ``stem``,
    ``layer1`` .. ``layer4``; default: all of them) or by submodule names, caught with
    forward hooks (study A's ``conv1``, ``layer1.0.conv1``, ``layer1.0.conv2``).

    How activations become ``(n, p)`` features (``pooling``):
        ``"avg"`` (default): global average over the spatial positions of a conv map
        ``(B, C, H, W) -> (B, C)`` (tokens for ``(B, T, D)`` ViT outputs). Cheap and
        size-independent, but it discards where in the image a feature fires.
        ``"flatten"``: ``(B, C * H * W)``, keeping the spatial layout (Kornblith et al.'s
        choice for conv layers); memory ``n * C * H * W`` floats per layer.

    How CKA is computed (``kernel``):
        ``"linear"`` with ``"avg"``: streamed exactly over the batches in feature space
        (nothing per example is kept). Otherwise (RBF, or flattened maps) every layer's
        features are kept on the CPU in float32 and turned into an ``(n, n)`` float64 Gram
        matrix at the end.

    Args:
        model_a: encoder with ``forward_intermediates``.
        model_b: the other encoder (may be ``model_a``).
        data: images ``(N, C, H, W)`` (split into ``batch_size`` batches), or an iterable
            of batches: tensors, ``(images, ...)`` tuples or dicts with ``"image"``.
        layers_a: layer names of model A (default: every ``forward_intermediates`` key).
        layers_b: layer names of model B (default: every ``forward_intermediates`` key, or
            ``layers_a`` when ``model_b is model_a``).
        kernel: ``"linear"`` or ``"rbf"``.
        pooling: ``"avg"`` or ``"flatten"``, see above.
        debiased: unbiased HSIC (see the module docstring).
        sigma_frac: RBF bandwidth as a fraction of the median distance.
        batch_size: batch size when ``data`` is a tensor.

    Returns:
        :class:`LayerCKA`.
    """
    if kernel not in ("linear", "rbf"):
        raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
    if pooling not in ("avg", "flatten"):
        raise ValueError(f"pooling must be 'avg' or 'flatten', got {pooling!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    sigma_frac = _check_sigma_frac(sigma_frac)
    same = model_a is model_b and (
        layers_b is None or (layers_a is not None and list(layers_a) == list(layers_b))
    )
    tap_a = _LayerTap(model_a, layers_a, pooling)
    tap_b = tap_a if same else _LayerTap(model_b, layers_b, pooling)
    streaming = kernel == "linear" and pooling == "avg"

    modes = {m: m.training for m in (model_a, model_b)}
    for m in modes:
        m.eval()
    try:
        names_a: list[str] = []
        names_b: list[str] = []
        acc: _LinearCKAMatrix | None = None
        kept_a: list[list[Tensor]] = []
        kept_b: list[list[Tensor]] = []
        n = 0
        for x in _batches(data, batch_size):
            if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[0] == 0:
                raise ValueError(f"every batch must be a non-empty (B, ...) tensor, got {x!r}")
            if not names_a:
                names_a = tap_a.setup(x)
                names_b = names_a if same else tap_b.setup(x)
                acc = _LinearCKAMatrix(len(names_a), len(names_b), debiased)
                kept_a = [[] for _ in names_a]
                kept_b = [[] for _ in names_b]
            fa = tap_a(x)
            fb = fa if same else tap_b(x)
            n += x.shape[0]
            if streaming:
                assert acc is not None
                acc.update(fa, fb)
            else:
                for keep, f in zip(kept_a, fa, strict=True):
                    keep.append(f.float().cpu())
                if not same:
                    for keep, f in zip(kept_b, fb, strict=True):
                        keep.append(f.float().cpu())
    finally:
        for m, training in modes.items():
            m.train(training)

    if n == 0:
        raise ValueError("data is empty")
    _check_n(n, debiased)
    if streaming:
        assert acc is not None
        matrix = acc.compute().cpu()
    else:

        def unit_gram(parts: list[Tensor]) -> Tensor:
            gram = gram_linear(torch.cat(parts))
            if kernel == "rbf":
                gram = _rbf_from_linear_gram(gram, sigma_frac)
            return _normalized(center_gram(gram, debiased)).flatten()

        ga = torch.stack([unit_gram(p) for p in kept_a])
        gb = ga if same else torch.stack([unit_gram(p) for p in kept_b])
        matrix = ga @ gb.T
    return LayerCKA(matrix, list(names_a), list(names_b), n)

"""2-D embeddings of encoder features: PCA always, t-SNE when scikit-learn is installed.

PCA: features centred, the top two right singular vectors (``torch.linalg.svd`` in
float64), signs fixed so that each component's largest-magnitude loading is positive
(deterministic across runs). t-SNE: ``sklearn.manifold.TSNE`` on the standardised
features (2 components, PCA initialisation, perplexity ``min(30, (n - 1) / 3)``, seeded);
without scikit-learn it is skipped and the command says so.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

__all__ = ["pca_2d", "tsne_2d", "tsne_available"]


def pca_2d(x: Tensor) -> tuple[Tensor, Tensor]:
    """The first two principal components of ``x (n, d)``.

    Returns:
        ``(coords (n, 2) float64, explained (2,))``: the projections and the share of the
        total variance each component explains (zeros when ``x`` is constant; a missing
        second component, ``d == 1`` or ``n == 1``, is zeros).
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be non-empty (n, d) features, got shape {tuple(x.shape)}")
    xc = x.double() - x.double().mean(0)
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    k = min(2, vh.shape[0])
    comps = vh[:k]
    idx = comps.abs().argmax(dim=1)
    signs = torch.sign(comps[torch.arange(k), idx])
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    coords = xc @ (comps * signs[:, None]).T
    total = (s * s).sum()
    explained = (s[:k] ** 2) / total if total > 0 else torch.zeros(k, dtype=torch.float64)
    if k < 2:
        coords = torch.cat([coords, torch.zeros(len(x), 2 - k, dtype=torch.float64)], 1)
        explained = torch.cat([explained, torch.zeros(2 - k, dtype=torch.float64)])
    return coords, explained


def tsne_available() -> bool:
    """Whether scikit-learn (for t-SNE) is importable."""
    return importlib.util.find_spec("sklearn") is not None


def tsne_2d(x: Tensor, seed: int = 0) -> Tensor:
    """t-SNE of ``x (n, d)`` to ``(n, 2)`` float64 with scikit-learn (see the module
    docstring). Needs ``n >= 4``.

    Raises:
        ImportError: scikit-learn is not installed.
    """
    from sklearn.manifold import TSNE

    n = x.shape[0]
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 samples, got {n}")
    xd = x.double()
    std = xd.std(0)
    xs = ((xd - xd.mean(0)) / torch.where(std > 1e-12, std, torch.ones_like(std))).numpy()
    tsne = TSNE(n_components=2, init="pca", perplexity=min(30.0, (n - 1) / 3), random_state=seed)
    return torch.from_numpy(tsne.fit_transform(xs)).double()

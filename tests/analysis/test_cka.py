"""CKA: textbook formulas (explicit H, Song et al.'s unbiased HSIC) as oracles, invariances,
streaming, and the layer matrix of two tiny ResNets."""

import math

import numpy as np
import pytest
import torch

from radengine.analysis.cka import (
    LinearCKAAccumulator,
    center_gram,
    cka_from_grams,
    gram_rbf,
    layer_cka,
    linear_cka,
    rbf_cka,
)
from radengine.models import resnet18
from tests.conftest import DEVICES


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models and matrices: intra-op threads only add synchronisation on busy cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _hsic_biased(kx, ky):
    n = kx.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(kx @ h @ ky @ h) / (n - 1) ** 2


def _hsic_unbiased(kx, ky):
    # Song et al. (2012), eq. 5, on the Gram matrices with zeroed diagonals.
    n = kx.shape[0]
    kx, ky = kx.copy(), ky.copy()
    np.fill_diagonal(kx, 0)
    np.fill_diagonal(ky, 0)
    one = np.ones(n)
    return (
        np.trace(kx @ ky)
        + (one @ kx @ one) * (one @ ky @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * (one @ kx @ ky @ one)
    ) / (n * (n - 3))


def _cka_ref(kx, ky, debiased):
    h = _hsic_unbiased if debiased else _hsic_biased
    return h(kx, ky) / math.sqrt(h(kx, kx) * h(ky, ky))


def _rbf_ref(x, frac):
    sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return np.exp(-sq / (2 * frac**2 * np.median(sq)))


def _pair(gen, n=40, p=12, q=9, noise=0.5):
    x = torch.randn(n, p, generator=gen, dtype=torch.float64)
    y = x[:, :q] @ torch.randn(q, q, generator=gen, dtype=torch.float64)
    return x, y + noise * torch.randn(n, q, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("debiased", [False, True])
def test_linear_and_rbf_cka_match_textbook_formulas(gen, debiased):
    x, y = _pair(gen)
    xn, yn = x.numpy(), y.numpy()
    want = _cka_ref(xn @ xn.T, yn @ yn.T, debiased)
    assert linear_cka(x, y, debiased=debiased).item() == pytest.approx(want, rel=1e-10)
    for frac in (0.4, 1.0):
        want = _cka_ref(_rbf_ref(xn, frac), _rbf_ref(yn, frac), debiased)
        got = rbf_cka(x, y, sigma_frac=frac, debiased=debiased)
        assert got.item() == pytest.approx(want, rel=1e-10)
    # The U-centred inner product is n (n - 3) times the unbiased HSIC.
    kx, ky = torch.from_numpy(xn @ xn.T), torch.from_numpy(yn @ yn.T)
    n = x.shape[0]
    inner = (center_gram(kx, unbiased=True) * center_gram(ky, unbiased=True)).sum().item()
    want = _hsic_unbiased(kx.numpy(), ky.numpy())
    assert inner / (n * (n - 3)) == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_cka_of_a_representation_with_itself_is_one(gen, device):
    x = torch.randn(30, 20, generator=gen).to(device)
    for debiased in (False, True):
        assert linear_cka(x, x, debiased=debiased).item() == pytest.approx(1.0, abs=1e-12)
        assert rbf_cka(x, x, debiased=debiased).item() == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x).device.type == device


def test_linear_cka_invariances(gen):
    x, y = _pair(gen, n=50, p=16, q=10)
    base = linear_cka(x, y).item()
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen, dtype=torch.float64))
    assert linear_cka(x @ q, y).item() == pytest.approx(base, rel=1e-12)
    assert linear_cka(3.7 * x, 0.01 * y).item() == pytest.approx(base, rel=1e-12)
    assert linear_cka(x + 100.0, y - 3.0).item() == pytest.approx(base, rel=1e-9)  # centring
    # Not invariant to a general invertible map (that would be CCA): a badly scaled one
    # moves it a lot.
    a = torch.randn(16, 16, generator=gen, dtype=torch.float64) @ torch.diag(
        torch.logspace(-2, 2, 16, dtype=torch.float64)
    )
    assert abs(linear_cka(x @ a, y).item() - base) > 0.05
    assert abs(linear_cka(x @ a, x).item() - 1.0) > 0.05


def test_rbf_cka_is_in_unit_interval_and_handles_duplicates(gen):
    for _ in range(5):
        x = torch.randn(25, 7, generator=gen)
        y = torch.randn(25, 3, generator=gen) ** 3
        v = rbf_cka(x, y, sigma_frac=0.2).item()
        assert 0.0 <= v <= 1.0
    # More than half of all pairs coincide: median distance 0, the sigma -> 0 limit.
    x = torch.zeros(10, 3)
    x[0] = 1.0
    g = gram_rbf(x)
    assert torch.isfinite(g).all() and g[0, 1] == 0 and g[2, 3] == 1
    # A constant representation has no CKA.
    assert math.isnan(linear_cka(torch.ones(10, 3), torch.randn(10, 2, generator=gen)).item())


def test_feature_space_and_gram_paths_agree(gen):
    # Wide features (p > n) take the Gram path, narrow ones the feature-space path.
    x = torch.randn(12, 300, generator=gen, dtype=torch.float64)
    y = x[:, :40] @ torch.randn(40, 5, generator=gen, dtype=torch.float64)
    for debiased in (False, True):
        wide = linear_cka(x, y, debiased=debiased).item()
        grams = cka_from_grams(x @ x.T, y @ y.T, debiased).item()
        assert wide == pytest.approx(grams, rel=1e-12)
        acc = LinearCKAAccumulator(debiased)  # always feature space
        acc.update(x, y)
        assert acc.compute().item() == pytest.approx(grams, rel=1e-10)


@pytest.mark.parametrize("debiased", [False, True])
def test_streaming_linear_cka_is_exact(gen, debiased):
    x, y = _pair(gen, n=101)
    x, y = x + 50.0, y * 4 - 20.0  # offsets the accumulator must centre away
    acc = LinearCKAAccumulator(debiased)
    for i in range(0, 101, 13):
        acc.update(x[i : i + 13], y[i : i + 13])
    assert acc.num_samples == 101
    assert acc.compute().item() == pytest.approx(
        linear_cka(x, y, debiased=debiased).item(), rel=1e-11
    )


def _tiny_pair(gen):
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=gen)))
    a, b = resnet18(num_classes=0), resnet18(num_classes=0)
    data = torch.randn(24, 3, 16, 16, generator=gen)
    return a, b, data


def _pooled(model, data, names, flatten=False):
    model.eval()
    with torch.no_grad():
        feats = model.forward_intermediates(data)
    f = [feats[k] for k in names]
    return [t.flatten(1) if flatten else t.mean((2, 3)) for t in f]


def test_layer_cka_matrix_on_two_tiny_resnets(gen):
    a, b, data = _tiny_pair(gen)
    a.train()
    b.eval()
    res = layer_cka(a, b, data, batch_size=7)
    names = ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert res.layers_a == names and res.layers_b == names and res.num_samples == 24
    assert res.matrix.shape == (5, 5) and res.matrix.dtype == torch.float64
    assert a.training and not b.training  # modes restored
    fa, fb = _pooled(a, data, names), _pooled(b, data, names)
    want = torch.tensor([[linear_cka(x, y).item() for y in fb] for x in fa], dtype=torch.float64)
    torch.testing.assert_close(res.matrix, want, rtol=1e-9, atol=1e-12)
    # Batches from an iterable of (images, labels) give the same matrix.
    loader = [(data[i : i + 10], torch.zeros(10)) for i in range(0, 24, 10)]
    torch.testing.assert_close(layer_cka(a, b, loader).matrix, res.matrix, rtol=1e-9, atol=1e-12)
    # RBF on flattened maps, debiased, selected layers: the Gram path.
    res = layer_cka(
        a, b, data, layers_a=["stem", "layer2"], layers_b=["layer4"], kernel="rbf",
        pooling="flatten", debiased=True, sigma_frac=0.5,
    )  # fmt: skip
    fa = _pooled(a, data, ["stem", "layer2"], flatten=True)
    fb = _pooled(b, data, ["layer4"], flatten=True)
    want = torch.tensor([[rbf_cka(x, fb[0], sigma_frac=0.5, debiased=True).item()] for x in fa])
    torch.testing.assert_close(res.matrix, want.double(), rtol=1e-5, atol=1e-7)


def test_layer_cka_self_similarity_and_hooked_modules(gen):
    a, _, data = _tiny_pair(gen)
    names = ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1"]
    res = layer_cka(a, a, data, layers_a=names, layers_b=names)
    torch.testing.assert_close(res.matrix.diagonal(), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(res.matrix, res.matrix.T)
    # conv1 taken by a hook equals conv1 computed by hand.
    a.eval()
    with torch.no_grad():
        conv1 = a.conv1(data).mean((2, 3))
        l1 = a.forward_intermediates(data)["layer1"].mean((2, 3))
    assert res.matrix[0, 3].item() == pytest.approx(linear_cka(conv1, l1).item(), rel=1e-6)
    for kernel, pooling in (("rbf", "avg"), ("linear", "flatten")):
        r = layer_cka(a, a, data, layers_a=names[:2], kernel=kernel, pooling=pooling)
        assert r.layers_b == r.layers_a == names[:2]
        torch.testing.assert_close(r.matrix.diagonal(), torch.ones(2, dtype=torch.float64))


def test_cka_errors_name_the_problem(gen):
    a, b, data = _tiny_pair(gen)
    x = torch.randn(10, 3, generator=gen)
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(x, x[:9])
    with pytest.raises(ValueError, match="at least 4"):
        linear_cka(x[:3], x[:3], debiased=True)
    with pytest.raises(ValueError, match="x must be"):
        linear_cka(x[0], x[0])
    with pytest.raises(ValueError, match="sigma_frac"):
        rbf_cka(x, x, sigma_frac=0.0)
    with pytest.raises(ValueError, match="pooling"):
        layer_cka(a, b, data, pooling="max")
    with pytest.raises(ValueError, match="nope"):
        layer_cka(a, b, data, layers_a=["nope"])
    with pytest.raises(ValueError, match="ran 2 times"):
        layer_cka(a, b, data[:4], layers_a=["layer1.0.relu"])

"""`radengine analyze cka|domain|embed` end to end on tiny built-in-style stores (with their
PNG + SVG figures), the domain probe and PCA as functions. The figure functions themselves:
test_plots.py."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from radengine.analysis.domain import linear_probe
from radengine.analysis.embed import pca_2d, tsne_available
from radengine.cli import main
from radengine.data.builtin import write_synthetic_ct_store, write_synthetic_natural_store
from tests.analysis.test_plots import SVG, check_files, group, points_drawn, texts


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    # A new experiment's artifact root is ./mlruns of the working directory.
    monkeypatch.chdir(tmp_path)


TINY = ["--size", "32", "--tracking", "none"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis-stores")
    ct = write_synthetic_ct_store(root / "ct", patients=4, slices=2, size=32)
    nat = write_synthetic_natural_store(root / "nat", images=48, classes=4, size=32)
    return ct.path, nat.path


def _figure(out, stem):
    """The SVG root of the figure ``out/<stem>.{png,svg}``, both files checked."""
    return check_files(out / f"{stem}.png", out / f"{stem}.svg")


# ---------------------------------------------------------------------------------- CKA


def test_cka_same_encoder_has_ones_on_the_diagonal(stores, tmp_path, capsys):
    ct, _ = stores
    out = tmp_path / "cka"
    args = ["analyze", "cka", "--a", "scratch", "--b", "scratch", "--data", str(ct)]
    assert main([*args, "--samples", "12", "--out", str(out), *TINY]) == 0
    assert "linear CKA on 12 images" in capsys.readouterr().out
    with open(out / "cka.csv") as f:
        rows = list(csv.reader(f))
    names = rows[0][1:]
    assert names == ["stem", "layer1", "layer2", "layer3", "layer4"]
    matrix = torch.tensor([[float(v) for v in r[1:]] for r in rows[1:]])
    assert matrix.shape == (5, 5)
    torch.testing.assert_close(matrix.diagonal(), torch.ones(5, dtype=matrix.dtype))
    assert torch.allclose(matrix, matrix.T, atol=1e-9) and (matrix <= 1 + 1e-9).all()
    fig = _figure(out, "cka")
    assert fig.find(f"{SVG}title").text == "linear CKA: scratch vs scratch (12 images)"
    found = texts(fig)
    assert found.count("1.00") >= 5 and "B: scratch" in found and "linear CKA" in found
    assert all(found.count(n) == 2 for n in names)  # the rows and the columns
    assert group(fig, "colorbar") is not None


def test_cka_early_layer_preset_two_inits_logged_to_mlflow(stores, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    ct, _ = stores
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # two different scratch encoders: B is a ResNet-18 with other weights (a file)
    torch.manual_seed(123)
    from radengine.models import create_model

    other = create_model("resnet18", num_classes=0)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    args = ["analyze", "cka", "--a", "scratch", "--b", str(tmp_path / "other.pt")]
    args += ["--data", str(ct), "--samples", "10", "--preset", "early-layers", "--size", "32"]
    assert main([*args, "--tracking", uri, "--out", str(tmp_path / "o")]) == 0
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("radengine-analysis")
    (run,) = client.search_runs([exp.experiment_id])
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["stage"] == "analysis" and tags["analysis"] == "cka" and tags["kernel"] == "rbf"
    assert set(metrics) == {"cka/conv1", "cka/layer1.0.conv1", "cka/layer1.0.conv2",
                            "cka/diagonal_mean"}  # fmt: skip
    assert all(0 <= v < 1 for v in metrics.values())  # different weights: not identical
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "cka")}
    assert arts == {"cka/cka.png", "cka/cka.svg", "cka/cka.csv", "cka/cka.json"}
    logged = client.download_artifacts(run.info.run_id, "cka", str(tmp_path / "logged"))
    fig = check_files(Path(logged) / "cka.png", Path(logged) / "cka.svg")  # via log_figure
    assert "rbf CKA" in texts(fig) and "layer1.0.conv2" in texts(fig)


def test_cka_errors(stores, tmp_path, capsys):
    ct, _ = stores
    base = ["analyze", "cka", "--a", "scratch", "--b", "scratch", "--data", str(ct), *TINY]
    assert main([*base, "--layers", "nope", "--samples", "8", "--out", str(tmp_path)]) == 2
    assert "layer 'nope'" in capsys.readouterr().err
    assert main([*base, "--samples", "2"]) == 2
    assert "at least 4" in capsys.readouterr().err
    assert main([*base[:-4], "--data", str(tmp_path / "missing"), *TINY]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["analyze", "cka", "--a", str(tmp_path / "no.pt"), "--b", "scratch", *TINY]) == 2
    assert "neither 'scratch'" in capsys.readouterr().err


# ------------------------------------------------------------------------------- domain


def test_linear_probe_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    d = 16
    shift = torch.zeros(d)
    shift[3] = 8.0  # Bayes error ~3e-5
    x0 = torch.randn(200, d, generator=g)
    x1 = torch.randn(200, d, generator=g) + shift
    y = torch.cat([torch.zeros(100), torch.ones(100)])
    res = linear_probe(torch.cat([x0[:100], x1[:100]]), y, torch.cat([x0[100:], x1[100:]]), y)
    assert res.test_accuracy > 0.95 and res.train_accuracy > 0.95
    assert (res.num_train, res.num_test) == (200, 200)
    # labels independent of the features: near chance on held-out data
    noise = linear_probe(x0[:100], y[::2].repeat(2)[:100], x0[100:], y[1::2].repeat(2)[:100])
    assert noise.test_accuracy < 0.75
    with pytest.raises(ValueError, match="one label per sample"):
        linear_probe(x0, y[:3], x0, y[:200])


def test_domain_cli_end_to_end(stores, tmp_path, capsys):
    ct, nat = stores
    out = tmp_path / "dom"
    args = ["analyze", "domain", "--init", "scratch", "--ct", str(ct), "--natural", str(nat)]
    assert main([*args, "--samples", "24", "--out", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    with open(out / "domain.csv") as f:
        rows = {r["layer"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["stem", "layer1", "layer2", "layer3", "layer4", "pooled"]
    for r in rows.values():
        assert 0.0 <= float(r["test_accuracy"]) <= 1.0
        assert int(r["num_train"]) + int(r["num_test"]) == 48
    # synthetic CT and synthetic shapes are easy to tell apart from the stem on
    assert float(rows["stem"]["test_accuracy"]) > 0.9
    assert "held-out accuracy" in text
    fig = _figure(out, "domain")
    assert len([e for e in fig.iter() if e.get("id", "").startswith("bar-")]) == 12
    assert texts(group(fig, "legend"))[1:] == ["held-out accuracy", "train accuracy"]
    assert texts(group(fig, "legend"))[0].startswith("chance (")
    assert "CT vs natural linear probe: scratch" in texts(fig) and "pooled" in texts(fig)
    # the stores the wrong way round
    assert main(["analyze", "domain", "--ct", str(nat), "--natural", str(ct), *TINY]) == 2
    assert "not a CT store" in capsys.readouterr().err


# -------------------------------------------------------------------------------- embed


def test_embed_figures_have_one_point_per_image(stores, tmp_path, capsys):
    ct, nat = stores
    out = tmp_path / "emb"
    args = ["analyze", "embed", "--init", "scratch", "--data", str(ct), "--data", str(nat)]
    assert main([*args, "--samples", "20", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "40 points; figures (.png, .svg): embed_pca_domain, embed_pca_label" in printed
    methods = ["pca"]
    if tsne_available():
        methods.append("tsne")
    else:
        assert "t-SNE skipped: scikit-learn is not installed" in printed
    for method in methods:
        for by in ("domain", "label"):
            assert points_drawn(_figure(out, f"embed_{method}_{by}")) == 40
    fig = _figure(out, "embed_pca_domain")
    assert texts(group(fig, "legend-colour")) == ["domain", "ct", "natural"]
    assert "PCA of scratch features, by domain" in texts(fig)
    fig = _figure(out, "embed_pca_label")
    assert texts(group(fig, "legend-marker")) == ["domain", "ct", "natural"]
    with open(out / "embed.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and {r["domain"] for r in rows} == {"ct", "natural"}
    assert {r["label"] for r in rows if r["domain"] == "ct"} <= {
        "head_neck", "thorax", "abdomen", "extremities", "hip_pelvis", "spine"
    }  # fmt: skip


def test_pca_2d_matches_svd_and_explains_variance():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 3, generator=g) * torch.tensor([5.0, 2.0, 0.1])
    coords, explained = pca_2d(x)
    assert coords.shape == (50, 2)
    assert explained[0] > explained[1] > 0 and explained.sum() <= 1
    # the first component is (up to sign) the x-axis, the direction of most variance
    xc = x.double() - x.double().mean(0)
    assert abs(torch.corrcoef(torch.stack([coords[:, 0], xc[:, 0]]))[0, 1]) > 0.99
    coords1, _ = pca_2d(torch.ones(5, 1))
    assert coords1.shape == (5, 2)

"""The pipeline benchmark: both pipelines produce their measurements on a tiny store, and the
study-style baseline's per-sample transform does what it claims (torchvision's ops). No
timing is asserted."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from radengine.data.builtin import write_synthetic_ct_store
from radengine.engine import pipeline_bench as pb
from radengine.ops.augment import _adjust_hue


@pytest.fixture(scope="module")
def ct_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("stores") / "ct"
    write_synthetic_ct_store(path, patients=8, slices=6, size=32)
    return path


def _settings(store, **kw) -> pb.BenchSettings:
    args = pb.build_parser().parse_args(
        ["--device", "cpu", "--arch", "resnet18", "--size", "24", "--batch", "8",
         "--steps", "2", "--warmup", "1", "--workers", "1", "--data", str(store)]
    )  # fmt: skip
    s = pb.resolve(args)
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def test_both_pipelines_produce_measurements(ct_store, tmp_path):
    s = _settings(ct_store)
    from radengine.engine.setup import cpu_has_native_bf16

    ours_dtype = "bfloat16" if cpu_has_native_bf16() else "float32"  # precision auto
    assert s.domain == "ct" and s.dtype == ours_dtype and s.shape == "resnet18 b8 24px w1"
    assert s.baseline == "study" and s.baseline_dtype == "float32"  # the study's code on CPU
    results = pb.measure(s)
    assert list(results) == [pb.OURS, pb.BASELINE]
    for r in results.values():
        assert len(r.step_times) == s.steps  # warm-up dropped
        assert all(0 <= w <= t for w, t in r.step_times)
        assert all(x > 0 and math.isfinite(x) for x in r.img_per_s)
        assert 0 <= r.data_wait_fraction <= 1
        assert math.isfinite(r.loss)

    rows = pb.metric_rows(results, s)
    assert {(r[0], r[3]) for r in rows} == {
        (pb.OURS, "img_per_s"), (pb.OURS, "data_wait_fraction"),
        (pb.BASELINE, "img_per_s"), (pb.BASELINE, "data_wait_fraction"),
        (pb.OURS, "speedup_vs_study_baseline"),
    }  # fmt: skip
    for row in rows:
        assert row[5] <= row[6] <= row[7]  # p20 <= p50 <= p80
        assert row[2] == (s.baseline_dtype if row[0] == pb.BASELINE else s.dtype)
    s.baseline = "same"
    assert {r[0] for r in pb.metric_rows(results, s)} == {pb.OURS, "study-baseline-same-model"}
    text = pb.summary(results, s)
    assert "speedup" in text and pb.BASELINE in text

    path = pb.append_csv(tmp_path / "r.csv", rows, s.device)
    with path.open() as f:
        written = list(csv.DictReader(f))
    assert list(written[0]) == pb.FIELDS
    assert len(written) == len(rows)
    assert {w["op"] for w in written} == {"pipeline"}
    assert written[0]["device"].startswith("cpu")


def test_cli_runs_one_pipeline_and_appends_csv(ct_store, tmp_path, capsys):
    out = tmp_path / "bench.csv"
    argv = ["--device", "cpu", "--size", "24", "--batch", "8", "--steps", "1", "--warmup", "0",
            "--workers", "0", "--data", str(ct_store), "--only", "baseline", "--csv", str(out),
            "--breakdown"]  # fmt: skip
    assert pb.run(argv) == 0
    printed = capsys.readouterr().out
    assert pb.BASELINE in printed
    assert "model_step" in printed and "baseline_transforms" in printed
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert {r["metric"] for r in rows} == {"img_per_s", "data_wait_fraction"}
    assert {r["backend"] for r in rows} == {pb.BASELINE}
    assert rows[0]["shape"] == "resnet18 b8 24px w0"
    assert pb.run(["--device", "cpu", "--batch", "0"]) == 2
    assert pb.run(["--device", "cpu", "--data", str(tmp_path / "missing")]) == 2


def test_baseline_dataset_and_loader_give_two_views_per_slice(ct_store):
    s = _settings(ct_store)
    cfg = pb.config(s)
    store, idx = pb._train_indices(s, cfg)
    loader = pb._baseline_loader(s, store, idx)
    v1, v2 = next(iter(loader))
    for v in (v1, v2):
        assert v.shape == (8, 3, 24, 24) and v.dtype == torch.float32
        assert float(v.min()) >= 0 and float(v.max()) <= 1
    assert not torch.equal(v1, v2)


def test_study_input_is_minmax_over_the_whole_slice_repeated_to_3():
    raw = np.array([[-1000, 0], [500, 3000]], dtype=np.int16)
    x = pb.study_input(raw)
    assert x.shape == (3, 2, 2) and x.dtype == torch.float32
    expected = (raw.astype(np.float32) + 1000) / 4000
    for c in range(3):
        np.testing.assert_allclose(x[c].numpy(), expected, rtol=1e-6)
    assert torch.equal(pb.study_input(np.full((4, 4), 7, np.int16)), torch.zeros(3, 4, 4))
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    y = pb.study_input(rgb)
    assert y.shape == (3, 2, 3)
    torch.testing.assert_close(y, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)


def test_transform_without_randomness_is_the_antialiased_resize():
    torch.manual_seed(0)
    img = pb.study_input(np.random.default_rng(0).integers(-1024, 2000, (48, 48)).astype(np.int16))
    t = pb.StudyTransform(20, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=0.0,
                          gray_p=0.0)  # fmt: skip
    want = F.interpolate(img[None], size=(20, 20), mode="bilinear", antialias=True)[0]
    v1, v2 = t(img)
    torch.testing.assert_close(v1, want)
    torch.testing.assert_close(v2, want)
    t.hflip_p = 1.0
    torch.testing.assert_close(t(img)[0], want.flip(-1))


def test_study_transform_views_shapes_ranges_and_gray_stays_gray():
    torch.manual_seed(1)
    raw = np.random.default_rng(1).integers(-1024, 3000, (40, 56)).astype(np.int16)
    img = pb.study_input(raw)
    t = pb.StudyTransform(24)
    for _ in range(20):
        views = t(img)
        assert len(views) == 2
        for v in views:
            assert v.shape == (3, 24, 24) and v.dtype == torch.float32
            assert float(v.min()) >= 0 and float(v.max()) <= 1
            # a CT slice repeated to 3 channels stays gray through jitter and grayscale
            torch.testing.assert_close(v[1:], v[:1].expand(2, -1, -1), atol=1e-3, rtol=0)
    # colour: the jitter ops change an RGB image
    rgb = torch.rand(3, 32, 32)
    t_jit = pb.StudyTransform(32, scale=(1, 1), ratio=(1, 1), hflip_p=0, jitter_p=1, gray_p=0)
    assert not torch.allclose(t_jit(rgb)[0], rgb)


def test_random_resized_crop_params_follow_torchvision():
    torch.manual_seed(2)
    H, W = 60, 90
    for _ in range(200):
        i, j, h, w = pb.random_resized_crop_params(H, W)
        assert i >= 0 and j >= 0 and i + h <= H and j + w <= W
        assert 0.08 * 0.8 <= h * w / (H * W) <= 1.0
        assert 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.25
    # no try fits: the centre crop clamped to the ratio range
    assert pb.random_resized_crop_params(10, 100, scale=(0.9, 1.0)) == (0, 43, 10, 13)


def test_colour_ops_are_torchvisions_formulas():
    torch.manual_seed(3)
    img = torch.rand(3, 16, 16)
    gray = 0.2989 * img[0] + 0.587 * img[1] + 0.114 * img[2]
    torch.testing.assert_close(pb.adjust_brightness(img, 1.5), (1.5 * img).clamp(0, 1))
    torch.testing.assert_close(
        pb.adjust_contrast(img, 0.5), (0.5 * img + 0.5 * gray.mean()).clamp(0, 1)
    )
    torch.testing.assert_close(pb.adjust_saturation(img, 0.3), (0.3 * img + 0.7 * gray).clamp(0, 1))
    for hue in (-0.2, 0.05, 0.2):
        # radengine's augment op implements the same torchvision hue formulas
        torch.testing.assert_close(
            pb.adjust_hue(img, hue), _adjust_hue(img[None], torch.tensor([hue]))[0],
            atol=1e-5, rtol=1e-5,
        )  # fmt: skip
    torch.testing.assert_close(pb.adjust_hue(img, 0.0), img, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- per method


@pytest.mark.parametrize("method", ["byol", "dino"])
def test_every_method_runs_in_both_pipelines(ct_store, method):
    """method=NAME: both pipelines train the method (its views, hooks and optimizer); the
    baseline makes each view with the method's per-view augmentation and size."""
    small = {
        "byol": ["model.proj_hidden=32", "ssl.pred_hidden=32"],
        "dino": ["model.proj_dim=64", "model.proj_hidden=32", "ssl.local_crops_number=2",
                 "ssl.local_crops_size=20"],
    }[method]  # fmt: skip
    args = pb.build_parser().parse_args(
        ["--device", "cpu", "--size", "24", "--batch", "8", "--steps", "1", "--warmup", "1",
         "--workers", "0", "--data", str(ct_store), f"method={method}", *small]
    )  # fmt: skip
    s = pb.resolve(args)
    assert s.method == method and s.shape.startswith(f"{method} resnet18 b8 24px")
    results = pb.measure(s)
    assert all(math.isfinite(r.loss) for r in results.values())
    from radengine.engine.setup import build_model

    cfg = pb.config(s)
    plan = pb._plan(cfg, build_model(cfg, 3))
    transform = pb.MethodTransform.of(plan)
    views = transform(torch.rand(3, 32, 32))
    assert [tuple(v.shape) for v in views] == [(3, n, n) for n in plan.sizes]
    assert [t.blur_p for t in transform.views[:2]] == [1.0, 0.1]
    assert [t.solarize_p for t in transform.views[:2]] == [0.0, 0.2]
    if method == "dino":
        assert plan.sizes == (24, 24, 20, 20) and transform.views[2].scale == (0.05, 0.4)
        assert transform.views[0].scale == (0.4, 1.0)


def test_the_baseline_refuses_augmentations_it_does_not_implement(ct_store):
    args = pb.build_parser().parse_args(
        ["--device", "cpu", "--size", "24", "--batch", "8", "--steps", "1", "--warmup", "0",
         "--workers", "0", "--data", str(ct_store), "--only", "baseline", "augment.preset=ct"]
    )  # fmt: skip
    with pytest.raises(pb.UnsupportedViewError, match=r"not .*rotate_p"):
        pb.measure(pb.resolve(args))


def test_gaussian_blur_is_the_2d_gaussian_convolution():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 20, 17, generator=g)
    sigma = 1.3
    r = math.ceil(3 * sigma)
    k = torch.arange(-r, r + 1, dtype=torch.float32)
    w1 = torch.exp(-(k**2) / (2 * sigma**2))
    w2 = torch.outer(w1, w1) / w1.sum() ** 2
    padded = F.pad(img.unsqueeze(0), (r, r, r, r), mode="reflect")
    direct = F.conv2d(padded, w2.expand(3, 1, -1, -1), groups=3).squeeze(0)
    torch.testing.assert_close(pb.gaussian_blur(img, sigma), direct, rtol=0, atol=1e-6)

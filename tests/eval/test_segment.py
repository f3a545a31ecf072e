"""Segmentation: the U-Net's shapes, masks resampled like the images, the Dice loss, and a
tiny run whose Dice is in [0, 1] and beats the untrained decoder; `eval segment` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from radengine.cli import main
from radengine.data.store import Store
from radengine.eval.config import load_eval_config
from radengine.eval.features import ViewSpec
from radengine.eval.finetune import evaluate, fit
from radengine.eval.segment import (
    SegmentationProblem,
    build_unet,
    resize_masks,
    soft_dice_loss,
)
from radengine.eval.tasks import build_task
from radengine.models import resnet18
from radengine.models.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("size", [32, 45, 64])
def test_unet_output_matches_the_input_size(size):
    net = UNet(resnet18(num_classes=0, in_chans=1), 5, decoder_channels=(32, 16, 16, 8, 8))
    assert net.encoder_channels == (64, 64, 128, 256, 512)
    out = net(torch.zeros(2, 1, size, size))
    assert out.shape == (2, 5, size, size)
    frozen = UNet(resnet18(num_classes=0), 3, freeze_encoder=True).train()
    assert not frozen.encoder.training and frozen.decoder.training
    assert not any(p.requires_grad for p in frozen.encoder.parameters())


def test_masks_follow_the_image_grid_and_dice_loss_bounds(gen):
    masks = torch.randint(0, 4, (3, 8, 8), generator=gen, dtype=torch.uint8)
    up = resize_masks(masks, 16)
    assert up.dtype == torch.int64 and torch.equal(up[:, ::2, ::2], masks.long())
    assert torch.equal(resize_masks(up, 8), masks.long())  # pixel centres map back
    perfect = torch.nn.functional.one_hot(up, 4).permute(0, 3, 1, 2).float() * 50
    assert float(soft_dice_loss(perfect, up)) < 1e-3
    assert float(soft_dice_loss(-perfect, up)) > 0.9


def test_a_tiny_segmentation_run_beats_the_untrained_decoder(ct_store):
    store = Store(ct_store)
    task = build_task(store, "segmentation", "segment", label_fraction=0.5, seed=0)
    cfg = load_eval_config(
        overrides=[
            "segment.epochs=4",
            "segment.batch_size=16",
            "segment.decoder_channels=[64, 32, 32, 16, 16]",
            "segment.lr=0.003",
        ]
    ).segment
    view = ViewSpec(size=32)
    torch.manual_seed(0)
    model = build_unet(resnet18(num_classes=0), task.num_outputs, cfg)
    problem = SegmentationProblem(task, view, cfg)
    ev = dict(device=torch.device("cpu"), amp=None, channels_last=False, batch_size=64)
    _, before = evaluate(model, problem, task.splits["test"], "test", **ev)
    res = fit(model, problem, cfg, seed=0, device=torch.device("cpu"), amp=None,
              channels_last=False)  # fmt: skip
    after = res.test
    for metrics in (before, after):
        assert 0.0 <= metrics["dice_mean"] <= 1.0
        assert all(0.0 <= v <= 1.0 for k, v in metrics.items() if k.startswith("dice/"))
    assert "dice/background" not in after and "dice/body" in after
    # 24 steps teach it the largest class (tissue vs air) and nothing much else yet
    assert after["dice_mean"] > before["dice_mean"]
    assert after["dice/body"] > max(0.6, before["dice/body"] + 0.15)
    assert res.tested == "last@4" and len(res.history) == 4


def test_eval_segment_end_to_end(ct_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["eval", "segment", "--init", "scratch", "--data", str(ct_store), "--tracking", "none"]
    extra = [
        "--out", str(tmp_path / "seg"), "progress=false", "input.size=32",
        "segment.epochs=1", "segment.max_steps=2", "segment.batch_size=8",
        "segment.freeze_encoder=true", "--label-fraction", "0.25",
    ]  # fmt: skip
    assert main([*args, *extra]) == 0
    res = json.loads((tmp_path / "seg" / "results.json").read_text())
    assert res["primary_metric"] == "test/dice_mean" and res["task"] == "segmentation"
    test = res["seeds"][0]["test"]
    assert 0 <= test["dice_mean"] <= 1 and not math.isnan(test["dice_global_mean"])
    names = Store(ct_store).meta["mask_classes"]
    assert {k.split("/", 1)[1] for k in test if k.startswith("dice/")} <= set(names[1:])
    assert res["seeds"][0]["details"]["freeze_encoder"] is True
    assert np.isfinite(test["dice_mean"])

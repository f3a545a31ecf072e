"""DINO and MoCo v3 with a ViT-S/16 backbone end to end: pretraining (multi-crop for DINO,
the frozen patch embedding for MoCo v3, the kNN monitor on ViT features), then kNN, linear
and finetuning evaluation of the run's encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from radengine.cli import main
from radengine.data.builtin import write_synthetic_ct_store

VIT = [
    "model.arch=vit_small_patch16",
    "augment.size=32",
    "optim.batch_size=8",
    "optim.epochs=1",
    "data.workers=0",
    "train.progress=false",
    "train.max_steps=2",
    "knn.every=1",
    "knn.bank=64",
    "knn.queries=32",
    "train.precision=fp32",
]
HEADS = {
    "dino": ["model.proj_dim=64", "model.proj_hidden=32", "ssl.bottleneck_dim=8",
             "ssl.local_crops_number=2", "ssl.local_crops_size=16"],
    "mocov3": ["model.proj_dim=8", "model.proj_hidden=32", "ssl.pred_hidden=32"],
}  # fmt: skip
QUIET = ["progress=false"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vit") / "ct"
    write_synthetic_ct_store(path, patients=10, slices=4, size=32)
    return path


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method", ["dino", "mocov3"])
def test_vit_pretraining_then_every_evaluation(store, tmp_path, method):
    run = tmp_path / "run"
    args = ["pretrain", "--data", str(store), "--out", str(run), "--tracking", "none"]
    assert main([*args, f"method={method}", *VIT, *HEADS[method]]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and len(summary["knn"]) >= 2  # the monitor ran on ViT features
    encoder = torch.load(run / "encoder.pt", weights_only=True)
    assert "pos_embed" in encoder and "cls_token" in encoder
    if method == "mocov3":  # the random patch projection stayed as initialised
        from radengine.config import load_pretrain_config
        from radengine.engine.setup import build_model

        cfg = load_pretrain_config(overrides=[f"method={method}", *VIT, *HEADS[method]])
        torch.manual_seed(cfg.seed)  # the trainer's init
        init = build_model(cfg, 3).backbone.state_dict()
        assert torch.equal(encoder["patch_embed.proj.weight"], init["patch_embed.proj.weight"])
        assert not torch.equal(
            encoder["blocks.0.attn.qkv.weight"], init["blocks.0.attn.qkv.weight"]
        )
    common = ["--init", str(run), "--data", str(store), "--tracking", "none", "--seeds", "0",
              "input.size=32", *QUIET]  # fmt: skip
    protocols = {
        "knn": [],
        "linear": ["linear.epochs=2"],
        "finetune": ["finetune.epochs=1", "finetune.batch_size=16", "finetune.max_steps=2"],
    }
    for protocol, extra in protocols.items():
        out = tmp_path / protocol
        assert main(["eval", protocol, *common, "--out", str(out), *extra]) == 0, protocol
        res = json.loads((out / "results.json").read_text())["seeds"][0]
        assert 0.0 <= res["test"]["accuracy"] <= 1.0, protocol

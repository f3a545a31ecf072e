"""Checkpoint import: layouts built here from radengine ResNets, round trips, errors."""

import pytest
import torch
from torch import nn

from radengine.eval.weights import convert_checkpoint, load_pretrained
from radengine.models import resnet18, resnet34, resnet50


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models: intra-op threads only add synchronisation (seconds per test on 2 busy
    # cores), so run them single-threaded and restore the setting afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _net(gen, num_classes=0, in_chans=3, factory=resnet18):
    """A ResNet with random weights *and* random BN statistics, in eval mode."""
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=gen)))
    model = factory(num_classes=num_classes, in_chans=in_chans)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5, generator=gen)
            m.bias.data.normal_(0, 0.1, generator=gen)
            m.running_mean.normal_(0, 0.1, generator=gen)
            m.running_var.uniform_(0.5, 1.5, generator=gen)
            m.num_batches_tracked.fill_(7)
    return model.eval()


def _same_features(a, b, gen, in_chans=3):
    x = torch.randn(2, in_chans, 24, 24, generator=gen)
    with torch.no_grad():
        return torch.equal(a.eval().forward_features(x), b.eval().forward_features(x))


def _prefixed(sd, prefix):
    return {prefix + k: v for k, v in sd.items()}


def test_torchvision_layout_round_trip_from_file(gen, tmp_path):
    src = _net(gen, num_classes=10)
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    dst = _net(gen)
    assert not _same_features(src, dst, gen)
    report = load_pretrained(dst, path, fmt="torchvision")
    assert _same_features(src, dst, gen)
    assert report.format == "torchvision" and report.prefix == "" and report.nesting == ()
    assert sorted(report.dropped_head) == ["fc.bias", "fc.weight"]
    assert not (report.missing or report.unexpected or report.ignored or report.filled)
    assert len(report.loaded) == len(dst.state_dict())
    # A model with its own fc keeps it; the checkpoint's fc is never loaded.
    dst10 = _net(gen, num_classes=10)
    fc_before = dst10.fc.weight.clone()
    report = load_pretrained(dst10, path)
    assert report.head_not_loaded == ["fc.weight", "fc.bias"]
    assert torch.equal(dst10.fc.weight, fc_before)
    assert _same_features(src, dst10, gen)


def test_moco_layout_round_trip_and_auto_detection(gen):
    q, k = _net(gen), _net(gen)
    sd = {
        **_prefixed(q.state_dict(), "module.encoder_q."),
        "module.encoder_q.fc.0.weight": torch.randn(512, 512),
        "module.encoder_q.fc.0.bias": torch.randn(512),
        "module.encoder_q.fc.2.weight": torch.randn(128, 512),
        "module.encoder_q.fc.2.bias": torch.randn(128),
        **_prefixed(k.state_dict(), "module.encoder_k."),
        "module.queue": torch.randn(128, 4096),
        "module.queue_ptr": torch.zeros(1, dtype=torch.long),
    }
    ckpt = {"epoch": 200, "arch": "resnet18", "state_dict": sd, "optimizer": {"state": {}}}
    for fmt in ("moco", "auto"):
        dst = _net(gen)
        report = load_pretrained(dst, ckpt, fmt=fmt)
        assert report.format == "moco" and report.prefix == "module.encoder_q."
        assert report.nesting == ("state_dict",)
        assert _same_features(q, dst, gen) and not _same_features(k, dst, gen)
        assert len(report.dropped_head) == 4
        assert (
            "module.queue" in report.ignored and "module.encoder_k.conv1.weight" in report.ignored
        )


def test_swav_dino_barlow_byol_simclr_prefixed_layouts(gen):
    src, other = _net(gen), _net(gen)
    sd, sd2 = src.state_dict(), other.state_dict()
    no_nbt = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    layouts = {
        "swav": {
            **_prefixed(no_nbt, "module."),
            "module.projection_head.0.weight": torch.randn(2048, 512),
            "module.prototypes.weight": torch.randn(3000, 128),
        },
        "dino": {
            "teacher": {**_prefixed(sd, "backbone."), "head.last_layer.weight_g": torch.ones(1)},
            "student": {
                **_prefixed(sd2, "module.backbone."),
                "module.head.last_layer.weight_g": torch.ones(1),
            },
            "epoch": 100,
        },
        "barlow": {
            "model": {
                **_prefixed(sd, "module.backbone."),
                "module.projector.0.weight": torch.randn(8, 512),
                "module.bn.running_mean": torch.zeros(8),
            }
        },
        "byol": {
            **_prefixed(sd, "online_encoder.net."),
            "online_encoder.projector.net.0.weight": torch.randn(8, 512),
            **_prefixed(sd2, "target_encoder.net."),
        },
    }
    for fmt, ckpt in layouts.items():
        for asked in (fmt, "auto"):
            dst = _net(gen)
            report = load_pretrained(dst, ckpt, fmt=asked)
            assert report.format == fmt, (fmt, asked)
            assert _same_features(src, dst, gen), (fmt, asked)
    report = load_pretrained(_net(gen), layouts["swav"], fmt="swav")
    assert report.dropped_head == ["module.projection_head.0.weight", "module.prototypes.weight"]
    assert report.filled and all(k.endswith("num_batches_tracked") for k in report.filled)
    report = load_pretrained(_net(gen), layouts["dino"])
    assert report.nesting == ("teacher",) and report.prefix == "backbone."
    assert report.dropped_head == ["head.last_layer.weight_g"]
    # The student on request.
    dst = _net(gen)
    report = load_pretrained(dst, layouts["dino"], key="student")
    assert report.format == "dino" and report.prefix == "module.backbone."
    assert _same_features(other, dst, gen)
    # SimCLR: tonylins' conversion (torchvision keys + fc under state_dict) and radengine's
    # own pretraining checkpoints (backbone. + projector.).
    for ckpt, prefix in (
        ({"state_dict": _net(gen, num_classes=1000).state_dict()}, ""),
        (
            {
                "format": 1,
                "model": {**_prefixed(sd, "backbone."), "projector.0.weight": torch.ones(2)},
            },
            "backbone.",
        ),
    ):
        _, report = convert_checkpoint(ckpt, _net(gen), fmt="simclr")
        assert report.prefix == prefix and not report.unexpected
        _, report = convert_checkpoint(ckpt, _net(gen))
        assert report.format == "torchvision" and report.prefix == prefix


def test_mismatched_architecture_names_key_and_shapes(gen):
    with pytest.raises(ValueError) as err:
        convert_checkpoint(_net(gen).state_dict(), resnet50(num_classes=0))
    msg = str(err.value)
    assert "layer1.0.conv1.weight" in msg and "(64, 64, 3, 3)" in msg and "(64, 64, 1, 1)" in msg
    assert "resnet18" in msg and "resnet50" in msg
    # Same block widths, more blocks: missing/unexpected keys, strict by default.
    deeper = _net(gen, factory=resnet34)
    with pytest.raises(ValueError, match="unexpected"):
        convert_checkpoint(deeper.state_dict(), _net(gen))
    state, report = convert_checkpoint(deeper.state_dict(), _net(gen), strict=False)
    assert "layer1.2.conv1.weight" in report.unexpected and not report.missing
    assert torch.equal(state["layer4.1.conv2.weight"], deeper.state_dict()["layer4.1.conv2.weight"])


def test_nothing_maps_and_wrong_format_and_ambiguity(gen):
    with pytest.raises(ValueError, match="nothing"):
        convert_checkpoint({"linear.weight": torch.ones(2, 2)}, _net(gen))
    with pytest.raises(ValueError, match="nothing"):
        convert_checkpoint({"epoch": 3, "arch": "resnet18"}, _net(gen))
    with pytest.raises(ValueError, match="'moco'"):
        convert_checkpoint(_net(gen).state_dict(), _net(gen), fmt="moco")
    with pytest.raises(ValueError, match="fmt"):
        convert_checkpoint(_net(gen).state_dict(), _net(gen), fmt="mocov9")
    sd = _net(gen).state_dict()
    with pytest.raises(ValueError, match="several"):
        convert_checkpoint({**_prefixed(sd, "a."), **_prefixed(sd, "b.")}, _net(gen))
    with pytest.raises(ValueError, match="student2"):
        convert_checkpoint({"student": sd}, _net(gen), key="student2")


def test_input_channels_are_adapted_deliberately(gen):
    rgb = _net(gen)
    grey = _net(gen, in_chans=1)
    report = load_pretrained(grey, rgb.state_dict())
    assert report.adapted == ["conv1.weight: 3 -> 1 input channels"]
    x = torch.randn(2, 1, 32, 32, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(
            grey.forward_features(x), rgb.forward_features(x.repeat(1, 3, 1, 1))
        )
    # And back: a 1-channel checkpoint into an RGB model sees grey images the same way.
    back = _net(gen)
    load_pretrained(back, grey.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(
            back.forward_features(x.repeat(1, 3, 1, 1)), grey.forward_features(x)
        )
    with pytest.raises(ValueError, match=r"conv1\.weight.*adapt_in_chans"):
        convert_checkpoint(rgb.state_dict(), _net(gen, in_chans=1), adapt_in_chans=False)

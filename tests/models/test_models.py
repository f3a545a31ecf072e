"""Backbones, heads and the registry.

Published numbers (parameter counts, torchvision / timm state_dict layouts) are hard-coded
here rather than computed from torchvision or timm, so the tests run without either and
catch any drift of ours from the checkpoint layouts.
"""

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from radengine.models import (
    PredictionHead,
    ProjectionHead,
    ResNet,
    TimmBackbone,
    VisionTransformer,
    adapt_input_conv,
    create_model,
    list_models,
    register_model,
    resample_pos_embed,
    resnet18,
    resnet50,
    vit_small_patch16,
)
from radengine.models.vit import Attention, DropPath

RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101"]
VITS = ["vit_small_patch16", "vit_base_patch16"]

# torchvision's published parameter counts (1000 classes, 3 channels), and timm's for the
# ViTs at 224 px. Hand check of ViT-S/16: patch embed 3*256*384 + 384 = 295,296; cls 384;
# pos 197*384 = 75,648; per block 2*768 (norms) + 443,520 (qkv) + 147,840 (proj)
# + 591,360 (fc1) + 590,208 (fc2) = 1,774,464, x12 = 21,293,568; final norm 768;
# head 385,000; total 22,050,664.
PARAM_COUNTS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "vit_small_patch16": 22_050_664,
    "vit_base_patch16": 86_567_656,
}

# (keys incl. num_batches_tracked) of torchvision's state_dicts: convs + 5 per BN + fc 2.
STATE_DICT_SIZES = {"resnet18": 122, "resnet34": 218, "resnet50": 320, "resnet101": 626}

# Representative keys of torchvision's resnet50 state_dict, with shapes.
RESNET50_KEYS = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.weight": (64,),
    "bn1.running_mean": (64,),
    "bn1.num_batches_tracked": (),
    "layer1.0.conv1.weight": (64, 64, 1, 1),
    "layer1.0.conv2.weight": (64, 64, 3, 3),
    "layer1.0.conv3.weight": (256, 64, 1, 1),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer1.0.downsample.1.running_var": (256,),
    "layer1.2.bn3.bias": (256,),
    "layer2.0.conv1.weight": (128, 256, 1, 1),
    "layer2.0.conv2.weight": (128, 128, 3, 3),  # v1.5: the stride-2 conv
    "layer2.0.downsample.0.weight": (512, 256, 1, 1),
    "layer2.3.conv3.weight": (512, 128, 1, 1),
    "layer3.5.bn2.running_mean": (256,),
    "layer3.0.downsample.0.weight": (1024, 512, 1, 1),
    "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
    "layer4.2.conv3.weight": (2048, 512, 1, 1),
    "layer4.2.bn3.running_var": (2048,),
    "fc.weight": (1000, 2048),
    "fc.bias": (1000,),
}
# Keys that must NOT exist (torchvision has no downsample where the shape is unchanged).
RESNET50_ABSENT = ["layer1.1.downsample.0.weight", "layer4.3.conv1.weight", "avgpool.weight"]

# Representative keys of timm's vit_small_patch16_224 state_dict (the DINO/MoCo-v3 layout).
VIT_S_KEYS = {
    "cls_token": (1, 1, 384),
    "pos_embed": (1, 197, 384),
    "patch_embed.proj.weight": (384, 3, 16, 16),
    "patch_embed.proj.bias": (384,),
    "blocks.0.norm1.weight": (384,),
    "blocks.0.attn.qkv.weight": (1152, 384),
    "blocks.0.attn.qkv.bias": (1152,),
    "blocks.5.attn.proj.weight": (384, 384),
    "blocks.11.norm2.bias": (384,),
    "blocks.11.mlp.fc1.weight": (1536, 384),
    "blocks.11.mlp.fc2.weight": (384, 1536),
    "norm.weight": (384,),
    "head.weight": (1000, 384),
    "head.bias": (1000,),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # These inputs are tiny: a second intra-op thread gains little, and when other jobs
    # share the CPU, OpenMP threads spin-waiting for each other made this file 5x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _meta(name: str, **kwargs) -> nn.Module:
    # Building on the meta device skips weight init: shapes only, in milliseconds.
    with torch.device("meta"):
        return create_model(name, **kwargs)


def _tiny_vit(**kwargs) -> VisionTransformer:
    cfg = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=0)
    cfg.update(kwargs)
    return VisionTransformer(**cfg)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --- parameter counts and checkpoint layouts ------------------------------------------


@pytest.mark.parametrize("name", RESNETS + VITS)
def test_param_count_matches_published(name):
    model = _meta(name, num_classes=1000, in_chans=3)
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[name]


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_state_dict_size(name):
    assert len(_meta(name).state_dict()) == STATE_DICT_SIZES[name]


def test_resnet50_state_dict_matches_torchvision_layout():
    shapes = _shapes(_meta("resnet50"))
    assert len(shapes) == 320
    for key, shape in RESNET50_KEYS.items():
        assert key in shapes, key
        assert shapes[key] == shape, key
    for key in RESNET50_ABSENT:
        assert key not in shapes
    # torchvision's order too (some checkpoint tools compare key lists positionally).
    keys = list(shapes)
    assert keys[:6] == [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
    ]
    assert keys[-2:] == ["fc.weight", "fc.bias"]
    assert keys.index("layer1.0.bn3.num_batches_tracked") < keys.index(
        "layer1.0.downsample.0.weight"
    )


def test_resnet_without_classifier_loads_checkpoint_minus_fc():
    full = resnet18(num_classes=1000)
    enc = resnet18(num_classes=0)
    assert enc.fc is None
    ckpt = {k: v for k, v in full.state_dict().items() if not k.startswith("fc.")}
    assert set(ckpt) == set(enc.state_dict())
    enc.load_state_dict(ckpt)  # strict
    x = torch.randn(2, 3, 32, 32)
    full.eval(), enc.eval()
    torch.testing.assert_close(enc(x), full.forward_features(x))


def test_resnet_state_dict_round_trip_preserves_function():
    a, b = resnet18(num_classes=10).eval(), resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    assert not torch.allclose(a(x), b(x))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_vit_state_dict_matches_timm_layout():
    shapes = _shapes(_meta("vit_small_patch16"))
    # 4 (cls, pos, patch w/b) + 12 blocks * 12 + final norm 2 + head 2
    assert len(shapes) == 152
    for key, shape in VIT_S_KEYS.items():
        assert shapes.get(key) == shape, key
    base = _shapes(_meta("vit_base_patch16"))
    assert base["blocks.11.attn.qkv.weight"] == (2304, 768)
    assert base["pos_embed"] == (1, 197, 768)
    assert "head.weight" not in _shapes(_meta("vit_small_patch16", num_classes=0))


def _fill_(model: nn.Module) -> nn.Module:
    """Deterministic, well-scaled weights from sin(), by state_dict position; no RNG."""
    with torch.no_grad():
        for i, (key, t) in enumerate(model.state_dict().items()):
            if not t.is_floating_point():
                continue
            s = torch.sin(torch.arange(t.numel(), dtype=torch.float64) * 0.37 + i).view(t.shape)
            is_norm_weight = key.endswith(
                ("bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight")
            ) or ("norm" in key and key.endswith("weight"))
            if key.endswith("running_var"):
                v = 1 + 0.5 * s * s
            elif is_norm_weight:
                v = 1 + 0.2 * s
            elif t.ndim > 1:
                v = s * (2.0 / t[0].numel() ** 0.5)  # ~He scale, so the input still matters
            else:
                v = 0.02 * s
            t.copy_(v.to(t.dtype))
    return model


def _det_input(*shape: int) -> torch.Tensor:
    i = torch.arange(math.prod(shape), dtype=torch.float64)
    return (torch.sin(i * 0.11) * torch.cos(i * 0.0037)).view(shape).float()


# Outputs of torchvision 0.28 resnet18/50(num_classes=4) and timm 1.0.31
# VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
# num_classes=3, dynamic_img_size=True), in eval mode, with _fill_ weights on _det_input.
GOLDEN = {
    ("resnet18", (2, 3, 32, 32)): [
        [-0.0073558, 2.2758384, 2.6881802, 0.8855206],
        [-0.0139634, 1.9638593, 2.3290257, 0.7764300],
    ],
    ("resnet50", (2, 3, 32, 32)): [
        [-8.9441500, 4.5122476, 1.6240346, -7.1698031],
        [-4.1773906, 1.5405709, 1.6379726, -4.2205482],
    ],
    ("vit", (2, 3, 32, 32)): [
        [-0.5927213, -1.2926787, -1.3404047],
        [-0.5959921, -1.2861295, -1.3273424],
    ],
    ("vit", (2, 3, 48, 32)): [  # position embeddings resampled from 4x4 to 6x4
        [-0.6374926, -1.2584972, -1.2445264],
        [-0.6603757, -1.2405463, -1.1948031],
    ],
}


@pytest.mark.parametrize(("name", "shape"), list(GOLDEN))
def test_same_function_as_torchvision_and_timm(name, shape):
    model = _tiny_vit(num_classes=3) if name == "vit" else create_model(name, num_classes=4)
    model = _fill_(model).eval()
    with torch.no_grad():
        out = model(_det_input(*shape))
    torch.testing.assert_close(out, torch.tensor(GOLDEN[name, shape]), rtol=1e-4, atol=1e-4)


def test_resnet_is_v1_5_and_vit_norm_and_gelu():
    model = _meta("resnet50")
    for layer in (model.layer2, model.layer3, model.layer4):
        assert layer[0].conv1.stride == (1, 1)
        assert layer[0].conv2.stride == (2, 2)  # v1.5: stride on the 3x3
        assert layer[0].downsample[0].stride == (2, 2)
    assert model.layer1[0].conv2.stride == (1, 1)
    vit = _meta("vit_small_patch16")
    norms = [m for m in vit.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 25 and all(m.eps == 1e-6 for m in norms)
    # Exact (erf) GELU: the tanh approximation differs by ~1e-4, below the golden tolerance.
    assert all(b.mlp.act.approximate == "none" for b in vit.blocks)


def test_matches_torchvision_when_installed():
    tvm = pytest.importorskip("torchvision.models")
    for name in RESNETS:
        with torch.device("meta"):  # layout only: no weight init
            ref = getattr(tvm, name)(num_classes=10)
        assert list(_shapes(ref).items()) == list(_shapes(_meta(name, num_classes=10)).items())
    ref, ours = tvm.resnet50(num_classes=10).eval(), resnet50(num_classes=10).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))


def test_matches_timm_vit_when_installed():
    timm = pytest.importorskip("timm")
    ref = timm.create_model("vit_small_patch16_224", dynamic_img_size=True).eval()
    ours = _meta("vit_small_patch16").eval()
    assert _shapes(ref) == _shapes(ours)
    ours.load_state_dict(ref.state_dict(), assign=True)
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))


# --- forward shapes --------------------------------------------------------------------


@pytest.mark.parametrize(("name", "dim"), [("resnet18", 512), ("resnet50", 2048)])
@pytest.mark.parametrize("in_chans", [1, 3])
def test_resnet_forward_shapes(name, dim, in_chans):
    x = torch.randn(2, in_chans, 24, 40)  # not square, not a multiple of 32
    clf = create_model(name, in_chans=in_chans, num_classes=7).eval()
    assert clf.feature_dim == dim and clf.in_chans == in_chans
    assert clf.conv1.weight.shape == (64, in_chans, 7, 7)
    assert clf(x).shape == (2, 7)
    assert clf.forward_features(x).shape == (2, dim)
    enc = create_model(name, in_chans=in_chans, num_classes=0).eval()
    enc.load_state_dict({k: v for k, v in clf.state_dict().items() if not k.startswith("fc.")})
    with torch.no_grad():  # no fc: forward is forward_features
        torch.testing.assert_close(enc(x), clf.forward_features(x))


@pytest.mark.parametrize("in_chans", [1, 3])
def test_vit_forward_shapes(in_chans):
    x = torch.randn(2, in_chans, 32, 48)
    model = vit_small_patch16(img_size=32, in_chans=in_chans, num_classes=5)
    assert model.feature_dim == 384 and model.grid_size == (2, 2)
    assert model.patch_embed.proj.weight.shape == (384, in_chans, 16, 16)
    assert model.forward_features(x).shape == (2, 384)
    assert model(x).shape == (2, 5)
    assert _tiny_vit(in_chans=in_chans)(torch.randn(3, in_chans, 32, 32)).shape == (3, 32)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="divisible"):
        _tiny_vit()(torch.randn(1, 3, 36, 32))
    with pytest.raises(ValueError, match="divisible"):
        VisionTransformer(img_size=100, patch_size=16)
    with pytest.raises(ValueError, match="num_classes"):
        resnet18(num_classes=-1)
    with pytest.raises(ValueError, match="in_chans"):
        resnet18(in_chans=0)


# --- memory format, intermediates, init ------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_channels_last_matches_contiguous(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    x = torch.randn(2, 3, 48, 48)
    # Train mode: BN uses batch statistics, so activations stay O(1) at random init.
    ref = model(x)
    model_cl = model.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out = model_cl(x_cl)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    inter = model_cl.forward_intermediates(x_cl)
    assert inter["layer4"].is_contiguous(memory_format=torch.channels_last)
    if name == "resnet18":  # (resnet50's backward costs seconds on CPU and adds nothing)
        out.sum().backward()  # the backward pass works on channels_last too
        assert model_cl.conv1.weight.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    ("name", "widths"),
    [("resnet18", (64, 64, 128, 256, 512)), ("resnet50", (64, 256, 512, 1024, 2048))],
)
def test_resnet_forward_intermediates(name, widths):
    model = create_model(name, num_classes=0).eval()
    x = torch.randn(2, 3, 64, 96)
    inter = model.forward_intermediates(x)
    assert list(inter) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    strides = (2, 4, 8, 16, 32)
    for (key, t), c, s in zip(inter.items(), widths, strides, strict=True):
        assert t.shape == (2, c, 64 // s, 96 // s), key
    # The last map, pooled, is exactly forward_features.
    torch.testing.assert_close(inter["layer4"].mean((2, 3)), model.forward_features(x))


def test_vit_forward_intermediates():
    model = _tiny_vit(depth=3).eval()
    x = torch.randn(2, 3, 32, 64)
    inter = model.forward_intermediates(x)
    assert list(inter) == ["blocks.0", "blocks.1", "blocks.2"]
    for t in inter.values():
        assert t.shape == (2, 1 + 4 * 8, 32)
    torch.testing.assert_close(model.norm(inter["blocks.2"])[:, 0], model.forward_features(x))


@pytest.mark.parametrize(("name", "last_bn"), [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_zero_init_residual(name, last_bn):
    model = create_model(name, zero_init_residual=True)
    blocks = [
        b for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer
    ]
    assert blocks
    for b in blocks:
        assert torch.count_nonzero(getattr(b, last_bn).weight) == 0
        assert torch.count_nonzero(b.bn1.weight - 1) == 0  # only the last BN is zeroed
    assert torch.count_nonzero(model.bn1.weight - 1) == 0
    # Every residual branch is zero, so each block reduces to relu(shortcut): layer1 passes
    # the (non-negative) max-pooled stem through, projected by the downsample if it has one.
    x = torch.randn(2, 3, 32, 32)

    def layer1_is_shortcut(m: ResNet) -> bool:
        inter = m.forward_intermediates(x)
        pooled = F.max_pool2d(inter["stem"], 3, 2, 1)
        ds = m.layer1[0].downsample
        expected = pooled if ds is None else F.relu(ds(pooled))
        return torch.allclose(inter["layer1"], expected, rtol=1e-5, atol=1e-5)

    assert layer1_is_shortcut(model)
    # Without the option the branches are live.
    plain = create_model(name)
    assert torch.count_nonzero(getattr(plain.layer1[0], last_bn).weight) > 0
    assert not layer1_is_shortcut(plain)


def test_resnet_init_matches_torchvision():
    torch.manual_seed(0)
    model = resnet50()
    # kaiming normal, fan_out, ReLU gain: std = sqrt(2 / (out_channels * kh * kw)).
    for name, conv in [("conv1", model.conv1), ("layer3.0.conv2", model.layer3[0].conv2)]:
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        std = conv.weight.std().item()
        assert abs(std / math.sqrt(2 / fan_out) - 1) < 0.05, name
        assert abs(conv.weight.mean().item()) < 0.1 * std, name
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    assert model.fc.weight.abs().max() <= 1 / math.sqrt(2048)  # nn.Linear default


def test_vit_init():
    torch.manual_seed(0)
    model = _tiny_vit(embed_dim=64, depth=1)
    assert abs(model.blocks[0].mlp.fc1.weight.std().item() - 0.02) < 0.002
    assert torch.all(model.blocks[0].attn.qkv.bias == 0)
    assert abs(model.pos_embed.std().item() - 0.02) < 0.005
    assert model.cls_token.abs().max() < 1e-4
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}


# --- ViT internals ---------------------------------------------------------------------


def test_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    attn = Attention(dim=24, num_heads=3)
    x = torch.randn(2, 7, 24)
    q, k, v = attn.qkv(x).reshape(2, 7, 3, 3, 8).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 7, 24))
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-5)


def test_drop_path():
    x = torch.ones(64, 5, 8)
    dp = DropPath(0.5)
    out = dp(x)
    per_sample = out.flatten(1)
    kept = per_sample[:, 0] != 0
    assert 0 < kept.sum() < 64  # some samples dropped, some kept (P(fail) ~ 2^-63)
    torch.testing.assert_close(per_sample[kept], torch.full_like(per_sample[kept], 2.0))
    assert torch.all(per_sample[~kept] == 0)
    dp.eval()
    assert dp(x) is x
    rates = [b.drop_path.p for b in _tiny_vit(depth=4, drop_path_rate=0.3).blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_resample_pos_embed_orientation_and_prefix():
    d = 4
    rows = torch.arange(2.0).view(1, 2, 1, 1).expand(1, 2, 2, d)  # value = row index
    pos = torch.cat([torch.full((1, 1, d), 7.0), rows.reshape(1, 4, d)], dim=1)
    out = resample_pos_embed(pos, (3, 5))
    assert out.shape == (1, 1 + 15, d)
    assert torch.equal(out[:, 0], pos[:, 0])  # the class token's embedding is kept
    grid = out[0, 1:].reshape(3, 5, d)
    # Row-major layout kept: constant along each row, increasing down the rows.
    torch.testing.assert_close(grid, grid[:, :1].expand_as(grid))
    assert grid[0, 0, 0] < grid[1, 0, 0] < grid[2, 0, 0]
    # Constant stays constant; the same grid is returned untouched.
    const = torch.full((1, 1 + 196, d), 0.5)
    torch.testing.assert_close(resample_pos_embed(const, (6, 6)), torch.full((1, 37, d), 0.5))
    assert resample_pos_embed(pos, (2, 2)) is pos
    with pytest.raises(ValueError, match="square"):
        resample_pos_embed(torch.zeros(1, 1 + 6, d), (2, 2))
    half = resample_pos_embed(pos.bfloat16(), (3, 3))
    assert half.dtype == torch.bfloat16 and half.shape == (1, 10, d)


@pytest.fixture(scope="module")
def vit_s_224() -> VisionTransformer:
    torch.manual_seed(0)
    return vit_small_patch16(img_size=224, num_classes=0).eval()


@pytest.mark.parametrize("size", [96, 224])
def test_vit_pos_embed_interpolation(vit_s_224, size):
    model = vit_s_224
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 384)
        # Same as a model built for this size holding the resampled embeddings (built on
        # the meta device and materialised by load_state_dict: skips a 1 s weight init).
        with torch.device("meta"):
            native = vit_small_patch16(img_size=size, num_classes=0).eval()
        native.to_empty(device="cpu")
        sd = model.state_dict()
        sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], native.grid_size)
        assert native.pos_embed.shape == (1, 1 + (size // 16) ** 2, 384)
        native.load_state_dict(sd)
        torch.testing.assert_close(native(x), out)
        if size != 224:
            # And different from ignoring positions beyond the first tokens.
            sd["pos_embed"] = model.pos_embed[:, : native.pos_embed.shape[1]]
            native.load_state_dict(sd)
            assert not torch.allclose(native(x), out)


def test_compiles_without_graph_breaks():
    # backend="eager" checks that dynamo captures one graph (no breaks) in seconds;
    # inductor codegen is the GPU path's business.
    vit = _tiny_vit().eval()
    x = torch.randn(2, 3, 48, 32)  # also traces the pos-embed resampling
    torch.testing.assert_close(torch.compile(vit, backend="eager", fullgraph=True)(x), vit(x))
    net = resnet18(num_classes=0).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(torch.compile(net, backend="eager", fullgraph=True)(x), net(x))


# --- heads -----------------------------------------------------------------------------


def _types(module: nn.Module) -> list[type]:
    return [type(m) for m in module.layers]


def test_projection_head_default_is_simclr():
    head = ProjectionHead(64, 32, 16)
    assert _types(head) == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head.layers[0].bias is None  # redundant before BN
    assert head.layers[3].bias is not None
    assert head.out_dim == 16
    assert head(torch.randn(5, 64)).shape == (5, 16)


def test_projection_head_options():
    no_bn = ProjectionHead(64, 32, 16, bn=False)
    assert _types(no_bn) == [nn.Linear, nn.ReLU, nn.Linear]
    assert no_bn.layers[0].bias is not None
    simsiam = ProjectionHead(64, 32, 16, num_layers=3, last_bn=True)
    assert _types(simsiam) == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [
        nn.Linear,
        nn.BatchNorm1d,
    ]
    last = simsiam.layers[-1]
    assert not last.affine and simsiam.layers[-2].bias is None
    z = simsiam(torch.randn(256, 64) * 3 + 1)
    assert z.shape == (256, 16)
    # Train-mode output BN: every embedding dimension standardised over the batch.
    torch.testing.assert_close(z.mean(0), torch.zeros(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.var(0, unbiased=False), torch.ones(16), atol=1e-3, rtol=0)
    assert ProjectionHead(64, 32, 16, last_bn=True, last_bn_affine=True).layers[-1].affine
    linear = ProjectionHead(64, 999, 16, num_layers=1)
    assert _types(linear) == [nn.Linear] and linear.layers[0].in_features == 64
    with pytest.raises(ValueError, match="num_layers"):
        ProjectionHead(64, 32, 16, num_layers=0)


def test_prediction_head():
    pred = PredictionHead(16, 8, 16)
    assert _types(pred) == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert pred(torch.randn(4, 16)).shape == (4, 16)
    assert pred.out_dim == 16
    assert _types(PredictionHead(16, 8, 16, bn=False)) == [nn.Linear, nn.ReLU, nn.Linear]


def test_backbone_plus_heads_train_step():
    enc = resnet18(num_classes=0, zero_init_residual=True)
    proj = ProjectionHead(enc.feature_dim, 64, 32)
    pred = PredictionHead(32, 16, 32)
    loss = pred(proj(enc(torch.randn(4, 3, 32, 32)))).pow(2).mean()
    loss.backward()
    assert enc.conv1.weight.grad is not None and torch.isfinite(enc.conv1.weight.grad).all()


# --- registry --------------------------------------------------------------------------


def test_list_models():
    assert list_models() == sorted(RESNETS + VITS)


@pytest.mark.parametrize("name", RESNETS + VITS)
def test_create_model_types(name):
    model = _meta(name, num_classes=0, in_chans=1)
    assert isinstance(model, ResNet if name.startswith("resnet") else VisionTransformer)
    assert model.num_classes == 0 and model.in_chans == 1
    for attr in ("forward_features", "forward_intermediates", "feature_dim"):
        assert hasattr(model, attr)


def test_unknown_model_error_lists_known_names():
    with pytest.raises(ValueError, match="unknown model 'resnet51'") as err:
        create_model("resnet51")
    msg = str(err.value)
    assert all(n in msg for n in RESNETS + VITS)
    assert "Did you mean 'resnet50'" in msg or "Did you mean 'resnet18'" in msg
    assert "timm:" in msg
    with pytest.raises(ValueError, match="empty timm"):
        create_model("timm:")
    with pytest.raises(TypeError):
        create_model("resnet18", not_an_option=1)


def test_register_model():
    name = "test_tiny_vit_registry"

    @register_model(name)
    def tiny(**kwargs):
        return _tiny_vit(**kwargs)

    try:
        assert name in list_models()
        assert create_model(name, num_classes=3)(torch.randn(1, 3, 32, 32)).shape == (1, 3)
        with pytest.raises(ValueError, match="already registered"):
            register_model(name)
        with pytest.raises(ValueError, match="reserved"):
            register_model("timm:foo")
    finally:
        from radengine.models import registry

        registry._MODELS.pop(name, None)


def test_timm_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(ImportError, match="pip install timm"):
        create_model("timm:resnet18")


def test_timm_backbone():
    pytest.importorskip("timm")
    model = create_model("timm:resnet18", num_classes=0, in_chans=1)
    assert isinstance(model, TimmBackbone)
    assert model.feature_dim == 512 and model.in_chans == 1 and model.num_classes == 0
    x = torch.randn(2, 1, 64, 64)
    assert model.forward_features(x).shape == (2, 512)
    assert model(x).shape == (2, 512)
    assert list(model.forward_intermediates(x))[-1].startswith("stage")


# --- checkpoint helpers ----------------------------------------------------------------


def test_adapt_input_conv_grey_equals_repeated_rgb():
    torch.manual_seed(0)
    rgb = resnet18(num_classes=0).eval()
    grey = resnet18(num_classes=0, in_chans=1).eval()
    sd = rgb.state_dict()
    sd["conv1.weight"] = adapt_input_conv(sd["conv1.weight"], 1)
    grey.load_state_dict(sd)
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(grey(x), rgb(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)


def test_adapt_input_conv_other_channels():
    w = torch.randn(8, 3, 3, 3)
    assert adapt_input_conv(w, 3) is w
    w5 = adapt_input_conv(w, 5)
    assert w5.shape == (8, 5, 3, 3)
    torch.testing.assert_close(w5[:, 3:], w[:, :2] * 3 / 5)
    # Tiling a whole number of times: a constant image gives the same response as with 3.
    torch.testing.assert_close(adapt_input_conv(w, 6).sum(1), w.sum(1))
    with pytest.raises(ValueError):
        adapt_input_conv(w, 0)

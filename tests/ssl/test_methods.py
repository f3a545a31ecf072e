"""The SSL methods as modules: recipes resolved into the config, views, one step with its
hooks (EMA teachers, queues, centers, schedules), and SimCLR through the method-agnostic
trainer equal to the loop it replaced."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from radengine import ssl
from radengine.config import ConfigError, config_from_dict, load_pretrain_config, to_dict
from radengine.ssl import METHODS, cosine_schedule, method_class


class Tiny(nn.Module):
    """A backbone without batch statistics: conv, pool, 16 features."""

    feature_dim = 16

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


ROOT = Path(__file__).resolve().parents[2]

SMALL = {  # small heads for every method (the recipes' 4096-65536 wide heads are slow here)
    "simclr": ["model.proj_dim=8"],
    "mocov2": ["model.proj_dim=8", "ssl.queue_size=24", "optim.batch_size=8"],
    "mocov3": ["model.proj_dim=8", "model.proj_hidden=32", "ssl.pred_hidden=32"],
    "byol": ["model.proj_dim=8", "model.proj_hidden=32", "ssl.pred_hidden=32"],
    "simsiam": ["model.proj_dim=8", "model.proj_hidden=32", "ssl.pred_hidden=8"],
    "barlowtwins": ["model.proj_dim=16", "model.proj_hidden=32"],
    "vicreg": ["model.proj_dim=16", "model.proj_hidden=32"],
    # local crops of 20 px, not 14: on a 14 px input ResNet-18's layer4 gets a 1x1 map, for
    # which oneDNN's bf16 weight gradient of the strided conv reads uninitialised memory
    # (torch 2.13 CPU; nondeterministic, sometimes NaN; 20 px and up are exact)
    "dino": ["model.proj_dim=64", "model.proj_hidden=32", "ssl.bottleneck_dim=8",
             "ssl.local_crops_number=3", "ssl.local_crops_size=20"],
}  # fmt: skip


def _cfg(method: str, *extra: str):
    return load_pretrain_config(overrides=[f"method={method}", *SMALL[method], *extra])


def test_every_registered_method_has_a_small_config_here():
    assert set(SMALL) == set(METHODS)


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "ssl":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


@pytest.mark.parametrize("method", list(METHODS))
def test_the_recipe_is_layered_under_the_users_config(method, tmp_path):
    cls = method_class(method)
    cfg = load_pretrain_config(overrides=[f"method={method}", "recipe=paper"])
    assert cfg.ssl == dataclasses.asdict(cls.Options())
    recipe = _flat(cls.recipe(to_dict(cfg)))
    given = _flat(to_dict(cfg))
    for key, value in recipe.items():
        assert given[key] == value, key
    # a config written out loads back to itself (config.yaml, checkpoints)
    again = config_from_dict(to_dict(cfg))
    assert again == cfg
    # the user's YAML and overrides win over the recipe
    (tmp_path / "run.yaml").write_text(f"method: {method}\nmodel:\n  proj_dim: 7\n")
    mine = load_pretrain_config(tmp_path / "run.yaml", ["optim.weight_decay=0.123"])
    assert mine.model.proj_dim == 7 and mine.optim.weight_decay == 0.123
    assert cls.__doc__ and cls.summary and method in METHODS
    # the method file cites its paper
    import sys

    doc = sys.modules[cls.__module__].__doc__
    assert doc and any(str(y) in doc for y in range(2018, 2024)), "no citation"


def test_the_recipes_are_the_papers():
    byol = _cfg("byol", "recipe=paper")
    assert (byol.optim.name, byol.optim.lr_scaling, byol.optim.lr_base) == ("lars", "linear", 0.2)
    assert byol.ssl["momentum"] == 0.996 and byol.ssl["pred_hidden"] == 32  # SMALL's
    dino = load_pretrain_config(overrides=["method=dino", "model.arch=resnet50", "recipe=paper"])
    assert (dino.model.proj_dim, dino.loss.temperature, dino.optim.name) == (65536, 0.1, "adamw")
    # ResNet-18/34 take solo-learn's narrower heads
    assert load_pretrain_config(overrides=["method=dino", "recipe=paper"]).model.proj_dim == 4096
    for method in ("barlowtwins", "vicreg"):
        rn18 = load_pretrain_config(overrides=[f"method={method}", "recipe=paper"]).model
        rn50 = load_pretrain_config(
            overrides=[f"method={method}", "model.arch=resnet50", "recipe=paper"]
        ).model
        assert (rn18.proj_dim, rn18.proj_hidden, rn50.proj_dim, rn50.proj_hidden) == (
            2048, 2048, 8192, 8192)  # fmt: skip
    assert (dino.optim.weight_decay, dino.optim.weight_decay_end, dino.optim.grad_clip) == (
        0.04, 0.4, 3.0)  # fmt: skip
    assert dino.ssl["local_crops_number"] == 8 and dino.ssl["teacher_temp"] == 0.04


@pytest.mark.parametrize("method", list(METHODS))
def test_the_quick_run_takes_the_methods_quick_settings(method, tmp_path):
    """``recipe: quick`` (the default: the quick CPU run) layers the method's QUICK over its
    paper's recipe; ``recipe: paper`` leaves it out; what the user sets wins over both."""
    cls = method_class(method)
    quick = load_pretrain_config(overrides=[f"method={method}"])
    paper = load_pretrain_config(overrides=[f"method={method}", "recipe=paper"])
    q, p = _flat(to_dict(quick)), _flat(to_dict(paper))
    want = _flat(cls.QUICK)
    assert quick.ssl == {**paper.ssl, **want.get("ssl", {})}
    for key in q:
        if key not in ("ssl", "recipe"):
            assert q[key] == want.get(key, p[key]), key
    for key, value in want.items():  # the user's value wins over the quick run's
        if key != "ssl" and isinstance(value, (int, float)) and not isinstance(value, bool):
            mine = load_pretrain_config(overrides=[f"method={method}", f"{key}={value * 2}"])
            assert _flat(to_dict(mine))[key] == value * 2
    # a ResNet-50 or a ViT takes its paper's recipe: the quick settings are the ResNet-18's
    for arch in ("resnet50", "vit_small_patch16"):
        big = [f"method={method}", f"model.arch={arch}"]
        paper_big = load_pretrain_config(overrides=[*big, "recipe=paper"])
        assert load_pretrain_config(overrides=big) == dataclasses.replace(paper_big, recipe="quick")
    # the shipped full-scale configs take the papers' recipes
    shipped = load_pretrain_config(ROOT / "experiments" / "pretrain" / f"{method}_ct.yaml")
    assert shipped.recipe == "paper"


def test_simclr_is_the_defaults_it_always_had():
    cfg = load_pretrain_config()
    assert cfg == load_pretrain_config(overrides=["method=simclr"])
    assert (cfg.model.proj_dim, cfg.model.proj_hidden, cfg.model.proj_layers) == (128, None, 2)
    assert cfg.loss.temperature == 0.5 and cfg.ssl == {} and cfg.optim.name == "lars"


def test_moco_v3_recipe_follows_the_backbone():
    rn = load_pretrain_config(overrides=["method=mocov3", "recipe=paper"])
    vit = load_pretrain_config(overrides=["method=mocov3", "model.arch=vit_small_patch16"])
    assert (rn.loss.temperature, rn.model.proj_layers, rn.optim.name) == (1.0, 2, "lars")
    assert (vit.loss.temperature, vit.model.proj_layers, vit.optim.name) == (0.2, 3, "adamw")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["method=byol", "ssl.momentun=0.9"], r"unknown config key 'ssl.momentun' for method byol; did you mean 'ssl.momentum'"),
        (["method=byol", "ssl.momentum=fast"], r"'ssl.momentum' must be a number"),
        (["method=byol", "ssl.momentum=2"], r"ssl.momentum must be in \[0, 1\]"),
        (["method=simclr", "ssl.queue_size=8"], r"unknown config key 'ssl.queue_size' for method simclr"),
        (["method=bykol"], r"unknown method 'bykol'; did you mean 'byol'"),
        (["method=dino", "ssl.local_crops_scale=[0.5, 0.1]"], r"ssl.local_crops_scale must be"),
        (["method=mocov2", "ssl.view_augment=[{}]"], r"one mapping per view"),
    ],
)  # fmt: skip
def test_a_bad_ssl_key_is_named(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_pretrain_config(overrides=overrides)


def test_a_queue_must_hold_whole_batches():
    cfg = _cfg("mocov2", "ssl.queue_size=20")
    with pytest.raises(ValueError, match=r"queue_size=20 must be a multiple .*optim.batch_size=8"):
        ssl.build(cfg, Tiny())


def test_cosine_schedule_and_dino_teacher_temperature():
    assert cosine_schedule(0.996, 1.0, 0, 100) == pytest.approx(0.996)
    assert cosine_schedule(0.996, 1.0, 100, 100) == pytest.approx(1.0)
    assert cosine_schedule(0.996, 1.0, 50, 100) == pytest.approx(0.998)
    # BYOL's formula
    k, K = 37, 100
    assert cosine_schedule(0.99, 1.0, k, K) == pytest.approx(
        1 - (1 - 0.99) * (math.cos(math.pi * k / K) + 1) / 2
    )
    cfg = _cfg("dino", "ssl.warmup_teacher_temp=0.04", "ssl.teacher_temp=0.07",
               "ssl.warmup_teacher_temp_epochs=4")  # fmt: skip
    dino = ssl.build(cfg, Tiny())
    temps = [dino.teacher_temperature(e) for e in range(6)]
    assert temps == pytest.approx([0.04, 0.05, 0.06, 0.07, 0.07, 0.07])  # numpy linspace
    dino.set_step(25, 100, 10)  # epoch 2
    assert float(dino.teacher_temp) == pytest.approx(0.06)


def test_dino_views_are_two_global_and_the_local_crops():
    dino = ssl.build(_cfg("dino", "ssl.local_crops_size=null"), Tiny())
    plan = dino.view_plan(224)
    assert [v.size for v in plan] == [224, 224, 96, 96, 96]
    assert plan[0].augment["blur_p"] == 1.0 and plan[1].augment["solarize_p"] == 0.2
    assert plan[2].augment == {"crop_scale": [0.05, 0.4], "blur_p": 0.5}
    assert plan[0].augment["crop_scale"] == [0.4, 1.0]
    byol = ssl.build(_cfg("byol"), Tiny())
    assert [v.augment for v in byol.view_plan(96)] == [
        {"blur_p": 1.0, "solarize_p": 0.0},
        {"blur_p": 0.1, "solarize_p": 0.2},
    ]
    simclr = ssl.build(_cfg("simclr"), Tiny())
    assert [(v.size, dict(v.augment)) for v in simclr.view_plan(96)] == [(96, {}), (96, {})]


def _views(method, gen, n=6):
    plan = method.view_plan(20)
    return [torch.rand(n, 3, v.size, v.size, generator=gen) for v in plan]


def _teacher(method):
    for name in ("target", "key_encoder", "momentum_encoder", "teacher"):
        if hasattr(method, name):
            return getattr(method, name)
    return None


@pytest.mark.parametrize("name", list(METHODS))
def test_one_step_with_its_hooks(gen, name):
    extra = ["ssl.queue_size=12", "optim.batch_size=6"] if name == "mocov2" else []
    torch.manual_seed(0)
    method = ssl.build(_cfg(name, *extra), Tiny())
    teacher = _teacher(method)
    online = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.SGD(online, lr=0.5)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    method.set_step(0, 10, 5)
    loss = method(_views(method, gen))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    method.before_update()
    opt.step()
    method.after_update()
    after = method.state_dict()
    assert not torch.equal(after["backbone.net.0.weight"], before["backbone.net.0.weight"])
    if teacher is not None:  # the EMA moved the teacher by exactly (1 - m) toward the student
        prefix = next(n for n, m in method.named_children() if m is teacher) + "."
        m = method.momentum if hasattr(method, "momentum") else method.opts.momentum
        key = prefix + "backbone.net.0.weight"
        expect = m * before[key] + (1 - m) * after["backbone.net.0.weight"]
        torch.testing.assert_close(after[key], expect, rtol=1e-6, atol=1e-7)
        assert not any(p.requires_grad for p in teacher.parameters())
    if name == "mocov2":  # the 6 keys replaced the oldest 6 of 12
        assert int(after["queue_ptr"]) == 6
        assert not torch.equal(after["queue"][:6], before["queue"][:6])
        assert torch.equal(after["queue"][6:], before["queue"][6:])
    if name == "dino":
        assert not torch.equal(after["center"], before["center"])
        # the last layer took no step in the first epoch (freeze_last_layer=1) ...
        assert torch.equal(after["head.last_layer.weight"], before["head.last_layer.weight"])
        method.set_step(5, 10, 5)  # ... and does in the second
        method(_views(method, gen)).backward()
        method.before_update()
        assert method.head.last_layer.weight.grad is not None
    # what transfers
    assert (method.encoder is method.teacher["backbone"]) if name == "dino" else (
        method.encoder is method.backbone)  # fmt: skip


def test_no_weight_decay_comes_from_the_backbone():
    from radengine.engine.optim import param_groups
    from radengine.models import create_model

    vit = create_model("vit_small_patch16", num_classes=0, in_chans=3, img_size=32)
    method = ssl.build(_cfg("simclr", "model.arch=vit_small_patch16"), vit)
    decay, no_decay = param_groups(method, 0.05)
    names = {id(p): n for n, p in method.named_parameters()}
    assert "backbone.pos_embed" in {names[id(p)] for p in no_decay["params"]}
    assert "backbone.cls_token" not in {names[id(p)] for p in decay["params"]}


def test_moco_v3_freezes_a_vits_patch_embedding():
    from radengine.models import create_model

    vit = create_model("vit_small_patch16", num_classes=0, in_chans=3, img_size=32)
    method = ssl.build(_cfg("mocov3", "model.arch=vit_small_patch16"), vit)
    assert not any(p.requires_grad for p in method.backbone.patch_embed.parameters())
    assert all(p.requires_grad for p in method.backbone.blocks.parameters())


METHOD_CONFIGS = sorted(
    p for p in (Path(__file__).parents[2] / "experiments" / "pretrain").glob("*.yaml")
    if not p.name.startswith(("study_a", "methods_base"))
)  # fmt: skip


def test_every_method_ships_a_ct_and_an_imagenet_config():
    names = {p.stem for p in METHOD_CONFIGS}
    for method in METHODS:
        assert {f"{method}_ct", f"{method}_imagenet"} <= names, method


@pytest.mark.parametrize("path", METHOD_CONFIGS, ids=lambda p: p.name)
def test_each_method_config_is_its_papers_recipe(path):
    """The shipped recipes load, take the method's recipe under them, and their views are
    valid augmentations (built on a tiny backbone: the view plan depends on the options)."""
    from radengine.engine.views import ViewPlan

    cfg = load_pretrain_config(path)
    assert cfg.data.domain == ("natural" if "imagenet" in path.name else "ct")
    assert cfg.model.arch in ("resnet50", "vit_small_patch16")
    recipe = _flat(method_class(cfg.method).recipe(to_dict(cfg)))
    given = _flat(to_dict(cfg))
    yaml_keys = {"model.proj_dim", "model.proj_hidden", "ssl"}  # set by simclr_ct / dino_ct
    for key, value in recipe.items():
        if key not in yaml_keys:
            assert given[key] == value, key
    plan = ViewPlan.of(cfg, ssl.build(cfg, Tiny()))
    assert len(plan.specs) == len(plan.sizes) >= 2 and plan.sizes[0] == cfg.augment.size
    if cfg.method == "dino":
        assert plan.sizes[2:] == (96,) * 8 and cfg.model.proj_dim == 65536
        assert cfg.ssl["teacher_temp"] == 0.07

"""Config: defaults <- YAML (with _base_) <- key=value, strict keys and types, and every
shipped experiment config resolving to what it claims."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from radengine.config import (
    ConfigError,
    PretrainConfig,
    apply_overrides,
    config_from_dict,
    diff,
    dump_yaml,
    load_pretrain_config,
)
from radengine.engine.setup import resolved_lr
from radengine.engine.views import window_spec
from radengine.ops.augment import AugmentSpec

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments" / "pretrain"


def test_defaults_are_the_quick_cpu_run():
    cfg = load_pretrain_config()
    assert cfg == PretrainConfig()
    assert (cfg.model.arch, cfg.augment.size, cfg.data.domain) == ("resnet18", 96, "ct")


def test_overrides_parse_values_as_yaml():
    cfg = load_pretrain_config(
        overrides=[
            "optim.epochs=7",
            "optim.weight_decay=1e-6",  # YAML 1.1 would read this as a string
            "optim.lr=null",
            "augment.intensity=[lung, [40, 400]]",
            "augment.params={blur_p: 0.5}",
            "tracking.enabled=false",
        ]
    )
    assert cfg.optim.epochs == 7 and cfg.optim.weight_decay == 1e-6 and cfg.optim.lr is None
    assert cfg.augment.intensity == ["lung", [40, 400]]
    assert cfg.augment.params == {"blur_p": 0.5}
    assert cfg.tracking.enabled is False


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.epoch=3", "unknown config key 'optim.epoch'; did you mean 'optim.epochs'"),
        ("epochs=3", "did you mean 'optim.epochs'"),
        ("model.arhc=resnet50", "did you mean 'model.arch'"),
        ("optim.batch_size=abc", "'optim.batch_size' must be an integer"),
        ("optim.batch_size=1.5", "'optim.batch_size' must be an integer"),
        ("tracking.enabled=maybe", "'tracking.enabled' must be true or false"),
        ("optim.lr=-1", "'optim.lr' must be > 0"),
        ("data.fraction=0", r"'data.fraction' must be in \(0, 1\]"),
        ("data.domain=mri", "'data.domain' must be one of"),
        ("loss.temperature=0", "'loss.temperature' must be > 0"),
        ("train.nonfinite=ignore", "'train.nonfinite' must be stop or skip"),
        ("stages=[{epochs: 0}]", r"'stages\[0\].epochs' must be >= 1"),
        ("stages=[{epoch: 2}]", r"unknown config key 'stages\[0\].epoch'; did you mean"),
        ("noequals", "must look like key=value"),
        ("stages.0.store=x", "the list has 0 item"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_pretrain_config(overrides=[override])


def test_yaml_base_inheritance_and_errors(tmp_path):
    (tmp_path / "base.yaml").write_text("optim:\n  epochs: 9\n  batch_size: 64\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\noptim:\n  epochs: 4\n")
    cfg = load_pretrain_config(tmp_path / "child.yaml", ["model.arch=resnet50"])
    assert (cfg.optim.epochs, cfg.optim.batch_size, cfg.model.arch) == (4, 64, "resnet50")
    with pytest.raises(ConfigError, match="does not exist"):
        load_pretrain_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pretrain_config(tmp_path / "bad.yaml")
    (tmp_path / "loop.yaml").write_text("_base_: loop.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        load_pretrain_config(tmp_path / "loop.yaml")
    (tmp_path / "typo.yaml").write_text("optimm:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'optimm'; did you mean 'optim'"):
        load_pretrain_config(tmp_path / "typo.yaml")


def test_resolved_config_round_trips_through_yaml(tmp_path):
    import yaml

    cfg = load_pretrain_config(overrides=["stages=[{epochs: 2, domain: natural}, {epochs: 1}]"])
    again = config_from_dict(yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg
    assert diff(cfg, again) == []
    other = load_pretrain_config(overrides=["optim.lr=0.1", "data.workers=7"])
    assert diff(cfg, other, ignore=["data.workers"]) == ["optim.lr", "stages"]


def test_override_into_lists():
    data = apply_overrides({"stages": [{"epochs": 1}, {"epochs": 2}]}, ["stages.1.store=/x"])
    assert data["stages"][1] == {"epochs": 2, "store": "/x"}


def test_study_a_config_is_the_paper_setup():
    cfg = load_pretrain_config(EXPERIMENTS / "study_a_ct.yaml")
    assert cfg.method == "simclr" and cfg.model.arch == "resnet50"
    assert cfg.augment.size == 256 and cfg.augment.preset == "simclr"
    assert cfg.augment.intensity == "minmax" and cfg.augment.repeat == 3
    assert cfg.optim.batch_size == 4096 and cfg.optim.epochs == 100
    assert cfg.optim.name == "lars" and math.isclose(resolved_lr(cfg), 4.8)
    assert cfg.optim.weight_decay == 1e-6 and cfg.optim.exclude_bias_and_norm
    assert cfg.loss.temperature == 0.5 and cfg.model.proj_dim == 256


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_resolves(path):
    cfg = load_pretrain_config(path)
    assert cfg.study == ("study_a" if path.name.startswith("study_a") else "methods")
    if not path.name.startswith("study_a"):  # the SSL method configs: <method>_<domain>.yaml
        method = path.stem.rsplit("_", 1)[0].removesuffix("_vit").removesuffix("_base")
        assert cfg.method == ("simclr" if method == "methods" else method), path.name
    if "then_ct" in path.name:
        assert [(s.domain, s.epochs) for s in cfg.stages] == [("natural", 50), ("ct", 50)]
        assert cfg.total_epochs == 100
    if "mixed" in path.name:
        assert [s.domain for s in cfg.data.sources()] == ["ct", "natural"]
    if "pct" in path.name:
        assert cfg.data.fraction < 1
    if "imagenet" in path.name and "then" not in path.name:
        assert cfg.data.domain == "natural"
    if "hu_windows" in path.name:
        assert window_spec(cfg).channels == 3 and not window_spec(cfg).minmax
    spec = AugmentSpec.parse({"preset": cfg.augment.preset, **cfg.augment.params})  # valid
    assert spec.window_jitter_p == (0.8 if "hu_windows" in path.name else 0.0)

"""The eval config: precedence (defaults <- YAML <- flags <- key=value), unknown keys with
the closest eval key, value checks, and every shipped experiments/eval config resolving to
its study's setup."""

from __future__ import annotations

from pathlib import Path

import pytest

from radengine.cli import main
from radengine.config import ConfigError
from radengine.eval import cli as eval_cli
from radengine.eval import weights
from radengine.eval.config import augment_spec, load_eval_config

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments" / "eval"


def test_precedence_defaults_yaml_flags_overrides(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("protocol: linear\nlinear:\n  epochs: 7\n  lrs: [0.5]\nseeds: [1]\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: base.yaml\nlinear:\n  epochs: 9\n")
    cfg = load_eval_config(child)
    assert cfg.linear.epochs == 9 and cfg.linear.lrs == [0.5] and cfg.seeds == [1]
    assert cfg.linear.weight_decays == [0.0, 1e-5, 1e-3]  # untouched default
    cfg = load_eval_config(child, ["linear.epochs=3"], base={"seeds": [4, 5]})
    assert cfg.linear.epochs == 3 and cfg.seeds == [4, 5]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["knn.K=[5]"], "unknown config key 'knn.K'; did you mean 'knn.k'"),
        (["label_fraction=0.5"], "did you mean 'data.label_fraction'"),
        (["data.label_fraction=0"], "'data.label_fraction' must be in (0, 1]"),
        (["protocol=probe"], "'protocol' must be one of"),
        (["seeds=[1, 1]"], "must not repeat a seed"),
        (["finetune.test_checkpoint=first"], "must be last or best"),
        (["finetune.augment.blur=0.2"], "unknown augmentation key 'blur'"),
        (["segment.augment.preset=light"], None),  # valid, but moves pixels: refused later
        (["linear.optimizer=adam"], "sgd|adamw|lars"),
        (["init.format=timm"], "'init.format' must be one of"),
    ],
)
def test_bad_keys_and_values(overrides, message):
    if message is None:
        load_eval_config(overrides=overrides)
        return
    with pytest.raises(ConfigError) as info:
        load_eval_config(overrides=overrides)
    assert message in str(info.value)


def test_the_cli_formats_are_the_importers():
    assert eval_cli.FORMATS == weights.FORMATS


def test_a_yaml_for_another_protocol_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = EXPERIMENTS / "study_a_ctbr_finetune.yaml"
    assert main(["eval", "linear", "--config", str(cfg), "--tracking", "none"]) == 2
    assert "is a config for `eval finetune`, but the command is `eval linear`" in (
        capsys.readouterr().err
    )


def test_every_shipped_config_resolves():
    files = sorted(EXPERIMENTS.glob("*.yaml"))
    assert len(files) >= 8
    for path in files:
        cfg = load_eval_config(path)
        assert cfg.study in ("study_a", "study_b"), path.name
        assert cfg.tracking.experiment == cfg.study, path.name


def test_shipped_configs_are_the_studies_setups():
    a = load_eval_config(EXPERIMENTS / "study_a_ctbr_finetune.yaml")
    f = a.finetune
    assert (a.protocol, a.task, a.model.arch, a.input.size) == (
        "finetune",
        "body_region",
        "resnet50",
        256,
    )
    assert (f.optimizer, f.lr, f.weight_decay, f.batch_size, f.epochs) == (
        "lars",
        0.01,
        1e-4,
        4096,
        100,
    )
    assert f.test_checkpoint == "last" and a.seeds == [42, 1, 2, 3]
    light = augment_spec(f.augment)
    assert light.hflip_p == light.jitter_p == light.blur_p == 0.2
    assert light.brightness == (0.9, 1.1) and light.crop_scale == (0.8, 1.0)
    assert (
        load_eval_config(EXPERIMENTS / "study_a_ctbr_finetune_10pct.yaml").data.label_fraction
        == 0.1
    )
    med = load_eval_config(EXPERIMENTS / "study_a_medical_finetune.yaml").finetune
    assert (med.optimizer, med.batch_size, med.epochs, med.schedule, med.gamma) == (
        "adamw", 128, 50, "exponential", 0.96,
    )  # fmt: skip
    b = load_eval_config(EXPERIMENTS / "study_b_finetune.yaml")
    g = b.finetune
    assert (g.optimizer, g.lr, g.batch_size, g.schedule) == ("adam", 2e-4, 32, "plateau")
    assert (g.plateau_factor, g.plateau_patience, g.early_stopping) == (0.5, 5, 10)
    assert (g.monitor, g.test_checkpoint) == ("loss", "best")
    assert augment_spec(g.augment).crop is False and augment_spec(g.augment).jitter_p == 0
    s = load_eval_config(EXPERIMENTS / "study_b_segment.yaml").segment
    assert (s.optimizer, s.lr, s.schedule, s.loss) == ("adam", 1e-3, "cosine", "dice")
    knn = load_eval_config(EXPERIMENTS / "study_a_ctbr_knn.yaml").knn
    assert (knn.k, knn.temperature) == ([10, 20, 100, 200], 0.07)

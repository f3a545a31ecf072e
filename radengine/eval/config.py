"""The resolved configuration of one evaluation: defaults, then ``--config`` YAML (with
``_base_`` inheritance), then the command's flags, then ``key=value`` overrides.

The machinery is radengine.config's (type checks, ``_base_``, YAML-parsed override values);
unknown keys are rejected here against the *evaluation* schema, naming the closest key.

>>> cfg = load_eval_config(overrides=["protocol=knn", "knn.k=[20]"])
>>> cfg.protocol, cfg.knn.k
('knn', [20])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radengine import config as base_config
from radengine.config import ConfigError, _check

__all__ = [
    "EVAL_AUGMENT_PRESETS",
    "PROTOCOLS",
    "EvalConfig",
    "augment_spec",
    "load_eval_config",
]

PROTOCOLS = ("knn", "linear", "finetune", "segment")

# Augmentation presets of the evaluation protocols, on top of augment_views' "none".
# "light": study A's finetuning augmentation (each p = 0.2: crop, flip, jitter 0.1, blur;
# augment_views has no sharpness op; the crop is always drawn, but mild).
# "light_intensity": the same without geometry (segmentation flips image and mask itself).
EVAL_AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "light": {
        "crop": True,
        "crop_scale": (0.8, 1.0),
        "hflip_p": 0.2,
        "jitter_p": 0.2,
        "brightness": 0.1,
        "contrast": 0.1,
        "saturation": 0.1,
        "hue": 0.1,
        "blur_p": 0.2,
        "blur_sigma": (0.1, 1.0),
    },
    "light_intensity": {
        "jitter_p": 0.2,
        "brightness": 0.1,
        "contrast": 0.1,
        "blur_p": 0.2,
        "blur_sigma": (0.1, 1.0),
    },
}


def augment_spec(spec: Mapping[str, Any] | str) -> Any:
    """An ``AugmentSpec`` from an eval config's ``augment``: ``{"preset": name, **fields}``
    where the preset is one of augment_views' (simclr, ct, none) or "light" /
    "light_intensity" (:data:`EVAL_AUGMENT_PRESETS`, built on "none")."""
    from radengine.ops.augment import AugmentSpec

    d = {"preset": spec} if isinstance(spec, str) else dict(spec)
    preset = d.get("preset", "none")
    if preset in EVAL_AUGMENT_PRESETS:
        d = {**EVAL_AUGMENT_PRESETS[preset], **{k: v for k, v in d.items() if k != "preset"}}
        d["preset"] = "none"
    return AugmentSpec.parse(d)


@dataclass
class InitConfig:
    """Where the encoder's weights come from (``--init``).

    ``source``: ``scratch``; an MLflow run id or ``runs:/<id>`` (a pretraining run); a
    ``models:/...`` URI (e.g. from ``radengine weights import``); a pretraining run folder or
    checkpoint; or a published checkpoint file (read by radengine.eval.weights with
    ``format``/``key``). None: the newest finished pretraining run in the tracking store.
    """

    source: str | None = None
    format: str = "auto"  # published files: auto | torchvision | moco | simclr | byol | ...
    key: str | None = None  # path to the state dict inside a published file ("student")
    strict: bool = True  # missing or unexpected backbone keys are an error


@dataclass
class EvalDataConfig:
    domain: str = "ct"  # the built-in synthetic store's domain when store is null
    store: str | None = None  # None: the built-in synthetic store of `domain`
    split_seed: int = 0  # the store's patient-level train/val/test split (as pretraining's)
    label_fraction: float = 1.0  # share of the training patients whose labels are used
    workers: int = 0  # loader processes (finetune, segment)
    batch_size: int = 256  # images per forward pass when extracting features / evaluating


@dataclass
class EvalInputConfig:
    """How store images become network input (``augment_views`` "none": the full image
    resized). None: the pretraining run's value where the init is one, else the default
    in brackets."""

    size: int | None = None  # [224]
    intensity: Any = None  # CT windows ["minmax"]; ignored for RGB stores
    repeat: int | None = None  # [3]
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass
class EvalModelConfig:
    arch: str | None = None  # None: the init's architecture (scratch: resnet18)
    channels_last: bool | None = None  # None: on for convolutional backbones


@dataclass
class KnnEvalConfig:
    k: list[int] = field(default_factory=lambda: [10, 20, 100, 200])
    temperature: float = 0.07


@dataclass
class LinearEvalConfig:
    """A grid of linear heads on cached frozen features, trained together."""

    optimizer: str = "sgd"  # sgd | adamw | lars
    lrs: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3])
    weight_decays: list[float] = field(default_factory=lambda: [0.0, 1e-5, 1e-3])
    momentum: float = 0.9
    epochs: int = 100
    batch_size: int = 256
    normalize: bool = True  # standardise features with the training set's mean and std
    eval_every: int = 10  # epochs between validation passes (and always the last)


@dataclass
class TrainLoopConfig:
    """Optimisation of the whole network (finetune and segment)."""

    optimizer: str = "adamw"  # lars | sgd | adamw | adam
    lr: float = 5e-4
    weight_decay: float = 1e-4
    momentum: float = 0.9
    batch_size: int = 128
    epochs: int = 50
    warmup_epochs: float = 0.0  # linear warmup (cosine, exponential, constant; not plateau)
    schedule: str = "exponential"  # cosine | exponential | plateau | constant
    gamma: float = 0.96  # exponential: lr factor per epoch
    plateau_factor: float = 0.5
    plateau_patience: int = 5
    early_stopping: int = 0  # stop after this many epochs without improvement; 0: off
    monitor: str = "loss"  # what best / plateau / early stopping watch: loss | metric (val)
    test_checkpoint: str = "last"  # which weights are tested: last | best (by monitor)
    augment: dict[str, Any] = field(default_factory=lambda: {"preset": "light"})
    max_steps: int | None = None  # stop early after this many steps (smoke runs, tests)


@dataclass
class FinetuneEvalConfig(TrainLoopConfig):
    """Study A's medical-task recipe by default: AdamW, batch 128, 50 epochs, exponential
    decay 0.96 per epoch, light augmentation, the last epoch tested."""


@dataclass
class SegmentEvalConfig(TrainLoopConfig):
    """A U-Net decoder on the encoder's stage outputs; study B's recipe by default (Adam
    1e-3, cosine, Dice loss (+ cross-entropy here))."""

    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 32
    epochs: int = 30
    schedule: str = "cosine"
    monitor: str = "metric"
    augment: dict[str, Any] = field(default_factory=lambda: {"preset": "light_intensity"})
    hflip_p: float = 0.5  # flips image and mask together
    decoder_channels: list[int] = field(default_factory=lambda: [256, 128, 64, 32, 16])
    loss: str = "ce+dice"  # ce | dice | ce+dice
    freeze_encoder: bool = False


@dataclass
class CacheConfig:
    enabled: bool = True
    dir: str | None = None  # None: <radengine cache>/features
    dtype: str = "float16"  # float16 | float32 (float16 falls back to float32 on overflow)


@dataclass
class EvalTrackingConfig:
    enabled: bool = True
    uri: str | None = None  # None: MLFLOW_TRACKING_URI, else sqlite mlflow.db in the cwd
    experiment: str = "radengine-eval"
    run_name: str | None = None  # None: <protocol>-<task>-<init>-s<seed>
    system_metrics: bool = False
    tags: dict[str, str] = field(default_factory=dict)  # extra tags of every run (and results.json)


@dataclass
class EvalConfig:
    """Everything one ``radengine eval`` call needs (one MLflow run per seed)."""

    study: str = "quickstart"
    protocol: str = "linear"
    task: str | None = None  # None: body_region (CT) / class (images); segmentation (segment)
    seeds: list[int] = field(default_factory=lambda: [0])
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA and bf16-capable CPUs, else fp32) | fp32 | bf16
    out: str | None = None  # None: runs/eval/<protocol>-<task>-<time>
    progress: bool = True
    init: InitConfig = field(default_factory=InitConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    input: EvalInputConfig = field(default_factory=EvalInputConfig)
    model: EvalModelConfig = field(default_factory=EvalModelConfig)
    knn: KnnEvalConfig = field(default_factory=KnnEvalConfig)
    linear: LinearEvalConfig = field(default_factory=LinearEvalConfig)
    finetune: FinetuneEvalConfig = field(default_factory=FinetuneEvalConfig)
    segment: SegmentEvalConfig = field(default_factory=SegmentEvalConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    tracking: EvalTrackingConfig = field(default_factory=EvalTrackingConfig)

    def validate(self) -> EvalConfig:
        """Check value ranges; raise ConfigError naming the key."""
        _check(self.protocol in PROTOCOLS, "protocol", f"must be one of {PROTOCOLS}")
        _check(len(self.seeds) >= 1, "seeds", "must hold at least one seed")
        _check(len(set(self.seeds)) == len(self.seeds), "seeds", "must not repeat a seed")
        _check(
            self.precision in ("auto", "fp32", "bf16", "fp16"), "precision", "auto|fp32|bf16|fp16"
        )
        d = self.data
        _check(d.domain in ("ct", "natural"), "data.domain", "must be ct or natural")
        _check(
            0.0 < d.label_fraction <= 1.0,
            "data.label_fraction",
            f"must be in (0, 1], got {d.label_fraction}",
        )
        _check(d.workers >= 0, "data.workers", "must be >= 0")
        _check(d.batch_size >= 1, "data.batch_size", "must be >= 1")
        _check(self.input.size is None or self.input.size >= 8, "input.size", "must be >= 8")
        _check(self.input.repeat is None or self.input.repeat >= 1, "input.repeat", "must be >= 1")
        from radengine.eval.weights import FORMATS

        _check(self.init.format in FORMATS, "init.format", f"must be one of {FORMATS}")
        _check(len(self.knn.k) >= 1 and min(self.knn.k) >= 1, "knn.k", "must be integers >= 1")
        _check(self.knn.temperature > 0, "knn.temperature", "must be > 0")
        li = self.linear
        _check(li.optimizer in ("sgd", "adamw", "lars"), "linear.optimizer", "sgd|adamw|lars")
        _check(len(li.lrs) >= 1 and min(li.lrs) > 0, "linear.lrs", "must be numbers > 0")
        _check(
            len(li.weight_decays) >= 1 and min(li.weight_decays) >= 0,
            "linear.weight_decays",
            "must be numbers >= 0",
        )
        _check(li.epochs >= 1, "linear.epochs", "must be >= 1")
        _check(li.batch_size >= 1, "linear.batch_size", "must be >= 1")
        _check(li.eval_every >= 1, "linear.eval_every", "must be >= 1")
        for name in ("finetune", "segment"):
            t: TrainLoopConfig = getattr(self, name)
            opts = ("lars", "sgd", "adamw", "adam")
            _check(t.optimizer in opts, f"{name}.optimizer", f"must be one of {opts}")
            _check(t.lr > 0, f"{name}.lr", "must be > 0")
            _check(t.weight_decay >= 0, f"{name}.weight_decay", "must be >= 0")
            _check(t.batch_size >= 2, f"{name}.batch_size", "must be >= 2 (BatchNorm)")
            _check(t.epochs >= 1, f"{name}.epochs", "must be >= 1")
            _check(t.warmup_epochs >= 0, f"{name}.warmup_epochs", "must be >= 0")
            scheds = ("cosine", "exponential", "plateau", "constant")
            _check(t.schedule in scheds, f"{name}.schedule", f"must be one of {scheds}")
            _check(0 < t.gamma <= 1, f"{name}.gamma", "must be in (0, 1]")
            _check(0 < t.plateau_factor < 1, f"{name}.plateau_factor", "must be in (0, 1)")
            _check(t.early_stopping >= 0, f"{name}.early_stopping", "must be >= 0 (0: off)")
            _check(t.monitor in ("loss", "metric"), f"{name}.monitor", "must be loss or metric")
            _check(
                t.test_checkpoint in ("last", "best"),
                f"{name}.test_checkpoint",
                "must be last or best",
            )
            _check(t.max_steps is None or t.max_steps >= 1, f"{name}.max_steps", "must be >= 1")
            try:
                augment_spec(t.augment)
            except ValueError as exc:
                raise ConfigError(f"config key '{name}.augment': {exc}") from None
        s = self.segment
        _check(s.loss in ("ce", "dice", "ce+dice"), "segment.loss", "must be ce, dice or ce+dice")
        _check(
            len(s.decoder_channels) == 5 and min(s.decoder_channels) >= 1,
            "segment.decoder_channels",
            "must be 5 positive widths (one per decoder stage)",
        )
        _check(0 <= s.hflip_p <= 1, "segment.hflip_p", "must be a probability")
        _check(self.cache.dtype in ("float16", "float32"), "cache.dtype", "float16|float32")
        return self


def config_from_dict(data: Mapping[str, Any]) -> EvalConfig:
    """Build and validate an EvalConfig from (partial) nested dicts over the defaults."""
    return base_config.config_from_dict(data, EvalConfig)  # type: ignore[return-value]


def load_eval_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    base: Mapping[str, Any] | None = None,
) -> EvalConfig:
    """Defaults <- YAML at ``path`` (``_base_`` inheritance) <- ``base`` (the command's
    flags) <- ``overrides`` (``a.b=value``, values parsed as YAML).

    Raises:
        ConfigError: an unknown key (with the closest known one), a value of the wrong type
            or out of range, or an unreadable YAML.
    """
    data: dict[str, Any] = base_config.to_dict(EvalConfig())
    if path is not None:
        data = base_config._merge(data, base_config._read_with_bases(Path(path), set()))
    data = base_config._merge(data, base or {})
    data = base_config.apply_overrides(data, overrides)
    return config_from_dict(data)


def dump_yaml(cfg: EvalConfig) -> str:
    return base_config.dump_yaml(cfg)

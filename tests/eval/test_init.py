"""--init: scratch, a pretraining checkpoint, a run folder, published torchvision- and
MoCo-layout files; the architecture read from the weights; mismatches refused."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

from radengine.config import PretrainConfig, to_dict
from radengine.eval.common import EvalError
from radengine.eval.init import build_encoder, infer_arch, nested_keys, resolve_init
from radengine.models import resnet18, resnet50
from radengine.ssl.simclr import SimCLR

pytestmark = pytest.mark.usefixtures("one_thread")
URI = "sqlite:////nonexistent/mlflow.db"  # never touched: no --init here needs MLflow


def _randomise(model: nn.Module, gen: torch.Generator) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0, 0.1, generator=gen)
                m.running_mean.normal_(0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
            elif isinstance(m, nn.Conv2d):
                m.weight.normal_(0, 0.05, generator=gen)
    return model.eval()


def _same(a: nn.Module, b: nn.Module, gen: torch.Generator) -> bool:
    x = torch.randn(2, 3, 32, 32, generator=gen)
    with torch.no_grad():
        return torch.equal(a.eval().forward_features(x), b.eval().forward_features(x))


def _resolve_build(source, gen, **kw):
    init = resolve_init(str(source), uri=URI, echo=lambda s: None, fmt=kw.pop("fmt", "auto"))
    arch = kw.pop("arch", None) or init.arch or infer_arch(nested_keys(init.state))
    model, report = build_encoder(init, arch, 3, **kw)
    return init, model, report


def test_scratch_is_seeded_and_has_no_report(gen):
    init = resolve_init("scratch", uri=URI)
    assert init.kind == "scratch" and init.state is None
    torch.manual_seed(1)
    a, report = build_encoder(init, "resnet18", 3)
    torch.manual_seed(1)
    b, _ = build_encoder(init, "resnet18", 3)
    assert report is None and _same(a, b, gen)
    assert a.fc is None  # a backbone: the protocol adds its own head


def test_pretraining_checkpoint_and_run_folder(gen, tmp_path):
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=gen)))
    ssl = SimCLR(_randomise(resnet18(num_classes=0), gen), proj_dim=16)
    cfg = to_dict(PretrainConfig())
    cfg["augment"]["size"] = 48
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "step-00000004.pt"
    torch.save(
        {"format": 1, "model": ssl.state_dict(), "config": cfg, "state": {"run_id": "abc"}}, ckpt
    )
    init, model, report = _resolve_build(ckpt, gen)
    assert init.kind == "checkpoint" and init.arch == "resnet18" and init.pretrain_run_id == "abc"
    assert init.pretrain_config["augment"]["size"] == 48 and init.tags["method"] == "simclr"
    assert _same(model, ssl.backbone, gen)
    assert report.prefix == "backbone." and not report.missing and not report.unexpected
    assert report.dropped_head and all(k.startswith("projector.") for k in report.dropped_head)
    # a run folder: encoder.pt + config.yaml (what `radengine pretrain` leaves)
    torch.save(ssl.backbone.state_dict(), run / "encoder.pt")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    init, model, report = _resolve_build(run, gen)
    assert init.kind == "folder" and init.arch == "resnet18" and _same(model, ssl.backbone, gen)
    (run / "encoder.pt").unlink()  # no encoder.pt: the newest checkpoint
    init, model, _ = _resolve_build(run, gen)
    assert _same(model, ssl.backbone, gen)


def test_published_torchvision_and_moco_files(gen, tmp_path):
    src = _randomise(resnet18(num_classes=1000), gen)
    tv = tmp_path / "resnet18-supervised.pth"
    torch.save(src.state_dict(), tv)
    init, model, report = _resolve_build(tv, gen)
    assert init.kind == "file" and init.label == "resnet18-supervised"
    assert report.format == "torchvision" and sorted(report.dropped_head) == [
        "fc.bias",
        "fc.weight",
    ]
    assert _same(model, src, gen)

    # MoCo v2's layout (its released files hold a ResNet-50; a ResNet-18 keeps this fast)
    q = _randomise(resnet18(num_classes=128), gen)
    k = _randomise(resnet18(num_classes=128), gen)
    state = {f"module.encoder_q.{n}": v for n, v in q.state_dict().items()}
    state.update({f"module.encoder_k.{n}": v for n, v in k.state_dict().items()})
    state["module.queue"] = torch.randn(128, 64, generator=gen)
    moco = tmp_path / "moco_v2_800ep.pth.tar"
    torch.save({"epoch": 800, "arch": "resnet18", "state_dict": state}, moco)
    assert infer_arch(nested_keys(torch.load(moco, weights_only=True))) == "resnet18"
    assert infer_arch(["module.encoder_q." + k for k in resnet50().state_dict()]) == "resnet50"
    init, model, report = _resolve_build(moco, gen)
    assert report.format == "moco" and report.prefix == "module.encoder_q."
    assert "module.queue" in report.ignored and not report.missing
    assert _same(model, q, gen) and not _same(model, k, gen)
    # --init-format forces the layout; the wrong one is an error that says so
    with pytest.raises(EvalError, match="not a 'dino' checkpoint"):
        _resolve_build(moco, gen, fmt="dino", arch="resnet18")


def test_weights_of_another_architecture_are_refused(gen, tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(resnet18(num_classes=0).state_dict(), path)
    with pytest.raises(EvalError, match=r"does not match the model.*resnet18.*resnet50"):
        _resolve_build(path, gen, arch="resnet50")
    with pytest.raises(EvalError, match=r"resnet18.*resnet34"):  # same shapes, more blocks
        _resolve_build(path, gen, arch="resnet34")
    with pytest.raises(EvalError, match="neither 'scratch', an MLflow run id"):
        resolve_init(str(tmp_path / "nothing.pth"), uri=URI)
    bad = tmp_path / "notes.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(EvalError, match="cannot read it as a checkpoint"):
        resolve_init(str(bad), uri=URI)
    with pytest.raises(EvalError, match="no tracking store"):
        resolve_init("0123456789abcdef0123456789abcdef", uri=URI)


def test_a_final_checkpoint_reads_its_encoder_from_the_run_folder(gen, tmp_path):
    """The checkpoint at a schedule's end keeps the encoder in the run's encoder.pt; as an
    --init file it is whole again, and without encoder.pt the error names the missing file."""
    torch.manual_seed(int(torch.randint(2**31, (1,), generator=gen)))
    ssl = SimCLR(_randomise(resnet18(num_classes=0), gen), proj_dim=16)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "step-00000008.pt"
    slim = {k: v for k, v in ssl.state_dict().items() if not k.startswith("backbone.")}
    torch.save(
        {
            "format": 1, "model": slim, "encoder_file": "encoder.pt",
            "encoder_prefix": "backbone.", "config": to_dict(PretrainConfig()), "state": {},
        },
        ckpt,
    )  # fmt: skip
    torch.save(ssl.backbone.state_dict(), run / "encoder.pt")
    init, model, report = _resolve_build(ckpt, gen)
    assert init.kind == "checkpoint" and _same(model, ssl.backbone, gen)
    assert report.prefix == "backbone." and not report.missing
    (run / "encoder.pt").unlink()
    with pytest.raises(EvalError, match=r"step-00000008\.pt.*encoder\.pt, which is missing"):
        _resolve_build(ckpt, gen)

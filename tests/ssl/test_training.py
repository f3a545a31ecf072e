"""Every method through the trainer: a short run per method, exact resume after kill -9 for
momentum methods, a queue and DINO, 2 gloo processes equal to 1 for the methods with
cross-rank statistics, and SimCLR equal, bit for bit, to the two-view loop the
method-agnostic trainer replaced."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from radengine.config import load_pretrain_config
from radengine.data.builtin import write_synthetic_ct_store
from radengine.engine import checkpoint
from radengine.engine.trainer import pretrain
from radengine.models import register_model
from radengine.ssl import METHODS, method_class
from tests.engine.test_trainer import (  # noqa: F401 (nobn: a fixture)
    TINY,
    _free_port,
    ddp_rank_env,
    kill_9_after_checkpoint,
    nobn,
)
from tests.ssl.test_methods import SMALL

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ct_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stores") / "ct"
    write_synthetic_ct_store(path, patients=8, slices=6, size=32)
    return path


def _cfg(store: Path, out: Path, method: str, *extra: str):
    return load_pretrain_config(
        overrides=[*TINY, f"data.store={store}", f"train.out={out}", f"method={method}",
                   *SMALL[method], *extra]
    )  # fmt: skip


@pytest.mark.parametrize("method", [m for m in METHODS if m != "simclr"])
def test_each_method_trains_through_the_trainer(ct_store, tmp_path, capsys, method):
    out = tmp_path / method
    r = pretrain(_cfg(ct_store, out, method, "train.max_steps=3"))
    assert r.steps == 3 and r.loss == r.loss  # finite (not NaN)
    # the first line says when the method's quick-run settings are in the recipe
    said = "quick-run settings over its paper's recipe" in capsys.readouterr().err
    assert said == bool(method_class(method).QUICK)
    assert (out / "encoder.pt").exists()
    state = checkpoint.load(checkpoint.find(out / "checkpoints")[-1])
    text = (out / "config.yaml").read_text()
    assert f"method: {method}" in text and "ssl:" in text  # the resolved recipe is recorded
    keys = state["model"].keys()
    teacher = {"byol": "target.", "mocov2": "key_encoder.", "mocov3": "momentum_encoder.",
               "dino": "teacher."}.get(method)  # fmt: skip
    if teacher:
        assert any(k.startswith(teacher) for k in keys)
    if method == "mocov2":
        assert {"queue", "queue_ptr"} <= set(keys)
    if method == "dino":
        assert {"center", "teacher_temp"} <= set(keys)


# ----------------------------------------------------------------------------- resume


class TinyBN(nn.Module):
    """Two strided convolutions with BatchNorm: running statistics in the online network and
    in its EMA teacher, for a few milliseconds a step (what is tested is the method's state,
    not the backbone's)."""

    feature_dim = 16

    def __init__(self, in_chans: int = 3, **_: object) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_chans, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def register_tiny_bn() -> None:
    """``model.arch=test_tinybn`` in this process (the kill -9 run's, too)."""
    from radengine.models import registry

    if "test_tinybn" not in registry._MODELS:
        register_model("test_tinybn")(lambda **kw: TinyBN(**kw))


@pytest.fixture
def tiny_bn(monkeypatch):
    from radengine.models import registry

    monkeypatch.setitem(registry._MODELS, "test_tinybn", lambda **kw: TinyBN(**kw))


def _pretrain_cli(*args: str) -> list[str]:
    """``radengine pretrain ARGS`` in a fresh interpreter that knows ``test_tinybn``."""
    code = ("import sys; from tests.ssl.test_training import register_tiny_bn; "
            "register_tiny_bn(); from radengine.cli import main; "
            "sys.exit(main(sys.argv[1:]))")  # fmt: skip
    return [sys.executable, "-c", code, "pretrain", *args]


@pytest.mark.parametrize("method", ["byol", "mocov2", "dino"])
def test_kill_9_then_resume_gives_the_uninterrupted_state(ct_store, tmp_path, tiny_bn,
                                                          monkeypatch, method):  # fmt: skip
    """Teachers, queues, centers and their schedules are in the checkpoint: a run killed
    after step 8 and resumed ends with every tensor of the uninterrupted run's step 24
    (BatchNorm statistics of the online network and of the teacher included). The tiny
    backbone's steps take milliseconds: 16 steps after the kill point leave the killer time."""
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
    extra = [*TINY, f"data.store={ct_store}", "train.max_steps=24", f"method={method}",
             *SMALL[method], "model.arch=test_tinybn"]  # fmt: skip
    full = tmp_path / "full"
    pretrain(load_pretrain_config(overrides=[*extra, f"train.out={full}"]))
    killed = tmp_path / "killed"
    kill_9_after_checkpoint(_pretrain_cli(*extra, f"train.out={killed}"), killed, step=8)
    pretrain(load_pretrain_config(overrides=[*extra, f"train.out={killed}"]), resume=str(killed))
    a = checkpoint.load(full / "checkpoints" / "step-00000024.pt")["model"]
    b = checkpoint.load(killed / "checkpoints" / "step-00000024.pt")["model"]
    assert a.keys() == b.keys()
    assert any("running_mean" in k for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=lambda m, k=k: f"{k}: {m}")


def test_only_the_quick_runs_backbones_say_quick_settings(ct_store, tmp_path, tiny_bn, capsys):
    """A backbone other than ResNet-18/34 takes the paper's recipe, and the run says nothing
    of quick-run settings (BYOL has them on ResNet-18: test_each_method_trains_...)."""
    cfg = _cfg(ct_store, tmp_path / "run", "byol", "model.arch=test_tinybn", "train.max_steps=1")
    assert cfg.recipe == "quick" and cfg.ssl["momentum"] == 0.996  # the paper's
    pretrain(cfg)
    assert "quick-run settings" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- DDP (gloo)

DDP = [
    "model.arch=test_nobn",
    "model.proj_bn=false",
    "optim.name=sgd",
    "optim.momentum=0",
    "optim.lr=0.5",
    "optim.weight_decay=0",
    "optim.warmup_epochs=0",
    "train.max_steps=3",
    "train.precision=fp32",
]


def _worker(rank: int, world: int, port: int, store: str, out: str, method: str,
            *extra: str) -> None:  # fmt: skip
    ddp_rank_env(rank, world, port)
    r = pretrain(_cfg(Path(store), Path(out), method, *DDP, *extra))
    Path(out, f"loss-{rank}.json").write_text(json.dumps(r.loss))


# A smaller step for the losses of standardised embeddings: at lr 0.5 their 3 steps are
# chaotic enough to grow the rounding differences to 1e-4 relative.
EXTRA: dict[str, tuple[str, ...]] = {
    "barlowtwins": ("optim.lr=0.05",),
    "vicreg": ("optim.lr=0.05",),
}


@pytest.mark.usefixtures("nobn", "one_thread")
@pytest.mark.parametrize("method", ["mocov2", "mocov3", "barlowtwins", "vicreg", "dino"])
def test_two_gloo_ranks_equal_one_process(ct_store, tmp_path, method):
    """The methods with cross-rank statistics (a queue of every rank's keys, keys of the
    global batch, global standardisation and cross-correlation, global variance and
    covariance, the center): 2 processes on half batches = 1 process on the whole batch,
    in the loss and in every tensor of the model (teachers, queue, center included)."""
    torch.multiprocessing.spawn(
        _worker, args=(2, _free_port(), str(ct_store), str(tmp_path / "ddp"), method,
                       *EXTRA.get(method, ())),
        nprocs=2,
    )  # fmt: skip
    # the whole batch in this process (no process group: what a single-GPU run does)
    r = pretrain(_cfg(ct_store, tmp_path / "one", method, *DDP, *EXTRA.get(method, ())))
    (tmp_path / "one" / "loss-0.json").write_text(json.dumps(r.loss))
    one = checkpoint.load(checkpoint.find(tmp_path / "one" / "checkpoints")[-1])["model"]
    two = checkpoint.load(checkpoint.find(tmp_path / "ddp" / "checkpoints")[-1])["model"]
    assert one.keys() == two.keys()
    # Each tensor's error against its own scale. Summation orders differ between 1 and 2
    # processes (per-rank sums, then all-reduced); standardising uncentred embeddings (Barlow
    # Twins, VICReg) amplifies that rounding to ~2e-5 relative after 3 steps (EXTRA's lr 0.05).
    # test_losses.py holds the losses' gradients themselves to 1e-5 of their scale.
    for k in one:
        if not one[k].is_floating_point():
            assert torch.equal(two[k], one[k]), k
            continue
        scale = float(one[k].abs().max())
        err = float((two[k] - one[k]).abs().max())
        assert err <= 1e-4 * max(scale, 1e-6), (k, err, scale)
    l1 = json.loads((tmp_path / "one" / "loss-0.json").read_text())
    l2 = [json.loads((tmp_path / "ddp" / f"loss-{r}.json").read_text()) for r in (0, 1)]
    assert l2[0] == l2[1] == pytest.approx(l1, rel=1e-5)


# ----------------------------------------------------------------------------- SimCLR


def test_simclr_is_the_two_view_loop_it_was(ct_store, tmp_path):
    """The trainer before methods were pluggable, written out: the same seeds, views, model,
    loss and LARS steps give bit-identical weights and losses."""
    from radengine.data.loader import StoreLoader
    from radengine.data.store import Store
    from radengine.engine.optim import LARS, WarmupCosine, param_groups, scaled_lr
    from radengine.engine.views import step_seed
    from radengine.models import create_model
    from radengine.ops import nt_xent
    from radengine.ops.augment import AugmentSpec, augment_views, sample_params
    from radengine.ops.hu_window import WindowSpec
    from radengine.ssl.simclr import SimCLR

    steps = 4
    cfg = _cfg(ct_store, tmp_path / "run", "simclr", f"train.max_steps={steps}",
               "train.precision=fp32")  # fmt: skip
    r = pretrain(cfg)

    torch.manual_seed(0)
    model = SimCLR(
        create_model("resnet18", num_classes=0, in_chans=3, zero_init_residual=False),
        proj_dim=8,
        proj_hidden=None,
        proj_layers=2,
        proj_bn=True,
        temperature=0.5,
    )
    model = model.to(memory_format=torch.channels_last)
    lr = scaled_lr(8, "sqrt", None)
    opt = LARS(param_groups(model, 1e-6, True), lr=lr, momentum=0.9, weight_decay=1e-6)
    store = Store(ct_store)
    idx = store.select("train", fraction=1.0, seed=0)
    loader = StoreLoader(store, idx, batch_size=8, seed=0, workers=0, pin_memory=False)
    total = len(loader)
    sched = WarmupCosine(opt, total, round(0.5 * total), 0.0)
    spec = AugmentSpec.parse({"preset": "simclr"})
    window = WindowSpec.parse("minmax", repeat=3)
    losses = []
    with torch.random.fork_rng(devices=[]):
        batches = iter(loader.epoch(0, 0))
    for step in range(steps):
        x = next(batches)["image"]
        p = sample_params(spec, 2, 8, tuple(x.shape[1:3]), window, seed=step_seed(0, step, 0))
        (v1, v2), _ = augment_views(x, spec, views=2, size=32, intensity="minmax", repeat=3,
                                    params=p, channels_last=True)  # fmt: skip
        z = model.projector(model.backbone.forward_features(torch.cat([v1, v2])))
        loss = nt_xent(z.float(), 0.5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss))
    assert r.loss == sum(losses[-4:]) / 4  # the last logging window's mean (4 steps)
    ours = torch.load(tmp_path / "run" / "encoder.pt", weights_only=True)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(ours[k], v), k

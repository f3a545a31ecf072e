"""Every method through the trainer: a short run per method, exact resume after kill -9 for
momentum methods, a queue and DINO, 2 gloo processes equal to 1 for the methods with
cross-rank statistics, and SimCLR equal, bit for bit, to the two-view loop the
method-agnostic trainer replaced."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from radengine.config import load_pretrain_config
from radengine.data.builtin import write_synthetic_ct_store
from radengine.engine import checkpoint
from radengine.engine.trainer import pretrain
from radengine.ssl import METHODS
from tests.engine.test_trainer import TINY, _free_port, ddp_rank_env, kill_9_after_checkpoint
from tests.ssl.test_methods import SMALL


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
def test_each_method_trains_through_the_trainer(ct_store, tmp_path, method):
    out = tmp_path / method
    r = pretrain(_cfg(ct_store, out, method, "train.max_steps=3"))
    assert r.steps == 3 and r.loss == r.loss  # finite (not NaN)
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


@pytest.mark.parametrize("method", ["byol", "mocov2", "dino"])
def test_kill_9_then_resume_gives_the_uninterrupted_state(ct_store, tmp_path, method):
    """Teachers, queues, centers and their schedules are in the checkpoint: a run killed
    after step 8 and resumed ends with every tensor of the uninterrupted run's step 12."""
    extra = ["train.max_steps=12", f"method={method}", *SMALL[method]]
    full = tmp_path / "full"
    pretrain(load_pretrain_config(overrides=[*TINY, f"data.store={ct_store}",
                                             f"train.out={full}", *extra]))  # fmt: skip
    killed = tmp_path / "killed"
    args = [sys.executable, "-m", "radengine.cli", "pretrain", *TINY, f"data.store={ct_store}",
            f"train.out={killed}", *extra]  # fmt: skip
    kill_9_after_checkpoint(args, killed, step=8)
    pretrain(
        load_pretrain_config(overrides=[*TINY, f"data.store={ct_store}", f"train.out={killed}",
                                        *extra]),
        resume=str(killed),
    )  # fmt: skip
    a = checkpoint.load(full / "checkpoints" / "step-00000012.pt")["model"]
    b = checkpoint.load(killed / "checkpoints" / "step-00000012.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=lambda m, k=k: f"{k}: {m}")


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


@pytest.mark.parametrize("method", ["mocov2", "mocov3", "barlowtwins", "vicreg", "dino"])
def test_two_gloo_ranks_equal_one_process(ct_store, tmp_path, method):
    """The methods with cross-rank statistics (a queue of every rank's keys, keys of the
    global batch, global standardisation and cross-correlation, global variance and
    covariance, the center): 2 processes on half batches = 1 process on the whole batch,
    in the loss and in every tensor of the model (teachers, queue, center included)."""
    for world, name in ((2, "ddp"), (1, "one")):
        torch.multiprocessing.spawn(
            _worker, args=(world, _free_port(), str(ct_store), str(tmp_path / name), method,
                           *EXTRA.get(method, ())),
            nprocs=world,
        )  # fmt: skip
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

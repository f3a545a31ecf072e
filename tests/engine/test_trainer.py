"""The pretraining loop: exact resume after kill -9, non-finite losses, bad input, and
2-process gloo DDP equal to one process on the whole batch."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from radengine.config import load_pretrain_config
from radengine.data.builtin import write_synthetic_ct_store, write_synthetic_natural_store
from radengine.data.store import Store
from radengine.engine import checkpoint
from radengine.engine.errors import PretrainError
from radengine.engine.monitor import weighted_knn
from radengine.engine.trainer import pretrain
from radengine.models import register_model

# A tiny run: ResNet-18 on 32 px views, batch 8, no kNN, no tracking, in-process loading.
TINY = [
    "augment.size=32",
    "optim.batch_size=8",
    "optim.epochs=1",
    "data.workers=0",
    "knn.every=0",
    "tracking.enabled=false",
    "train.progress=false",
    "train.checkpoint_every=4",
]


@pytest.fixture(scope="module")
def ct_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stores") / "ct"
    write_synthetic_ct_store(path, patients=8, slices=6, size=32)
    return path


def _cfg(store: Path, out: Path, *extra: str):
    return load_pretrain_config(
        overrides=[*TINY, f"data.store={store}", f"train.out={out}", *extra]
    )


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "encoder.pt", weights_only=True)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "radengine.cli", "pretrain", *args]


def kill_9_after_checkpoint(args: list[str], out: Path, step: int) -> None:
    """Run the pretraining command ``args`` (into ``out``) and SIGKILL it as soon as its
    step-``step`` checkpoint exists; assert it was killed before finishing."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / "checkpoints" / f"step-{step:08d}.pt"
    deadline = time.time() + 180
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), f"the run never wrote its step-{step} checkpoint"
    assert not (out / "encoder.pt").exists(), "the run finished before it was killed"


def test_kill_9_then_resume_gives_the_uninterrupted_weights(ct_store, tmp_path):
    extra = ["train.max_steps=12"]
    full = tmp_path / "full"
    r = pretrain(_cfg(ct_store, full, *extra))
    assert r.steps == 12 and r.stopped and "max_steps" in r.stopped

    killed = tmp_path / "killed"
    kill_9_after_checkpoint(_cli(*TINY, f"data.store={ct_store}", f"train.out={killed}", *extra),
                            killed, step=8)  # fmt: skip

    resumed = pretrain(_cfg(ct_store, killed, *extra), resume=str(killed))
    assert resumed.steps == 12
    a, b = _weights(full), _weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # the checkpoint's optimizer state matches too
    sa = checkpoint.load(full / "checkpoints" / "step-00000012.pt")
    sb = checkpoint.load(killed / "checkpoints" / "step-00000012.pt")
    for i, st in sa["optimizer"]["state"].items():
        torch.testing.assert_close(
            st["momentum_buffer"], sb["optimizer"]["state"][i]["momentum_buffer"], rtol=0, atol=0
        )


def test_resume_continues_from_a_checkpoint_file(ct_store, tmp_path):
    out = tmp_path / "run"
    pretrain(_cfg(ct_store, out, "train.max_steps=4"))
    r = pretrain(
        _cfg(ct_store, out, "train.max_steps=8"),
        resume=str(out / "checkpoints" / "step-00000004.pt"),
    )
    assert r.steps == 8
    assert [p.name for p in checkpoint.find(out / "checkpoints")] == [
        "step-00000004.pt",
        "step-00000008.pt",
    ]


def test_the_checkpoint_at_the_schedules_end_holds_neither_optimizer_nor_encoder(
    ct_store, tmp_path
):
    """A finished run's checkpoint drops the momentum (nothing is left to optimize) and
    refers to encoder.pt for the encoder's weights, so they are on disk once; loading it gives
    the whole model back, and resuming the finished run still works."""
    out = tmp_path / "run"
    short = ["data.fraction=0.3", "train.checkpoint_every=4"]
    r = pretrain(_cfg(ct_store, out, *short))
    first, last = checkpoint.find(out / "checkpoints")
    raw = torch.load(last, weights_only=True)
    assert raw["encoder_file"] == "encoder.pt" and raw["encoder_prefix"] == "backbone."
    assert not any(k.startswith("backbone.") for k in raw["model"])
    assert last.stat().st_size < 0.5 * (out / "encoder.pt").stat().st_size
    state = checkpoint.load(last)
    assert state["state"]["step"] == r.steps and state["optimizer"] is None
    earlier = checkpoint.load(first)
    assert earlier["state"]["step"] < r.steps and earlier["optimizer"] is not None
    assert state["model"].keys() == earlier["model"].keys()  # the whole model, as before
    for k, v in _weights(out).items():
        torch.testing.assert_close(state["model"][f"backbone.{k}"], v, rtol=0, atol=0)
    again = pretrain(_cfg(ct_store, out, *short), resume=str(out))
    assert again.steps == r.steps
    assert checkpoint.load(last)["model"].keys() == earlier["model"].keys()

    # without its encoder.pt the final checkpoint is unusable, says why, and resume falls
    # back to the one before it
    (out / "encoder.pt").unlink()
    with pytest.raises(checkpoint.CheckpointError, match=r"encoder\.pt, which is missing"):
        checkpoint.load(last)
    with pytest.warns(UserWarning, match="keeps its encoder"):
        path, _ = checkpoint.latest(out / "checkpoints")
    assert path == first


def test_checkpoints_are_atomic_and_pruned(ct_store, tmp_path):
    out = tmp_path / "run"
    pretrain(_cfg(ct_store, out, "train.max_steps=9", "train.checkpoint_every=2"))
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step-00000008.pt", "step-00000009.pt"]  # keep 2; no temporary files
    state = checkpoint.load(out / "checkpoints" / "step-00000009.pt")
    assert state["state"]["step"] == 9 and state["config"]["optim"]["batch_size"] == 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 9


def test_a_torn_checkpoint_falls_back_to_the_previous(ct_store, tmp_path):
    out = tmp_path / "run"
    pretrain(_cfg(ct_store, out, "train.max_steps=8"))
    newest = out / "checkpoints" / "step-00000008.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="step-00000008"):
        path, state = checkpoint.latest(out / "checkpoints")
    assert path.name == "step-00000004.pt" and state["state"]["step"] == 4


def test_resume_with_another_config_is_refused_and_nothing_changes(ct_store, tmp_path):
    out = tmp_path / "run"
    pretrain(_cfg(ct_store, out, "train.max_steps=4"))
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # (optim.lr, a remedy for a diverging run, may change: see the diverged-stop test)
    with pytest.raises(PretrainError, match=r"another config.*optim\.momentum"):
        pretrain(_cfg(ct_store, out, "train.max_steps=8", "optim.momentum=0.5"), resume=str(out))
    after = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert before == after


def test_a_new_run_into_a_used_folder_is_refused(ct_store, tmp_path):
    out = tmp_path / "run"
    pretrain(_cfg(ct_store, out, "train.max_steps=4"))
    with pytest.raises(PretrainError, match=r"already holds checkpoints.*--resume"):
        pretrain(_cfg(ct_store, out, "train.max_steps=4"))


def _nan_at(monkeypatch, steps: set[int]):
    from radengine.ssl import simclr

    real = simclr.SimCLR.forward
    calls = {"n": 0}

    def forward(self, views):
        loss = real(self, views)
        calls["n"] += 1
        return loss * float("nan") if calls["n"] - 1 in steps else loss

    monkeypatch.setattr(simclr.SimCLR, "forward", forward)


def test_a_nan_loss_stops_the_run_naming_the_step(ct_store, tmp_path, monkeypatch):
    _nan_at(monkeypatch, {5})
    out = tmp_path / "run"
    with pytest.raises(PretrainError, match=r"loss is nan at step 5.*nonfinite=skip"):
        pretrain(_cfg(ct_store, out, "train.checkpoint_every=2"))
    # the last good checkpoint survives; nothing was written after the NaN
    assert [p.name for p in checkpoint.find(out / "checkpoints")] == [
        "step-00000002.pt",
        "step-00000004.pt",
    ]


def test_nan_losses_are_skipped_by_config(ct_store, tmp_path, monkeypatch):
    _nan_at(monkeypatch, {2, 3})
    r = pretrain(_cfg(ct_store, tmp_path / "run", "train.max_steps=6", "train.nonfinite=skip"))
    assert r.steps == 6 and r.skipped_steps == 2
    assert all(
        torch.isfinite(t).all()
        for t in _weights(tmp_path / "run").values()
        if t.is_floating_point()
    )


def test_too_many_nan_losses_in_a_row_stop(ct_store, tmp_path, monkeypatch):
    _nan_at(monkeypatch, set(range(100)))
    with pytest.raises(PretrainError, match="3 non-finite losses in a row"):
        pretrain(_cfg(ct_store, tmp_path / "run", "train.nonfinite=skip", "train.max_skips=3"))


def test_a_nan_input_is_skipped_without_a_trace(ct_store, tmp_path, monkeypatch):
    # A NaN batch goes through the forward pass in train mode, which writes NaN into the
    # BatchNorm running statistics before the loss is seen: the skip must undo that, or the
    # next checkpoint is refused ("the weights are not finite") and the run dies.
    from radengine.engine import trainer

    real = trainer.step_views

    def views(cfg, plan, stage, batches, step, *args):
        v1, v2 = real(cfg, plan, stage, batches, step, *args)
        return [v1 * float("nan"), v2] if step == 2 else [v1, v2]

    monkeypatch.setattr(trainer, "step_views", views)
    out = tmp_path / "run"
    r = pretrain(
        _cfg(
            ct_store,
            out,
            "train.max_steps=5",
            "train.nonfinite=skip",
            "train.checkpoint_every=1",
            "train.keep_checkpoints=10",
        )
    )
    assert r.steps == 5 and r.skipped_steps == 1
    before = checkpoint.load(out / "checkpoints" / "step-00000002.pt")["model"]
    after = checkpoint.load(out / "checkpoints" / "step-00000003.pt")["model"]  # the skipped
    stats = [k for k in before if "running_" in k or "num_batches_tracked" in k]
    assert stats  # the model has BatchNorm statistics to protect
    for k in before:  # weights and buffers exactly as before the skipped step
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0, msg=k)
    final = checkpoint.load(out / "checkpoints" / "step-00000005.pt")["model"]
    assert all(torch.isfinite(final[k]).all() for k in stats)


def _diverge_then_nan(monkeypatch, diverge_at: int, nan_at: int):
    """Blow the conv weights up (x1e10: BatchNorm keeps the loss finite, as in a run whose
    weights diverge before its loss does) at forward ``diverge_at``, NaN at ``nan_at``."""
    from radengine.ssl import simclr

    real = simclr.SimCLR.forward
    calls = {"n": 0}

    def forward(self, views):
        n = calls["n"]
        calls["n"] += 1
        if n == diverge_at:
            with torch.no_grad():
                for m in self.modules():
                    if isinstance(m, nn.Conv2d):
                        m.weight.mul_(1e10)
        loss = real(self, views)
        return loss * float("nan") if n == nan_at else loss

    monkeypatch.setattr(simclr.SimCLR, "forward", forward)


def test_a_diverged_stop_names_the_sane_checkpoint_and_a_remedy_resume_is_recorded(
    ct_store, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    extra = ["train.checkpoint_every=2", "train.keep_checkpoints=5"]
    _diverge_then_nan(monkeypatch, diverge_at=4, nan_at=7)
    with pytest.raises(PretrainError) as info:
        pretrain(_cfg(ct_store, out, *extra))
    message = str(info.value)
    sane = out / "checkpoints" / "step-00000004.pt"
    assert "loss is nan at step 7" in message
    assert f"The last checkpoint that looks sane is {sane} (step 4" in message
    assert "step-00000006.pt look diverged" in message
    assert f"--resume {sane}" in message and "optim.grad_clip" in message
    monkeypatch.undo()

    # the remedies the message names are accepted on a resume, and recorded
    r = pretrain(
        _cfg(ct_store, out, *extra, "train.max_steps=8", "optim.grad_clip=1.0", "optim.lr=0.01"),
        resume=str(sane),
    )
    assert r.steps == 8
    changes = [{"step": 4, "changes": {"optim.grad_clip": [None, 1.0], "optim.lr": [None, 0.01]}}]
    assert r.resume_changes == changes
    assert json.loads((out / "summary.json").read_text())["resume_changes"] == changes
    state = checkpoint.load(out / "checkpoints" / "step-00000008.pt")
    assert state["state"]["resume_changes"] == changes
    assert state["config"]["optim"]["grad_clip"] == 1.0
    assert state["scheduler"]["base_lrs"] == [0.01] * len(state["scheduler"]["base_lrs"])
    config_yaml = (out / "config.yaml").read_text()
    assert config_yaml.startswith("# resumed at step 4: optim.grad_clip None -> 1.0, optim.lr")
    assert load_pretrain_config(out / "config.yaml").optim.grad_clip == 1.0
    # anything else is still another config
    with pytest.raises(PretrainError, match=r"another config.*optim\.momentum"):
        pretrain(_cfg(ct_store, out, *extra, "optim.momentum=0.5"), resume=str(out))


def test_a_full_disk_at_a_checkpoint_then_resume(ct_store, tmp_path, monkeypatch):
    import errno

    from radengine.engine import trainer

    real_fsync = os.fsync

    def full(fd):  # the disk fills up from the step-8 checkpoint on
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith(".step-00000008"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "run"
    with pytest.raises(checkpoint.CheckpointError, match="no space left"):
        pretrain(_cfg(ct_store, out, "train.max_steps=12"))
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000004.pt"]
    monkeypatch.undo()

    # space was freed, but not much: rewriting the unchanged config.yaml must not be needed;
    # and a temporary file a SIGKILL left mid-checkpoint is cleared
    stray = out / "checkpoints" / ".step-00000008.pt.tmp-99999"
    stray.write_bytes(b"\0" * 1000)
    real_write = checkpoint.atomic_write

    def no_config(path, data):
        if Path(path).name == "config.yaml":
            raise checkpoint.CheckpointError(f"could not write {path}: no space left")
        real_write(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write", no_config)
    monkeypatch.setattr(trainer.checkpoint, "atomic_write", no_config)
    r = pretrain(_cfg(ct_store, out, "train.max_steps=12"), resume=str(out))
    assert r.steps == 12
    assert not stray.exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-00000008.pt",
        "step-00000012.pt",
    ]


def _disk_with_room_for(monkeypatch, folder: Path, n: int) -> list[str]:
    """A fake disk holding ``n`` checkpoints: a checkpoint write fails for space while ``n``
    complete ones exist. Returns the names of the writes that failed."""
    import errno

    real_fsync = os.fsync
    failed = []

    def fsync(fd):
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith(".step-") and len(checkpoint.find(folder)) >= n:
            failed.append(name)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return failed


def test_a_full_keep_set_is_pruned_before_the_new_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    failed = _disk_with_room_for(monkeypatch, folder, 2)
    for step in (1, 2, 3, 4):  # room for the keep-set of 2, not for 2 + 1
        checkpoint.save(folder, step, {"format": 1, "w": torch.zeros(100)}, keep=2)
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000003.pt", "step-00000004.pt"]
    assert failed  # statvfs said there was room: the write failed, pruned and was retried

    # statvfs says there is no room: prune first, no failing write at all
    failed.clear()
    monkeypatch.setattr(checkpoint, "_fits", lambda _folder, _size: False)
    checkpoint.save(folder, 5, {"format": 1, "w": torch.zeros(100)}, keep=2)
    assert failed == []
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000004.pt", "step-00000005.pt"]

    # keep=1 on a disk with room for one: the only good checkpoint is never deleted before
    # the new one is complete (a kill mid-write must leave one), so the write fails
    single = tmp_path / "single"
    monkeypatch.undo()
    _disk_with_room_for(monkeypatch, single, 1)
    checkpoint.save(single, 1, {"format": 1, "w": torch.zeros(100)}, keep=1)
    with pytest.raises(checkpoint.CheckpointError, match="no space left"):
        checkpoint.save(single, 2, {"format": 1, "w": torch.zeros(100)}, keep=1)
    assert [p.name for p in single.iterdir()] == ["step-00000001.pt"]


def test_bad_data_is_reported(ct_store, tmp_path):
    with pytest.raises(PretrainError, match="does not exist"):
        pretrain(_cfg(tmp_path / "missing", tmp_path / "a"))
    nat = tmp_path / "nat"
    write_synthetic_natural_store(nat, images=64, classes=2, size=32)
    with pytest.raises(PretrainError, match="holds natural data but the run's domain is ct"):
        pretrain(_cfg(nat, tmp_path / "b"))
    with pytest.raises(PretrainError, match=r"larger than the .* samples"):
        pretrain(_cfg(ct_store, tmp_path / "c", "optim.batch_size=4096"))
    assert not (tmp_path / "c" / "checkpoints").exists()
    with pytest.raises(PretrainError, match=r"augment: .*blur_pp.*blur_p"):
        pretrain(_cfg(ct_store, tmp_path / "d", "augment.params={blur_pp: 0.5}"))


def test_mixed_domains_share_every_batch(ct_store, tmp_path):
    nat = tmp_path / "nat"
    write_synthetic_natural_store(nat, images=256, classes=2, size=32)
    r = pretrain(
        _cfg(
            ct_store,
            tmp_path / "run",
            "train.max_steps=2",
            f"data.mix=[{{domain: natural, store: {nat}}}]",
        )
    )
    assert r.steps == 2


def test_sequential_stages_switch_domains(ct_store, tmp_path):
    nat = tmp_path / "nat"
    write_synthetic_natural_store(nat, images=64, classes=2, size=32)
    r = pretrain(
        _cfg(
            ct_store,
            tmp_path / "run",
            f"stages=[{{epochs: 1, domain: natural, store: {nat}}}, {{epochs: 1, domain: ct, store: {ct_store}}}]",
        )
    )
    # natural: 64 * 0.8 train images / 8 = 6 steps (patient = image), CT: 6 patients x 6 x 6 / 8
    assert r.steps == 6 + 27


def test_knn_monitor_reports_held_out_accuracy(ct_store, tmp_path):
    r = pretrain(_cfg(ct_store, tmp_path / "run", "knn.every=1", "train.max_steps=3"))
    # before training, and on the final weights of a run stopped before its epoch's end
    assert [step for step, _ in r.knn] == [0, 3]
    # every labelled val sample is a query (fewer than knn.queries), and an accuracy counts them
    queries = len(Store(ct_store).select("val", seed=0, labelled=True))
    assert r.knn_queries == queries > 0
    assert all(abs(acc * queries - round(acc * queries)) < 1e-6 for _, acc in r.knn)


def test_the_knn_summary_gives_its_resolution():
    """The run's last lines say how many held-out labels the monitor has and the binomial
    standard error of its accuracy: 342 queries at 87.7% cannot resolve a 1-point change."""
    from radengine.cli import _knn_noise

    assert _knn_noise([(0, 0.877), (42, 0.851)], 342) == (
        "342 held-out labels, standard error 1.9 points"
    )
    assert _knn_noise([(0, 0.5)], 100) == "100 held-out labels, standard error 5.0 points"
    assert _knn_noise([(0, 0.5)], None) == "held-out labels"


def _screen(text: str) -> list[str]:
    """What a terminal shows for ``text``: each line as overwritten after carriage returns."""
    shown = []
    for line in text.split("\n"):
        cells: list[str] = []
        for part in line.split("\r"):
            cells[: len(part)] = part
        shown.append("".join(cells).rstrip())
    return shown


def test_monitor_lines_stand_on_their_own_and_the_summary_loss_is_the_bars(
    ct_store, tmp_path, capsys
):
    r = pretrain(
        _cfg(
            ct_store,
            tmp_path / "run",
            "optim.batch_size=16",
            "data.fraction=0.5",
            "knn.every=1",
            "train.progress=true",
            "train.log_every=4",
        )
    )
    err = capsys.readouterr().err
    screen = _screen(err)
    knn_lines = [line for line in screen if "kNN monitor at step" in line]
    assert all(line.startswith("kNN monitor at step") for line in knn_lines), knn_lines
    # step 0 (before the bar), the epoch's end (while the bar is shown)
    assert [int(line.split()[4].rstrip(":")) for line in knn_lines] == [0, r.steps]
    assert all(line.endswith("% (ct labels)") for line in knn_lines)  # people read percents
    # the bar's last loss is the run's loss, and both say what it is a mean of
    bar = [line for line in screen if line.startswith("pretrain simclr")][-1]
    first = (r.steps - 1) // 4 * 4 + 1
    assert f"loss {r.loss:.4f} (mean of last {r.steps - first + 1} steps)" in bar, bar
    assert r.loss_label == f"mean of steps {first}-{r.steps}"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["loss"] == r.loss and summary["loss_label"] == r.loss_label


def test_an_output_folder_under_a_file_fails_before_data_and_model(ct_store, tmp_path, monkeypatch):
    from radengine.engine import trainer

    def never(*_a, **_k):
        raise AssertionError("built data or model before checking the output folder")

    monkeypatch.setattr(trainer, "build_stages", never)
    monkeypatch.setattr(trainer, "build_model", never)
    (tmp_path / "a-file").write_text("x")
    out = tmp_path / "a-file" / "run"
    with pytest.raises(PretrainError, match=rf"cannot write the run folder {out}: .*not a folder"):
        pretrain(_cfg(ct_store, out))


def test_a_full_disk_fails_before_data_and_model_and_leaves_nothing(
    ct_store, tmp_path, monkeypatch
):
    import errno

    from radengine.engine import trainer

    def never(*_a, **_k):
        raise AssertionError("built data or model before checking the output folder")

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer, "build_stages", never)
    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "new" / "run"
    with pytest.raises(PretrainError, match=rf"cannot write the run folder {out}: .*no space left"):
        pretrain(_cfg(ct_store, out))
    assert list(tmp_path.iterdir()) == []  # no probe file, no folders made for the check


def test_a_checkpoint_write_on_a_full_disk_names_the_file_and_leaves_no_temp(tmp_path, monkeypatch):
    import errno

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    folder = tmp_path / "checkpoints"
    checkpoint.save(folder, 1, {"format": 1, "w": torch.zeros(4)})
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.save(folder, 2, {"format": 1, "w": torch.zeros(300_000)})
    message = str(info.value)
    assert f"could not write {folder / 'step-00000002.pt'}: no space left" in message
    assert "it needs 1.1 MiB" in message and "--resume" in message
    assert [p.name for p in folder.iterdir()] == ["step-00000001.pt"]  # no temporary file


def test_weighted_knn_by_hand():
    bank = nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=1)
    labels = torch.tensor([0, 0, 1])
    q = nn.functional.normalize(torch.tensor([[1.0, 0.05], [0.1, 1.0]]), dim=1)
    assert weighted_knn(q, bank, labels, k=1, temperature=0.07).tolist() == [0, 1]
    # k=3: two class-0 neighbours at similarity ~0.1 outvote nothing against one at ~1.0
    assert weighted_knn(q, bank, labels, k=3, temperature=0.07).tolist() == [0, 1]


# ----------------------------------------------------------------------------- DDP (gloo)


class _NoBN(nn.Module):
    """A backbone without batch statistics, so ranks and one process must agree exactly."""

    feature_dim = 16

    def __init__(self, in_chans: int = 3, **_: object) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_chans, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _register_nobn() -> None:
    """In a spawned worker (a fresh process) only; in-process tests use the ``nobn`` fixture,
    which takes the name out of the registry again."""
    from radengine.models import registry

    if "test_nobn" not in registry._MODELS:
        register_model("test_nobn")(lambda **kw: _NoBN(**kw))


@pytest.fixture
def nobn(monkeypatch):
    from radengine.models import registry

    monkeypatch.setitem(registry._MODELS, "test_nobn", lambda **kw: _NoBN(**kw))


DDP_EXTRA = [
    "model.arch=test_nobn",
    "model.proj_bn=false",
    "model.proj_dim=8",
    "optim.name=sgd",
    "optim.momentum=0",
    "optim.lr=0.5",
    "optim.weight_decay=0",
    "optim.warmup_epochs=0",
    "train.max_steps=3",
    "train.precision=fp32",  # exact comparisons; bf16 would round differently per rank
]


def ddp_rank_env(rank: int, world: int, port: int) -> None:
    """What torchrun sets for a rank (loopback rendezvous), one thread, the nobn model."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    _register_nobn()


def _ddp_worker(rank: int, world: int, port: int, store: str, out: str) -> None:
    ddp_rank_env(rank, world, port)
    cfg = _cfg(Path(store), Path(out), *DDP_EXTRA)
    r = pretrain(cfg)
    Path(out, f"loss-{rank}.json").write_text(json.dumps(r.loss))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_equal_one_process(ct_store, tmp_path):
    torch.multiprocessing.spawn(
        _ddp_worker, args=(2, _free_port(), str(ct_store), str(tmp_path / "ddp")), nprocs=2
    )
    torch.multiprocessing.spawn(
        _ddp_worker, args=(1, _free_port(), str(ct_store), str(tmp_path / "one")), nprocs=1
    )
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "ddp")
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=k)
    l1 = json.loads((tmp_path / "one" / "loss-0.json").read_text())
    l2 = [json.loads((tmp_path / "ddp" / f"loss-{r}.json").read_text()) for r in (0, 1)]
    assert l2[0] == l2[1]  # every rank reports the global loss
    assert l2[0] == pytest.approx(l1, rel=1e-5)
    # and the weights moved: the comparison is not between two untouched inits
    torch.manual_seed(0)  # the trainer seeds with cfg.seed (0) before building the model
    init = _NoBN()
    assert not torch.allclose(one["net.0.weight"], init.net[0].weight)


def test_torch_compile_trains_like_eager(ct_store, tmp_path, nobn):
    extra = [*DDP_EXTRA, "train.max_steps=2"]
    eager = pretrain(_cfg(ct_store, tmp_path / "eager", *extra))
    compiled = pretrain(_cfg(ct_store, tmp_path / "compiled", *extra, "model.compile=true"))
    assert compiled.loss == pytest.approx(eager.loss, rel=1e-4)
    a, b = _weights(tmp_path / "eager"), _weights(tmp_path / "compiled")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


def test_grad_clip_bounds_the_update(ct_store, tmp_path, nobn):
    # plain SGD (no momentum or decay): one step moves the weights by lr * clipped grad, whose
    # global norm is at most grad_clip
    from radengine.engine.setup import build_model

    lr, clip = 0.5, 1e-4
    cfg = _cfg(
        ct_store, tmp_path / "run", *DDP_EXTRA, "train.max_steps=1", f"optim.grad_clip={clip}"
    )
    torch.manual_seed(cfg.seed)  # the trainer's init
    before = build_model(cfg, 3).backbone.state_dict()
    pretrain(cfg)
    after = _weights(tmp_path / "run")
    moved = torch.sqrt(sum(((after[k] - before[k]) ** 2).sum() for k in before))
    assert 0 < moved <= lr * clip * (1 + 1e-4)
    unclipped = pretrain(_cfg(ct_store, tmp_path / "free", *DDP_EXTRA, "train.max_steps=1"))
    free = _weights(tmp_path / "free")
    assert torch.sqrt(sum(((free[k] - before[k]) ** 2).sum() for k in before)) > 10 * moved
    assert unclipped.steps == 1

"""The pretraining loop: store -> loader -> device augmentation -> SSL method -> LARS,
with DDP, bf16, atomic checkpoints, exact resume and MLflow tracking (rank 0).

Determinism. Everything random in a step is a pure function of (seed, step): the loader's
order is a function of (seed, epoch) (radengine/data/loader.py), and each step's
augmentation parameters are drawn for the GLOBAL batch from a generator seeded with
(seed, step, source) and then sliced to this rank's rows (radengine/engine/views.py). So a
resumed run replays exactly the batches and views the uninterrupted run would have seen,
and W ranks see exactly the views one process would (only the BN statistics, per rank,
differ; the 2-process gloo test uses a model without BN and shows equal losses and
gradients).

Non-finite losses. Each step all-reduces its loss first, so every rank takes the same
decision: ``train.nonfinite=stop`` ends the run with an error naming the step and the last
checkpoint that looks sane (finite loss and a weight norm in line with the earlier ones; a
run can diverge to huge but finite weights before its loss turns NaN), with the command to
resume from it; ``skip`` drops the update (backward still runs so DDP's bookkeeping stays in
step), restores the buffers the forward pass updated (BatchNorm statistics) so the step
leaves no trace, and stops only after ``train.max_skips`` skips in a row. A checkpoint is
never written from non-finite weights. A resume may change the remedies (RESUME_REMEDY_KEYS
in radengine/engine/rundir.py: the learning rate, gradient clipping,
train.nonfinite/max_skips); each change is recorded (checkpoint, summary.json, config.yaml
comments, MLflow tag ``resume_changes``).

Preemption. SIGTERM/SIGUSR1 (Slurm, Kubernetes, torchrun forwarding them) set a flag that
rides on the same per-step all-reduce as the loss, so when any rank is signalled every rank
stops after the same step; rank 0 writes a checkpoint, and the run ends as ``preempted``
(no encoder.pt: the encoder is not final; ``radengine pretrain`` exits 3, see
radengine/cli.py). Loader workers
ignore these signals (radengine/data/loader.py), so they outlive the step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from radengine import config as config_mod
from radengine.config import PretrainConfig
from radengine.data.store import remove_temp_files
from radengine.engine import checkpoint, distributed
from radengine.engine.errors import PretrainError
from radengine.engine.monitor import knn_monitor
from radengine.engine.optim import WarmupCosine
from radengine.engine.run_tracking import open_tracker, start_run
from radengine.engine.rundir import check_writable, config_text, resolve_out, write_if_changed
from radengine.engine.setup import amp_dtype, build_model, build_optimizer, channels, resolved_lr
from radengine.engine.stages import Stage, build_stages
from radengine.engine.views import ViewPlan, step_views, window_spec
from radengine.fmt import percent

__all__ = ["PretrainResult", "pretrain"]

CHECKPOINT_FORMAT = 1

# A checkpoint looks sane when its loss is finite and at most this many times the median of
# the earlier checkpoints' losses, and its weight norm is finite and at most this many times
# the median of the earlier norms (the initial one included). Divergence shows as norms
# orders of magnitude larger (1e28 before the loss turns NaN); healthy training changes the
# norm a few-fold at most.
SANE_FACTOR = 10.0


@dataclass
class PretrainResult:
    """What a finished (or stopped) run leaves behind.

    ``loss`` is the mean training loss over the run's last logging window (``train.log_every``
    steps or fewer), the value the progress bar shows last and the last ``train/loss`` (and
    ``final/loss``) metric; ``loss_label`` says which steps it averages, for display next to
    it. ``knn`` holds (step, accuracy) pairs as fractions in [0, 1], on ``knn_queries``
    held-out samples (None when no pass ran in this process); ``data_wait`` is a fraction of
    the wall time (print both as percents).

    ``images_per_second`` and ``data_wait`` are over the whole call (start-up and kNN passes
    included); ``extra["step_times"]`` holds (data wait, step) seconds of every step this
    process ran, for steady-state figures (``radengine bench pipeline`` uses them).

    ``preempted``: stopped by a signal (on any rank) after writing ``checkpoint``; the run is
    not finished, no encoder.pt was written, and ``--resume out`` continues it.
    ``resume_changes``: the remedy keys changed on resumes, as
    ``{"step": N, "changes": {key: [old, new]}}`` entries.
    ``tracking_uri`` and ``artifact_uri``: where MLflow keeps the run (its store, and the
    folder or URI of its artifacts: config.yaml, checkpoints with tracking.log_checkpoints;
    the logged model sits under the experiment's artifact location); None untracked.
    """

    out: Path
    run_id: str | None
    steps: int
    epochs: float
    loss: float
    knn: list[tuple[int, float]]
    knn_queries: int | None
    seconds: float
    images_per_second: float
    data_wait: float
    checkpoint: Path | None
    model_uri: str | None = None
    stopped: str | None = None
    skipped_steps: int = 0
    loss_label: str = "no step run"
    preempted: bool = False
    resume_changes: list[dict[str, Any]] = field(default_factory=list)
    tracking_uri: str | None = None
    artifact_uri: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- the run


class _Stop(Exception):
    pass


@dataclass
class _State:
    step: int = 0  # optimizer steps taken (skipped ones included)
    epoch: int = 0
    step_in_epoch: int = 0
    skipped: int = 0
    consecutive_skips: int = 0
    knn: list[tuple[int, float]] = field(default_factory=list)
    run_id: str | None = None
    elapsed: float = 0.0
    # one {"step", "loss", "norm"} per checkpoint written (loss: mean of the finite losses
    # since the previous one; norm: global L2 norm of the parameters), for naming the last
    # sane checkpoint when the run diverges
    checkpoints: list[dict[str, float]] = field(default_factory=list)
    init_norm: float = float("nan")
    resume_changes: list[dict[str, Any]] = field(default_factory=list)


def pretrain(
    cfg: PretrainConfig,
    *,
    resume: str | None = None,
    echo: Callable[[str], None] | None = None,
) -> PretrainResult:
    """Run (or resume) one pretraining job described by ``cfg``.

    Args:
        cfg: the resolved config (:func:`radengine.config.load_pretrain_config`).
        resume: a run folder or checkpoint file to continue from exactly.
        echo: where rank 0's messages go (default: stderr).

    Returns:
        A :class:`PretrainResult` (on every rank; ``run_id`` is broadcast from rank 0).

    Raises:
        PretrainError: bad data, config or resume target, or a non-finite loss with
            ``train.nonfinite=stop``; the message says what to do.
    """
    cfg.validate()
    dist_info = distributed.setup(cfg.train.device, cfg.dist.timeout_min, echo)
    broken = False
    try:
        return _Trainer(cfg, dist_info, resume, echo).run()
    except distributed.DistributedError as exc:
        broken = exc.broken
        raise
    finally:
        distributed.cleanup(dist_info, broken=broken)


class _Trainer:
    def __init__(
        self,
        cfg: PretrainConfig,
        dist_info: distributed.DistInfo,
        resume: str | None,
        echo: Callable[[str], None] | None,
    ) -> None:
        self.cfg = cfg
        self.dist = dist_info
        self.device = dist_info.device
        self.echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)

        out, state, changes = resolve_out(cfg, resume) if dist_info.main else (None, None, {})
        out = distributed.broadcast_object(str(out) if out else None)
        self.out = Path(out)
        if dist_info.main:  # before the data and model are built: fail in seconds
            check_writable(self.out)
        # every rank reads the checkpoint itself (same file system assumed, as torchrun jobs)
        if resume and not dist_info.main:
            _, state, changes = resolve_out(cfg, resume)
        self.resume_state = state
        self.resume_changes = changes

        try:  # the augmentation options fail here, not at the first step
            self.window = window_spec(cfg)
        except ValueError as exc:
            raise PretrainError(f"augment: {exc}") from None
        self.stages = build_stages(cfg, dist_info)
        domains = {s.domain for st in self.stages for s in st.sources}
        chans = {channels(cfg, dom) for dom in domains}
        if len(chans) > 1:
            raise PretrainError(
                "mixed CT and natural images need the same channel count: set "
                "augment.repeat (and augment.intensity) so CT gives 3 channels"
            )
        self.in_chans = chans.pop()
        self.total_steps = sum(st.epochs * st.steps_per_epoch for st in self.stages)
        self.total_epochs = sum(st.epochs for st in self.stages)
        first = self.stages[0].steps_per_epoch
        self.warmup_steps = min(self.total_steps, round(cfg.optim.warmup_epochs * first))

        self.amp = amp_dtype(cfg, self.device)
        self.view_dtype = self.amp if self.amp is not None else torch.float32
        cl = cfg.model.channels_last
        self.channels_last = cl if cl is not None else not cfg.model.arch.startswith("vit")

        torch.manual_seed(cfg.seed)
        model = build_model(cfg, self.in_chans)
        if cfg.model.sync_bn and dist_info.distributed and self.device.type != "cuda":
            raise PretrainError(
                "model.sync_bn needs CUDA: torch's SyncBatchNorm runs on GPUs only; set "
                "model.sync_bn=false for CPU (gloo) runs"
            )
        if cfg.model.sync_bn and dist_info.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.module = model
        self.view_plan = ViewPlan.of(cfg, model)
        self.lr = resolved_lr(cfg)
        self.optimizer = build_optimizer(cfg, model, self.lr)
        self.scheduler = WarmupCosine(
            self.optimizer, self.total_steps, self.warmup_steps, cfg.optim.final_lr_fraction
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.state = _State()
        self._losses_since_checkpoint: list[float] = []
        if state is not None:
            self._restore(state)
        else:
            self.state.init_norm = self._param_norm()
        if dist_info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.model = torch.compile(model) if cfg.model.compile else model
        self.tracker = open_tracker(cfg, dist_info.main)
        self._knn_warned = False
        self._knn_queries: int | None = None  # the monitor's held-out samples, once it ran
        self._bar: Any = None  # the tqdm bar while one is shown (rank 0, train.progress)

    def _say(self, message: str) -> None:
        """``echo`` a line of its own: an active progress bar is cleared first and redrawn
        below the line, so the two never share a terminal line."""
        bar = self._bar
        if bar is None:
            self.echo(message)
            return
        bar.clear()
        try:
            self.echo(message)
        finally:
            bar.refresh()

    # -- checkpoints

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise PretrainError(f"checkpoint format {state.get('format')} is not supported")
        self.module.load_state_dict(state["model"])
        if state["optimizer"] is not None:  # None: written at the end of the schedule
            self.optimizer.load_state_dict(state["optimizer"])
        elif state["state"]["step"] < self.total_steps:
            raise PretrainError(
                f"the checkpoint at step {state['state']['step']} holds no optimizer state "
                f"(written at the end of its schedule) but this config runs "
                f"{self.total_steps} steps; start a new run from its encoder instead"
            )
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])
        s = state["state"]
        self.state = _State(
            step=s["step"],
            epoch=s["epoch"],
            step_in_epoch=s["step_in_epoch"],
            skipped=s["skipped"],
            knn=[tuple(x) for x in s["knn"]],
            run_id=s["run_id"],
            elapsed=s["elapsed"],
            # absent from checkpoints written before they were recorded
            checkpoints=[dict(r) for r in s.get("checkpoints", [])],
            init_norm=s.get("init_norm", float("nan")),
            resume_changes=list(s.get("resume_changes", [])),
        )
        if self.resume_changes:
            self.state.resume_changes.append({"step": s["step"], "changes": self.resume_changes})
            self._use_lr(self.lr)

    def _use_lr(self, lr: float) -> None:
        """Continue the schedule from the current step with peak lr ``lr`` (a resume that
        changes the lr: the loaded scheduler and optimizer states carry the old one)."""
        if all(base == lr for base in self.scheduler.base_lrs):
            return
        self.scheduler.base_lrs = [lr] * len(self.optimizer.param_groups)
        for group, now in zip(self.optimizer.param_groups, self.scheduler.get_lr(), strict=True):
            group["initial_lr"] = lr
            group["lr"] = now
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def _weights_finite(self) -> bool:
        flags = [
            torch.isfinite(t).all()
            for t in self.module.state_dict().values()
            if t.is_floating_point()
        ]
        return bool(torch.stack(flags).all()) if flags else True

    def _param_norm(self) -> float:
        norms = [p.detach().float().norm() for p in self.module.parameters()]
        return float(torch.stack(norms).norm()) if norms else 0.0

    def save_checkpoint(self) -> Path | None:
        """Rank 0 writes the checkpoint of the current step; every rank records its loss and
        weight norm (identical on all ranks), so any rank can name the last sane one."""
        s = self.state
        if not self._weights_finite():
            raise PretrainError(
                f"the weights are not finite at step {s.step}; no checkpoint written. "
                + self._resume_advice()
            )
        losses = self._losses_since_checkpoint
        record = {
            "step": s.step,
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "norm": self._param_norm(),
        }
        s.checkpoints = [r for r in s.checkpoints if r["step"] < s.step] + [record]
        self._losses_since_checkpoint = []
        if not self.dist.main:
            return None
        end = s.step >= self.total_steps
        model = self.module.state_dict()
        encoder_keys: dict[str, str] = {}
        if end:
            # The schedule's end: encoder.pt is written first and the checkpoint refers to it
            # for the encoder's weights (checkpoint.load puts them back), so a finished run
            # keeps them once. A signal at the last step still finishes the run, so this
            # encoder.pt is never removed as a preempted run's would be.
            prefix = self._encoder_prefix()
            checkpoint.atomic_write(
                self.out / "encoder.pt", checkpoint.state_bytes(self.module.encoder)
            )
            model = {k: v for k, v in model.items() if not k.startswith(prefix)}
            encoder_keys = {"encoder_file": "encoder.pt", "encoder_prefix": prefix}
        payload = {
            "format": CHECKPOINT_FORMAT,
            "model": model,
            **encoder_keys,
            # A checkpoint at the schedule's end drops the optimizer state (momentum: as large
            # as the model): nothing is left to optimize, and the run's length cannot change on
            # resume (optim.epochs is not resume-free).
            "optimizer": None if end else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": checkpoint.rng_state(),
            "config": config_mod.to_dict(self.cfg),
            "state": {
                "step": s.step,
                "epoch": s.epoch,
                "step_in_epoch": s.step_in_epoch,
                "skipped": s.skipped,
                "knn": [list(x) for x in s.knn],
                "run_id": s.run_id,
                "elapsed": s.elapsed + (time.perf_counter() - self._t_start),
                "checkpoints": s.checkpoints,
                "init_norm": s.init_norm,
                "resume_changes": s.resume_changes,
            },
        }
        path = checkpoint.save(
            self.out / "checkpoints", s.step, payload, keep=self.cfg.train.keep_checkpoints
        )
        if self.cfg.tracking.log_checkpoints:
            # the run keeps the checkpoints the run folder keeps (train.keep_checkpoints)
            if end:  # and the encoder.pt its final checkpoint refers to
                self.tracker.log_artifact(self.out / "encoder.pt")
            self.tracker.log_artifact(path, "checkpoints")
            kept = {p.name for p in checkpoint.find(self.out / "checkpoints")}
            self.tracker.prune_artifacts("checkpoints", keep=kept)
        return path

    def _encoder_prefix(self) -> str:
        """The prefix of the encoder's keys in the module's state dict (``backbone.``;
        DINO's ``teacher.backbone.``)."""
        for name, child in self.module.named_modules():
            if name and child is self.module.encoder:
                return name + "."
        raise RuntimeError(f"{type(self.module).__name__}.encoder is not one of its modules")

    def _sane_checkpoint(self) -> tuple[Path, dict[str, float]] | None:
        """The newest kept checkpoint that looks sane (see SANE_FACTOR) and its record."""
        s = self.state
        kept = {p.name: p for p in checkpoint.find(self.out / "checkpoints")}
        for i in range(len(s.checkpoints) - 1, -1, -1):
            r = s.checkpoints[i]
            path = checkpoint.path_for(self.out / "checkpoints", int(r["step"]))
            if path.name not in kept:
                continue
            earlier = s.checkpoints[:i]
            losses = [e["loss"] for e in earlier if math.isfinite(e["loss"])]
            norms = [e["norm"] for e in earlier if math.isfinite(e["norm"])]
            if math.isfinite(s.init_norm):
                norms.append(s.init_norm)
            if not (math.isfinite(r["loss"]) and math.isfinite(r["norm"])):
                continue
            if losses and r["loss"] > SANE_FACTOR * float(np.median(losses)):
                continue
            if norms and r["norm"] > SANE_FACTOR * float(np.median(norms)):
                continue
            return path, r
        return None

    def _resume_advice(self) -> str:
        """Which checkpoint to resume from after a divergence, and how (the remedy keys a
        resume may change)."""
        folder = self.out / "checkpoints"
        found = self._sane_checkpoint()
        remedies = "optim.grad_clip=1.0, a lower optim.lr, or train.nonfinite=skip"
        if found is None:
            return (
                f"No checkpoint kept in {folder} looks sane (finite loss, weight norm within "
                f"{SANE_FACTOR:g}x of the earlier ones): start a new run with {remedies}"
            )
        path, r = found
        newest = checkpoint.find(folder)
        text = (
            f"The last checkpoint that looks sane is {path} "
            f"(step {r['step']}, loss {r['loss']:.4g})"
        )
        later = [p.name for p in newest if p.name > path.name]
        if later:
            text += f"; the later {', '.join(later)} look diverged (weight norm or loss)"
        return (
            f"{text}. Resume from it with a remedy: radengine pretrain --config "
            f"{self.out / 'config.yaml'} --resume {path} and {remedies} (a resume may change "
            "these keys; the change is recorded)"
        )

    # -- tracking

    def _start_tracking(self) -> None:
        s = self.state
        resolved = {
            "lr": self.lr,
            "world_size": self.dist.world_size,
            "steps_per_epoch": ",".join(str(st.steps_per_epoch) for st in self.stages),
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "in_chans": self.in_chans,
            "precision": str(self.amp).replace("torch.", "") if self.amp else "fp32",
            "device": self.device.type,
        }
        run_id = start_run(
            self.tracker,
            self.cfg,
            self.stages,
            self.out,
            resolved,
            run_id=s.run_id,
            step=s.step,
            resume_changes=s.resume_changes,
        )
        self.state.run_id = distributed.broadcast_object(run_id)

    # -- the loop

    def _stage_of(self, epoch: int) -> Stage:
        e = epoch
        for st in self.stages:
            if e < st.epochs:
                return st
            e -= st.epochs
        return self.stages[-1]

    def _batches(self, stage: Stage, epoch: int, start: int) -> Iterator[list[dict[str, Tensor]]]:
        # DataLoader draws its workers' base seed from the global RNG; keep that draw out
        # of the training RNG stream so a resumed run continues it exactly.
        with torch.random.fork_rng(devices=[]):
            iters = [iter(ld.epoch(epoch, start)) for ld in stage.loaders]
        done = False
        try:
            for _ in range(start, stage.steps_per_epoch):
                yield [next(it) for it in iters]
            done = True
        finally:
            iters.clear()
            if not done:
                # closed early (a stop, an error): end the loaders' workers now rather than
                # at garbage collection, so a preempted run does not leave them behind while
                # it checkpoints and exits. After a whole epoch they stay for the next one.
                self._close_loaders()

    def _close_loaders(self) -> None:
        for st in self.stages:
            for ld in st.loaders:
                ld.close()

    def _recipe_note(self) -> str:
        """Where the method's quick-run settings replaced part of its paper's recipe."""
        from radengine import ssl

        quick = ssl.method_class(self.cfg.method).quick(config_mod.to_dict(self.cfg))
        if self.cfg.recipe != "quick" or not quick:
            return ""
        return (f"\n  {self.cfg.method}'s quick-run settings over its paper's recipe (config.yaml "
                "has them all; recipe=paper for the published recipe)")  # fmt: skip

    def _knn(self) -> None:
        if not self.dist.main or self.cfg.knn.every <= 0:
            return
        src = self.stages[-1].sources[0]
        score = knn_monitor(self.cfg, self.module.encoder, src.store, src.domain, self.device,
                            self.view_dtype, channels_last=self.channels_last)  # fmt: skip
        if score is None:
            if not self._knn_warned:
                self._say(
                    f"kNN monitor skipped: {src.store.path} has no labelled samples in the "
                    f"train or {self.cfg.knn.split} split (too few patients?)"
                )
                self._knn_warned = True
            return
        acc, self._knn_queries = score
        self.state.knn.append((self.state.step, acc))
        self.tracker.log_metrics({"knn/accuracy": acc}, step=self.state.step)
        self._say(f"kNN monitor at step {self.state.step}: {percent(acc, 1)} ({src.domain} labels)")

    def run(self) -> PretrainResult:
        cfg, s = self.cfg, self.state
        self._t_start = time.perf_counter()
        fresh = self.resume_state is None
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            # what a killed writer left (a SIGKILL mid-checkpoint) only fills the disk
            for folder in (self.out, self.out / "checkpoints"):
                remove_temp_files(folder)
            write_if_changed(self.out / "config.yaml", config_text(cfg, s.resume_changes).encode())
        self._start_tracking()
        if self.dist.main:
            what = " + ".join(src.describe() for src in self.stages[0].sources)
            self.echo(
                f"pretraining {cfg.method} {cfg.model.arch} on {what}; {self.total_epochs} epochs "
                f"x {self.stages[0].steps_per_epoch} steps, global batch {cfg.optim.batch_size}, "
                f"lr {self.lr:.4g}, {self.device}"
                + (f", {self.dist.world_size} ranks" if self.dist.distributed else "")
                + (f"; resuming at step {s.step}" if not fresh else "")
                + f"; run folder {self.out}"
                + self._recipe_note()
            )
        if fresh and cfg.knn.every > 0:
            self._knn()
        stop_reason: str | None = None
        preempted = False
        interrupted = _SignalFlag()
        bar = self._bar = self._progress()
        window_loss: list[float] = []
        window_start = s.step  # the window holds steps window_start+1 .. s.step
        final_loss = float("nan")
        loss_label = "no step run"
        images = 0
        wait = 0.0
        t_window = time.perf_counter()
        imgs_window = 0
        wait_window = 0.0
        last_loss = float("nan")
        step_times: list[tuple[float, float]] = []  # (data wait, whole step) in seconds
        ckpt_path: Path | None = None
        status = "FINISHED"
        try:
            with interrupted:
                while s.epoch < self.total_epochs:
                    stage = self._stage_of(s.epoch)
                    batches = contextlib.closing(self._batches(stage, s.epoch, s.step_in_epoch))
                    with batches as batch_iter:
                        while True:
                            t0 = time.perf_counter()
                            try:
                                batch = next(batch_iter)
                            except StopIteration:
                                break
                            dt_wait = time.perf_counter() - t0
                            wait += dt_wait
                            wait_window += dt_wait
                            # the signal flag rides on the step's all-reduce: every rank
                            # learns that one was signalled at the same step
                            loss, signalled = self._step(stage, batch, bool(interrupted.fired))
                            step_times.append((dt_wait, time.perf_counter() - t0))
                            n = cfg.optim.batch_size
                            images += n
                            imgs_window += n
                            last_loss = loss
                            if math.isfinite(loss):
                                window_loss.append(loss)
                                self._losses_since_checkpoint.append(loss)
                            s.step += 1
                            s.step_in_epoch += 1
                            max_steps = cfg.train.max_steps
                            done = s.step >= self.total_steps or (
                                max_steps is not None and s.step >= max_steps
                            )
                            # a signal at the run's last step ends it as finished, not as
                            # preempted: there is nothing left to resume
                            signalled = signalled and not done
                            stopping = signalled or (max_steps is not None and s.step >= max_steps)
                            if (
                                s.step % cfg.train.log_every == 0
                                or s.step == self.total_steps
                                or stopping
                            ):
                                now = time.perf_counter()
                                span = max(now - t_window, 1e-9)
                                final_loss = (
                                    float(np.mean(window_loss)) if window_loss else last_loss
                                )
                                loss_label = _window_label(
                                    window_start + 1, s.step, len(window_loss)
                                )
                                metrics = {
                                    "train/loss": final_loss,
                                    "train/lr": self.optimizer.param_groups[0]["lr"],
                                    "train/img_per_s": imgs_window / span,
                                    "train/data_wait": min(1.0, wait_window / span),
                                    "train/epoch": s.epoch
                                    + s.step_in_epoch / max(1, stage.steps_per_epoch),
                                }
                                self.tracker.log_metrics(metrics, step=s.step)
                                if bar is not None:
                                    n = s.step - window_start
                                    over = f"mean of last {n} steps" if n > 1 else "last step"
                                    bar.set_postfix_str(
                                        f"loss {final_loss:.4f} ({over}), "
                                        f"lr {metrics['train/lr']:.3g}, "
                                        f"{metrics['train/img_per_s']:.0f} img/s",
                                        refresh=False,
                                    )
                                window_loss.clear()
                                window_start = s.step
                                t_window, imgs_window, wait_window = now, 0, 0.0
                            if bar is not None:  # after set_postfix: shown with this step
                                bar.update(1)
                            if s.step % cfg.train.checkpoint_every == 0:
                                ckpt_path = self.save_checkpoint()
                            if signalled:
                                preempted = True
                                raise _Stop(
                                    f"signal {interrupted.fired} received"
                                    if interrupted.fired
                                    else "another rank received a stop signal"
                                )
                            if stopping:
                                raise _Stop(f"train.max_steps={max_steps} reached")
                    s.epoch += 1
                    s.step_in_epoch = 0
                    every = cfg.knn.every
                    if every > 0 and (s.epoch % every == 0 or s.epoch == self.total_epochs):
                        self._knn()
        except _Stop as stop:
            stop_reason = str(stop)
            status = "KILLED" if preempted else "FINISHED"
        except BaseException as exc:
            if bar is not None:
                bar.close()
            self._bar = None
            self._close_loaders()
            self.tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            if self.dist.distributed and isinstance(exc, RuntimeError):
                # A collective failed mid-run (a rank died, froze or lost its network): torch
                # says so in its own words; name the step, the key that bounds the wait and
                # how to continue.
                raise distributed.DistributedError(
                    f"a collective failed at step {s.step + 1} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): "
                    "another rank died, froze for longer than dist.timeout_min "
                    f"({cfg.dist.timeout_min:g} min) or lost its connection. Continue with "
                    f"--resume {self.out} once every node is healthy",
                    broken=True,
                ) from exc
            raise
        if bar is not None:
            bar.close()
        self._bar = None
        self._close_loaders()  # the workers are not needed for the final writes
        try:
            # The handler stays through the final writes: a second SIGTERM there (a scheduler
            # repeating itself) must not kill the process between checkpoint and summary.
            with interrupted:
                result = self._finish(
                    ckpt_path, status, stop_reason, images, wait, final_loss, loss_label, step_times
                )
        except BaseException:
            self.tracker.finish("FAILED")
            raise
        self.tracker.finish(status)
        # Rank 0 has written everything: only now may the other ranks exit. Under torchrun a
        # rank that exits non-zero (a preempted run) makes the agent kill the rest, which
        # must not catch rank 0 mid-write.
        distributed.barrier()
        return result

    def _finish(
        self,
        ckpt_path: Path | None,
        status: str,
        stop_reason: str | None,
        images: int,
        wait: float,
        loss: float,
        loss_label: str,
        step_times: list[tuple[float, float]],
    ) -> PretrainResult:
        """The final checkpoint, encoder, MLflow model and summary.

        The final metrics are logged at the last step before the encoder is logged as an
        MLflow model: MLflow 3 links the metrics of the model's step to it, so its model page
        shows the final loss and kNN accuracy. A run stopped before its last epoch gets a kNN
        pass on its final weights first (not when killed by a signal: it should end fast).

        A preempted run (``status`` KILLED) writes its checkpoint and summary but no encoder
        and no MLflow model: its encoder is not final. An encoder.pt left by an earlier stop
        of the same run (max_steps) is removed, since the run has moved past it."""
        cfg, s = self.cfg, self.state
        if ckpt_path is None or checkpoint.path_for(self.out / "checkpoints", s.step) != ckpt_path:
            ckpt_path = self.save_checkpoint()
        stale = not s.knn or s.knn[-1][0] != s.step
        if cfg.knn.every > 0 and status != "KILLED" and stale:
            self._knn()
        seconds = time.perf_counter() - self._t_start
        model_uri = None
        if self.dist.main:
            final = {"final/loss": loss, "final/img_per_s": images / max(seconds, 1e-9)}
            if s.knn and s.knn[-1][0] == s.step:
                final["final/knn_accuracy"] = s.knn[-1][1]
            self.tracker.log_metrics(final, step=s.step)
            encoder = self.module.encoder
            if status == "KILLED":
                (self.out / "encoder.pt").unlink(missing_ok=True)
            elif s.step < self.total_steps:  # at the schedule's end the checkpoint wrote it
                checkpoint.atomic_write(self.out / "encoder.pt", checkpoint.state_bytes(encoder))
            if cfg.tracking.log_model and status != "KILLED":
                example = np.zeros(
                    (1, self.in_chans, cfg.augment.size, cfg.augment.size), "float32"
                )
                model_uri = self.tracker.log_model(
                    encoder,
                    name="encoder",
                    registered_name=cfg.tracking.registered_name,
                    input_example=example,
                    step=s.step,
                )
        result = PretrainResult(
            out=self.out,
            run_id=s.run_id,
            steps=s.step,
            epochs=s.epoch + s.step_in_epoch / max(1, self._stage_of(s.epoch).steps_per_epoch),
            loss=loss,
            knn=list(s.knn),
            knn_queries=self._knn_queries,
            seconds=seconds,
            images_per_second=images / max(seconds, 1e-9),
            data_wait=wait / max(seconds, 1e-9),
            checkpoint=ckpt_path,
            model_uri=model_uri,
            stopped=stop_reason,
            skipped_steps=s.skipped,
            loss_label=loss_label,
            preempted=status == "KILLED",
            resume_changes=list(s.resume_changes),
            tracking_uri=self.tracker.uri if s.run_id else None,
            artifact_uri=self.tracker.artifact_uri if s.run_id else None,
            extra={"step_times": step_times},
        )
        if self.dist.main:
            summary = {
                k: str(v) if isinstance(v, Path) else v
                for k, v in dataclasses.asdict(result).items()
                if k != "extra"
            }
            if result.preempted:
                summary["resume"] = f"--resume {self.out}"
            checkpoint.atomic_write(
                self.out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode()
            )
        return result

    def _progress(self):
        if not (self.dist.main and self.cfg.train.progress):
            return None
        from tqdm import tqdm

        return tqdm(
            total=self.total_steps,
            initial=self.state.step,
            desc=f"pretrain {self.cfg.method}",
            unit="step",
            dynamic_ncols=True,
        )

    def _step(
        self, stage: Stage, batch: list[dict[str, Tensor]], stop: bool = False
    ) -> tuple[float, bool]:
        """One training step. Returns the global mean loss and whether any rank asked to
        stop (``stop``: this rank got a preemption signal); both come from one all-reduce,
        so every rank sees the same values at the same step."""
        cfg, s = self.cfg, self.state
        views = step_views(
            cfg,
            self.view_plan,
            stage,
            batch,
            s.step,
            self.dist,
            self.device,
            self.view_dtype,
            self.channels_last,
            self.window,
        )
        # the method's schedules (EMA momentum, DINO's teacher temperature) for this step
        self.module.set_step(s.step, self.total_steps, stage.steps_per_epoch)
        self._weight_decay_schedule()
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp)
            if self.amp is not None
            else contextlib.nullcontext()
        )
        # A skipped step must leave no trace, but the forward pass in train mode has already
        # updated the buffers (BatchNorm running statistics: NaN from a NaN batch, which
        # would poison every later step and checkpoint). Buffers are small: keep a copy.
        saved = (
            [b.detach().clone() for b in self.module.buffers()]
            if cfg.train.nonfinite == "skip"
            else None
        )
        with autocast:
            loss = self.model(views)
        flags = torch.stack(
            [loss.detach().float(), loss.new_tensor(float(stop), dtype=torch.float32)]
        )
        global_loss, any_stop = distributed.all_reduce_mean(flags).tolist()
        stop_agreed = any_stop > 0
        finite = math.isfinite(global_loss)
        if not finite and cfg.train.nonfinite == "stop":
            raise PretrainError(
                f"the loss is {global_loss} at step {s.step} (epoch {s.epoch}); stopping. "
                + self._resume_advice()
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if not finite:
            s.skipped += 1
            s.consecutive_skips += 1
            self.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for buf, old in zip(self.module.buffers(), saved or (), strict=True):
                    buf.copy_(old)
            if self.dist.main:
                self._say(f"warning: non-finite loss at step {s.step}; update skipped")
            if s.consecutive_skips >= cfg.train.max_skips:
                raise PretrainError(
                    f"{s.consecutive_skips} non-finite losses in a row (last at step {s.step}); "
                    "stopping. " + self._resume_advice()
                )
            with warnings.catch_warnings():  # stepping the schedule without an update is
                warnings.simplefilter("ignore", UserWarning)  # what "skip" means
                self.scheduler.step()
            return global_loss, stop_agreed
        s.consecutive_skips = 0
        if cfg.optim.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.module.parameters(), cfg.optim.grad_clip)
        self.module.before_update()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.module.after_update()  # momentum teachers follow the updated weights
        return global_loss, stop_agreed

    def _weight_decay_schedule(self) -> None:
        """``optim.weight_decay_end``: the decayed group's weight decay on a half cosine
        from ``optim.weight_decay`` to it over the run (DINO), a function of the step."""
        o = self.cfg.optim
        if o.weight_decay_end is None:
            return
        from radengine.ssl import cosine_schedule

        wd = cosine_schedule(o.weight_decay, o.weight_decay_end, self.state.step, self.total_steps)
        for group in self.optimizer.param_groups:
            if group.get("name") == "decay":
                group["weight_decay"] = wd


def _window_label(first: int, last: int, finite: int) -> str:
    """What the loss of steps ``first..last`` (``finite`` of them finite) is, in words."""
    if finite == 0:
        return f"step {last}, non-finite"
    if first == last:
        return f"loss of step {last}"
    text = f"mean of steps {first}-{last}"
    left_out = last - first + 1 - finite
    return text + (f", {left_out} non-finite left out" if left_out else "")


class _SignalFlag:
    """SIGTERM/SIGUSR1 (cluster preemption) -> finish the step, checkpoint, stop."""

    def __init__(self) -> None:
        self.fired: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _SignalFlag:
        if _main_thread():
            for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.fired = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread() and os.name == "posix"

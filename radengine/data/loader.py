"""Batches from a store for training: deterministic, DDP-aware, resumable, read in runs.

Each epoch's order is a pure function of (seed, epoch): the selected rows are cut into blocks
of ``block`` consecutive store rows, the blocks are shuffled, then rows are shuffled within
windows of ``window`` blocks. Reads therefore stay in long runs of one shard (fast on disk and
in the page cache) while batches still mix many series. Batches are dealt round-robin to
ranks, so every rank gets the same number and no sample is seen twice in an epoch.

Worker processes (torch DataLoader) gather whole batches straight from the memory-mapped
shards; the main process receives raw int16 HU / uint8 RGB tensors (pinned if asked) and
moves them to the device, where augmentation runs (radengine.ops). ``start_step`` resumes an
epoch exactly where a checkpoint left it.

A worker is sent only what it reads: per batch, the rows' shard, offset and label (the
main process plans the epoch from the store's index). It holds no index of its own, so it
starts in milliseconds with a few kilobytes whatever the store's size, and the workers
live from the first epoch to :meth:`StoreLoader.close` (persistent workers).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from radengine.data.store import ShardReader, Store


def epoch_order(
    indices: np.ndarray, *, seed: int, epoch: int, block: int = 64, window: int = 16
) -> np.ndarray:
    """The sample order of one epoch: blocks of consecutive rows shuffled, then rows shuffled
    within windows of ``window`` blocks. Deterministic from (seed, epoch)."""
    indices = np.sort(np.asarray(indices, dtype=np.int64))
    n = len(indices)
    rng = np.random.default_rng([seed, epoch, 0x5EED])
    n_blocks = -(-n // block)
    order = rng.permutation(n_blocks)
    if n == 0:
        return indices
    # the rows of the blocks in shuffled order, as one array (vectorised: millions of rows)
    starts = order * block
    lengths = np.minimum(block, n - starts)
    ends = np.cumsum(lengths)
    positions = np.arange(ends[-1]) - np.repeat(ends - lengths - starts, lengths)
    rows = indices[positions]
    out = np.empty_like(rows)
    for w in range(0, n_blocks, window):  # then a shuffle within each window of blocks
        lo = ends[w - 1] if w else 0
        hi = ends[min(w + window, n_blocks) - 1]
        out[lo:hi] = rows[lo:hi][rng.permutation(hi - lo)]
    return out


@dataclass
class BatchPlan:
    """Which store rows make up each of this rank's batches in one epoch."""

    batches: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.batches)


def plan_epoch(
    indices: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
    drop_last: bool = True,
    block: int = 64,
    window: int = 16,
) -> BatchPlan:
    """Cut the epoch's order into global batches of ``batch_size * world_size`` and give each
    rank its contiguous ``batch_size`` share of every global batch (so the union over ranks of
    step s is exactly global batch s, as in single-process training)."""
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad batch_size/rank/world_size: {batch_size}, {rank}, {world_size}")
    order = (
        epoch_order(indices, seed=seed, epoch=epoch, block=block, window=window)
        if shuffle
        else np.sort(np.asarray(indices, dtype=np.int64))
    )
    g = batch_size * world_size
    n_full = len(order) // g
    batches = [
        order[s * g + rank * batch_size : s * g + (rank + 1) * batch_size] for s in range(n_full)
    ]
    if not drop_last and len(order) > n_full * g:
        tail = order[n_full * g :]
        share = tail[rank::world_size]
        if len(share):
            batches.append(share)
    return BatchPlan(batches)


def _worker_init(worker_id: int) -> None:
    """One compute thread per loader worker. A worker only gathers rows from memory-mapped
    shards; a thread team of its own (sized to every core, like the main process's) would
    compete with the training process's threads for the same cores. torch's DataLoader sets
    this as well today; it is set here too so radengine does not depend on that detail, and
    tests/test_threads.py checks it."""
    torch.set_num_threads(1)
    _ignore_stop_signals()


# Signals a cluster sends to a job's whole process group to stop it (Slurm/Kubernetes:
# SIGTERM; Slurm's --signal: SIGUSR1; a terminal's Ctrl-C: SIGINT).
_STOP_SIGNALS = tuple(
    s for s in (getattr(signal, n, None) for n in ("SIGTERM", "SIGUSR1", "SIGINT")) if s is not None
)


def _ignore_stop_signals() -> None:
    """Make a loader worker ignore the stop signals and unblock them again.

    The signal is the main process's to act on: the trainer finishes its step, writes a
    checkpoint and shuts the loader down. A worker that died on it first would make the main
    process fail (``DataLoader worker ... killed by signal``) before it could checkpoint.
    torch's worker loop installs a dying SIGTERM handler of its own before calling the init
    function, so this runs there, with the signals still blocked (:func:`_blocked`): one
    that arrived in between is pending and is discarded when its disposition becomes ignore.
    """
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


@contextlib.contextmanager
def _blocked() -> Iterator[None]:
    """Block the stop signals in this thread while worker processes are forked, so they
    start with them blocked (until :func:`_ignore_stop_signals`); a signal the parent gets
    meanwhile is delivered, not lost, when the block ends."""
    if not hasattr(signal, "pthread_sigmask") or not _is_main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _is_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@dataclass(frozen=True)
class BatchKey:
    """One planned batch as a worker gets it: the store rows (for the batch's ``index``) and
    where each one is (shard, offset), with its label (from the main process's index)."""

    rows: np.ndarray
    shards: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray


class _Batches(torch.utils.data.Dataset):
    """Item = a :class:`BatchKey`, gathered from the shards in a worker."""

    def __init__(self, reader: ShardReader, arrays: tuple[str, ...]):
        self.reader = reader
        self.arrays = arrays

    def __getitem__(self, key: BatchKey) -> dict[str, torch.Tensor]:
        out = {
            name: torch.from_numpy(self.reader.read(key.shards, key.offsets, name))
            for name in self.arrays
        }
        out["label"] = torch.from_numpy(key.labels)
        out["index"] = torch.from_numpy(key.rows)
        return out


def _key(index: dict[str, np.ndarray], rows: np.ndarray) -> BatchKey:
    rows = np.asarray(rows, dtype=np.int64)
    return BatchKey(
        rows=rows,
        shards=np.asarray(index["shard"][rows]),
        offsets=np.asarray(index["offset"][rows]),
        labels=np.asarray(index["label"][rows]).astype(np.int64),
    )


class _Plan(torch.utils.data.Sampler):
    """The batches of the epoch being read, made into keys as the DataLoader asks for them
    (a few at a time, not the whole epoch's up front); set before each ``iter``."""

    def __init__(self, index: dict[str, np.ndarray]) -> None:
        self.index = index
        self.batches: list[np.ndarray] = []

    def __iter__(self) -> Iterator[BatchKey]:
        return (_key(self.index, rows) for rows in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StoreLoader:
    """Iterate over batches of a store's slices, one epoch at a time.

    Args:
        store: the store (or its path).
        indices: store rows to use (e.g. ``store.select("train", fraction=0.1)``); all rows
            when None.
        batch_size: samples per batch on this rank.
        seed: order seed; each epoch's order depends on (seed, epoch) only.
        rank, world_size: this process's share under DDP (defaults: from
            torch.distributed when it is initialised, else 0 and 1).
        shuffle: shuffle (block-wise, see :func:`epoch_order`); False gives store order.
        drop_last: drop the last incomplete global batch (training); keep it for eval.
        workers: DataLoader worker processes (0 = read in this process).
        pin_memory: pin batches for fast asynchronous copies to the GPU.
        prefetch: batches each worker keeps ready.
        arrays: store arrays to load, e.g. ("image",) or ("image", "mask").

    Example:
        >>> loader = StoreLoader(store, store.select("train"), batch_size=256, workers=2)
        >>> for batch in loader.epoch(0):
        ...     x = batch["image"].cuda(non_blocking=True)
    """

    def __init__(
        self,
        store: Store | str,
        indices: np.ndarray | None = None,
        batch_size: int = 256,
        *,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle: bool = True,
        drop_last: bool = True,
        workers: int = 2,
        pin_memory: bool = False,
        prefetch: int = 4,
        arrays: tuple[str, ...] = ("image",),
    ) -> None:
        self.store = store if isinstance(store, Store) else Store(store)
        self.indices = np.arange(len(self.store)) if indices is None else np.asarray(indices)
        if len(self.indices) == 0:
            raise ValueError(f"no samples selected from {self.store.path}")
        dist = torch.distributed
        initialised = dist.is_available() and dist.is_initialized()
        self.rank = rank if rank is not None else (dist.get_rank() if initialised else 0)
        self.world_size = (
            world_size if world_size is not None else (dist.get_world_size() if initialised else 1)
        )
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.workers = workers
        self.pin_memory = pin_memory
        self.prefetch = prefetch
        unknown = [a for a in arrays if a not in self.store.arrays]
        if unknown:
            raise ValueError(f"arrays {unknown} not in store {self.store.path}")
        self.arrays = tuple(arrays)
        self._plan = _Plan(self.store.index)
        self._loader: torch.utils.data.DataLoader | None = None
        if len(self) == 0:
            raise ValueError(
                f"{len(self.indices)} samples make no batch of {batch_size} x {self.world_size} "
                "ranks; lower the batch size or use drop_last=False"
            )

    def plan(self, epoch: int) -> BatchPlan:
        return plan_epoch(
            self.indices,
            self.batch_size,
            seed=self.seed,
            epoch=epoch,
            rank=self.rank,
            world_size=self.world_size,
            shuffle=self.shuffle,
            drop_last=self.drop_last,
        )

    def __len__(self) -> int:
        """Batches per epoch on this rank (as :func:`plan_epoch` cuts them, without planning)."""
        g = self.batch_size * self.world_size
        full, tail = divmod(len(self.indices), g)
        # the tail's share of this rank: tail[rank::world_size]
        return full + int(not self.drop_last and tail > self.rank)

    def keys(self, epoch: int, start_step: int = 0) -> list[BatchKey]:
        """What the workers are sent for ``epoch`` from batch ``start_step`` on."""
        return [_key(self.store.index, rows) for rows in self.plan(epoch).batches[start_step:]]

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's batches of ``epoch``, from batch ``start_step`` on (exact resume).

        Start an epoch only after the previous one's iterator is exhausted or abandoned:
        the workers are shared, and a new epoch discards what they still had in flight."""
        batches = self.plan(epoch).batches[start_step:]
        if not batches:
            return iter(())
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(
                _Batches(self.store.reader, self.arrays),
                batch_size=None,
                sampler=self._plan,
                num_workers=self.workers,
                pin_memory=self.pin_memory,
                prefetch_factor=self.prefetch if self.workers > 0 else None,
                persistent_workers=self.workers > 0,
                worker_init_fn=_worker_init if self.workers > 0 else None,
            )
        self._plan.batches = batches
        if self.workers == 0:
            return iter(self._loader)
        with _blocked():  # the workers are forked here, at the first epoch
            return iter(self._loader)

    def close(self) -> None:
        """End the worker processes now (else they live until the loader is collected).
        The next :meth:`epoch` starts new ones."""
        loader, self._loader = self._loader, None
        it = getattr(loader, "_iterator", None) if loader is not None else None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

"""StoreLoader: deterministic block-shuffled epochs, DDP shares, exact resume, workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radengine.data.builtin import write_synthetic_ct_store
from radengine.data.loader import StoreLoader, epoch_order, plan_epoch


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_synthetic_ct_store(
        tmp_path_factory.mktemp("s") / "ct", patients=3, slices=10, size=32, seed=0
    )


def test_epoch_order_is_a_deterministic_block_shuffle():
    idx = np.arange(1000)
    a = epoch_order(idx, seed=1, epoch=0, block=50, window=4)
    assert sorted(a.tolist()) == idx.tolist()
    np.testing.assert_array_equal(a, epoch_order(idx, seed=1, epoch=0, block=50, window=4))
    assert not np.array_equal(a, epoch_order(idx, seed=1, epoch=1, block=50, window=4))
    assert not np.array_equal(a, epoch_order(idx, seed=2, epoch=0, block=50, window=4))
    # Each window of 4 blocks (200 rows) holds exactly 4 whole blocks: reads stay in runs.
    for w in range(0, 1000, 200):
        assert len(set((a[w : w + 200] // 50).tolist())) == 4


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_share_each_global_batch(world):
    idx = np.arange(101)
    single = plan_epoch(idx, 4 * world, seed=0, epoch=3).batches
    shares = [
        plan_epoch(idx, 4, seed=0, epoch=3, rank=r, world_size=world).batches for r in range(world)
    ]
    assert all(len(s) == len(single) == 101 // (4 * world) for s in shares)
    for step, batch in enumerate(single):
        np.testing.assert_array_equal(np.concatenate([s[step] for s in shares]), batch)
    keep = plan_epoch(idx, 4, seed=0, epoch=0, world_size=world, drop_last=False, shuffle=False)
    assert keep.batches[0].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="bad batch_size/rank/world_size"):
        plan_epoch(idx, 4, seed=0, epoch=0, rank=world, world_size=world)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_batches_resume_and_workers(store, workers):
    loader = StoreLoader(store, store.select("train", seed=0), batch_size=8, seed=5, workers=workers,
                         arrays=("image", "mask"))  # fmt: skip
    batches = list(loader.epoch(2))
    assert len(batches) == len(loader) > 0
    for b in batches:
        idx = b["index"].numpy()
        assert b["image"].dtype == torch.int16 and b["image"].shape == (8, 32, 32)
        np.testing.assert_array_equal(b["image"].numpy(), store.images(idx))
        np.testing.assert_array_equal(b["mask"].numpy(), store.images(idx, "mask"))
        np.testing.assert_array_equal(b["label"].numpy(), store.index["label"][idx])
    resumed = list(loader.epoch(2, start_step=2))
    assert [r["index"].tolist() for r in resumed] == [b["index"].tolist() for b in batches[2:]]
    seen = np.concatenate([b["index"].numpy() for b in batches])
    assert len(set(seen.tolist())) == len(seen)  # no sample twice in an epoch


def test_loader_errors(store):
    with pytest.raises(ValueError, match="no samples selected"):
        StoreLoader(store, np.array([], dtype=np.int64), batch_size=2)
    with pytest.raises(ValueError, match="make no batch"):
        StoreLoader(store, np.arange(3), batch_size=4, workers=0)
    with pytest.raises(ValueError, match=r"arrays \['labels'\] not in store"):
        StoreLoader(store, batch_size=2, arrays=("labels",))


def test_workers_get_only_locations_and_live_across_epochs(store):
    """Workers are sent (shard, offset, label) per batch, never the store's index, and the
    same worker processes serve every epoch until close()."""
    import multiprocessing
    import pickle

    from radengine.data.loader import BatchKey

    loader = StoreLoader(store, store.select("train", seed=0), batch_size=8, workers=2)
    key = loader.keys(0)[0]
    assert isinstance(key, BatchKey) and len(pickle.dumps(key)) < 2048
    np.testing.assert_array_equal(key.shards, store.index["shard"][key.rows])
    np.testing.assert_array_equal(key.offsets, store.index["offset"][key.rows])
    before = {p.pid for p in multiprocessing.active_children()}

    def workers():
        return {p.pid for p in multiprocessing.active_children()} - before

    first = [b["index"].tolist() for b in loader.epoch(0)]
    pids = workers()
    assert len(pids) == 2
    half = iter(loader.epoch(1))
    next(half)  # an epoch abandoned halfway: the next one still starts cleanly
    second = [b["index"].tolist() for b in loader.epoch(2)]
    assert workers() == pids  # the same processes
    assert second == [b.rows.tolist() for b in loader.keys(2)] and second != first
    # what a worker holds of the store: its path, arrays and slices per shard
    dataset = loader._loader.dataset
    assert len(pickle.dumps(dataset)) < 2048 and not hasattr(dataset, "index")
    loader.close()
    assert not workers()
    third = [b["index"].tolist() for b in loader.epoch(0)]  # new workers after close
    assert third == first
    loader.close()


def test_batch_count_without_planning_matches_the_plan(store):
    n = len(store)
    for batch in (1, 3, 7, 8):
        for world in (1, 2, 3):
            for rank in range(world):
                for drop_last in (True, False):
                    if n < batch * world and drop_last:
                        continue
                    loader = StoreLoader(store, np.arange(n), batch_size=batch, rank=rank,
                                         world_size=world, drop_last=drop_last, workers=0)  # fmt: skip
                    assert len(loader) == len(loader.plan(0)), (batch, world, rank, drop_last)


def test_the_vectorised_epoch_order_is_the_block_loop():
    """epoch_order is vectorised for millions of rows; its order is the plain loop's (the
    order every earlier run was trained in)."""

    def loop(indices, seed, epoch, block, window):
        indices = np.sort(indices)
        rng = np.random.default_rng([seed, epoch, 0x5EED])
        blocks = [indices[i : i + block] for i in range(0, len(indices), block)]
        order = rng.permutation(len(blocks))
        out = []
        for w in range(0, len(order), window):
            rows = np.concatenate([blocks[b] for b in order[w : w + window]])
            out.append(rows[rng.permutation(len(rows))])
        return np.concatenate(out) if out else indices

    rng = np.random.default_rng(0)
    for n in (0, 1, 63, 64, 65, 1023, 1025, 5000):
        for block, window in ((64, 16), (50, 4), (1, 1), (7, 3)):
            idx = rng.choice(10 * n + 10, n, replace=False)
            np.testing.assert_array_equal(
                epoch_order(idx, seed=3, epoch=2, block=block, window=window),
                loop(idx, 3, 2, block, window),
            )

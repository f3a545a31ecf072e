"""Tasks from a store: patient-level, seeded label fractions; multi-label and binary

targets; and the errors for stores that cannot serve a task."""

from __future__ import annotations

import numpy as np
import pytest

from radengine.data.builtin import write_synthetic_natural_store
from radengine.data.store import Store
from radengine.eval.common import EvalError
from radengine.eval.tasks import build_task, label_subset

pytestmark = pytest.mark.usefixtures("one_thread")


def _patients(store, rows):
    return set(store.index["patient"][rows].tolist())


def test_label_fraction_is_patient_level_deterministic_and_nested(ct_store):
    store = Store(ct_store)
    full = build_task(store, "body_region", "linear", seed=3)
    train = full.splits["train"]
    assert full.train_patients == (8, 8)
    half = build_task(store, "body_region", "linear", label_fraction=0.5, seed=3)
    quarter = build_task(store, "body_region", "linear", label_fraction=0.25, seed=3)
    again = build_task(store, "body_region", "linear", label_fraction=0.5, seed=3)
    other = [
        build_task(store, "body_region", "linear", label_fraction=0.5, seed=s) for s in range(8)
    ]
    np.testing.assert_array_equal(half.splits["train"], again.splits["train"])  # deterministic
    assert half.train_patients == (8, 4) and quarter.train_patients == (8, 2)
    # patient level: a kept patient keeps every one of its training slices
    for task in (half, quarter):
        kept = _patients(store, task.splits["train"])
        whole = train[np.isin(store.index["patient"][train], list(kept))]
        np.testing.assert_array_equal(task.splits["train"], whole)
        # validation and test are never subsampled
        np.testing.assert_array_equal(task.splits["val"], full.splits["val"])
        np.testing.assert_array_equal(task.splits["test"], full.splits["test"])
    # nested at one seed: 25% is inside 50%
    assert _patients(store, quarter.splits["train"]) <= _patients(store, half.splits["train"])
    # the subset depends on the seed
    assert len({tuple(t.splits["train"][:5]) for t in other}) > 1
    # targets follow the rows
    np.testing.assert_array_equal(half.targets["train"], store.index["label"][half.splits["train"]])
    # subsetting a built task (what `radengine eval` does per seed) gives the same
    sliced = full.with_label_fraction(0.5, seed=3)
    np.testing.assert_array_equal(sliced.splits["train"], half.splits["train"])
    np.testing.assert_array_equal(sliced.targets["train"], half.targets["train"])
    assert sliced.train_patients == (8, 4)


def test_label_subset_keeps_at_least_one_patient(ct_store):
    store = Store(ct_store)
    rows = store.select("train")
    sub = label_subset(store, rows, 0.001, seed=0)
    assert len(_patients(store, sub)) == 1


def test_multilabel_organs_and_binary_lesion_targets(ct_store):
    store = Store(ct_store)
    organs = build_task(store, "organs", "knn")
    assert organs.spec.kind == "multilabel" and organs.names[0] == "body"
    assert organs.num_outputs == len(store.meta["mask_classes"]) - 1
    rows = organs.splits["test"]
    masks = store.images(rows, "mask")
    for j, name in enumerate(organs.names, start=1):
        want = (masks == j).any(axis=(1, 2)).astype(np.float32)
        np.testing.assert_array_equal(organs.targets["test"][:, j - 1], want, err_msg=name)
    lesion = build_task(store, "lesion", "linear")
    assert lesion.targets["train"].shape == (len(lesion.splits["train"]), 1)
    np.testing.assert_array_equal(
        lesion.targets["train"][:, 0], store.index["lesion"][lesion.splits["train"]] > 0
    )
    contrast = build_task(store, "contrast", "linear")
    assert contrast.names == ["none", "arterial", "venous"] and contrast.spec.kind == "multiclass"
    np.testing.assert_array_equal(
        contrast.targets["test"], store.index["contrast"][contrast.splits["test"]]
    )
    seg = build_task(store, "segmentation", "segment")
    assert seg.names == store.meta["mask_classes"] and seg.spec.primary_metric == "dice_mean"


def test_bad_tasks_and_stores_say_what_is_wrong(ct_store, small_ct_store, tmp_path):
    store = Store(ct_store)
    with pytest.raises(EvalError, match=r"unknown task 'organ'; did you mean 'organs'"):
        build_task(store, "organ", "linear")
    with pytest.raises(EvalError, match=r"label-fraction must be in \(0, 1\], got 1.5"):
        build_task(store, "body_region", "linear", label_fraction=1.5)
    with pytest.raises(EvalError, match=r"label-fraction must be in \(0, 1\], got 0"):
        build_task(store, "body_region", "linear", label_fraction=0.0)
    with pytest.raises(EvalError, match="use `radengine eval segment`"):
        build_task(store, "segmentation", "linear")
    with pytest.raises(EvalError, match="needs a segmentation task"):
        build_task(store, "body_region", "segment")
    with pytest.raises(EvalError, match=r"the val split of .* has no samples .* 2 patients"):
        build_task(Store(small_ct_store), "body_region", "linear")
    images = write_synthetic_natural_store(tmp_path / "img", images=40, classes=4, size=32)
    with pytest.raises(EvalError, match=r"task organs needs .*'mask'.*no 'mask'"):
        build_task(images, "organs", "linear")
    with pytest.raises(EvalError, match="image store: use --task class"):
        build_task(images, "body_region", "linear")
    with pytest.raises(EvalError, match="no lesion labels"):
        build_task(images, "lesion", "linear")
    with pytest.raises(EvalError, match=r"task contrast needs .* no contrast column"):
        build_task(images, "contrast", "linear")
    task = build_task(images, "class", "knn")
    assert task.num_outputs == 4 and task.spec.kind == "multiclass"

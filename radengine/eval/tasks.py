"""Downstream tasks read from a store: which samples, which targets, which splits.

=============== ============== ======================================================
task            kind           targets, and what the store needs
=============== ============== ======================================================
``body_region`` multi-class    the ``label`` column of a CT store (study A's CTBR: six
                               body regions); slices with label -1 are left out
``class``       multi-class    the ``label`` column of any store (natural-image classes)
``organs``      multi-label    organs present in the slice: mask classes 1.. (all but
                               the background) that occur in its ``mask`` array;
                               per-label and mean AUC
``lesion``      binary         the ``lesion`` column of a CT store (-1 unknown: left out)
``contrast``    multi-class    the series' contrast phase (none, arterial, venous) from the
                               ``contrast`` column (the built-in synthetic CT store's;
                               names from ``contrast_classes`` in store.json; -1 unknown)
``segmentation`` per pixel     the ``mask`` array (classes named by ``mask_classes`` in
                               store.json); Dice per class, background excluded
=============== ============== ======================================================

Splits are the store's patient-level train/val/test split (``Store.select`` with
``split_seed``, the same split pretraining uses). ``label_fraction`` keeps that share of the
*training* patients that have labels for the task, ranked by a keyed hash of (seed,
patient): deterministic from the seed, never splitting a patient, and nested (at one seed,
10% is inside 50%). Validation and test sets are always whole.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field

import numpy as np

from radengine.data.store import Store
from radengine.eval.common import EvalError

__all__ = ["TASKS", "TaskData", "TaskSpec", "build_task", "default_task", "label_subset"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # multiclass | multilabel | binary | segmentation
    description: str
    needs: str

    @property
    def primary_metric(self) -> str:
        """The metric that selects heads and checkpoints and heads the report."""
        return {
            "multiclass": "accuracy",
            "multilabel": "auc_mean",
            "binary": "auc",
            "segmentation": "dice_mean",
        }[self.kind]


TASKS: dict[str, TaskSpec] = {
    "body_region": TaskSpec(
        "body_region",
        "multiclass",
        "CT body region (study A's CTBR), from the store's label column",
        "a CT store whose label column holds body regions (label >= 0)",
    ),
    "class": TaskSpec(
        "class",
        "multiclass",
        "image classes, from the store's label column",
        "a store with class labels (label >= 0)",
    ),
    "organs": TaskSpec(
        "organs",
        "multilabel",
        "organs present in the slice, from its organ mask (per-label and mean AUC)",
        "a store with a 'mask' array (organ masks) and mask_classes",
    ),
    "lesion": TaskSpec(
        "lesion",
        "binary",
        "lesion present in the slice, from the store's lesion column (AUC)",
        "a CT store with a lesion column holding 0/1 (-1 unknown)",
    ),
    "contrast": TaskSpec(
        "contrast",
        "multiclass",
        "CT contrast phase of the slice's series, from the store's contrast column",
        "a CT store with a contrast column (the built-in synthetic CT store has one)",
    ),
    "segmentation": TaskSpec(
        "segmentation",
        "segmentation",
        "organ segmentation from the mask array (Dice per class)",
        "a store with a 'mask' array (organ masks) and mask_classes",
    ),
}


def default_task(protocol: str, store: Store) -> str:
    """The task when none is given: segmentation for ``segment``, else body_region on a CT
    store and class on an image store."""
    if protocol == "segment":
        return "segmentation"
    return "body_region" if store.kind == "ct" else "class"


def _task_spec(name: str, protocol: str) -> TaskSpec:
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise EvalError(f"unknown task {name!r}{hint} (known: {', '.join(TASKS)})")
    spec = TASKS[name]
    if protocol == "segment" and spec.kind != "segmentation":
        raise EvalError(
            f"`eval segment` needs a segmentation task, not {name!r} ({spec.kind}); use "
            "--task segmentation, or eval knn|linear|finetune for classification tasks"
        )
    if protocol != "segment" and spec.kind == "segmentation":
        raise EvalError(f"task {name!r} is a segmentation task: use `radengine eval segment`")
    return spec


def label_subset(store: Store, indices: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The rows of ``indices`` whose patients are in a ``fraction`` of its patients.

    Patients are ranked by SHA-256 of (seed, patient) and the first
    ``max(1, round(fraction * P))`` kept, so the subset is deterministic from the seed,
    patient-level, and nested across fractions at one seed.
    """
    if not 0.0 < fraction <= 1.0:
        raise EvalError(f"label fraction must be in (0, 1], got {fraction}")
    indices = np.asarray(indices, dtype=np.int64)
    if fraction == 1.0 or len(indices) == 0:
        return indices
    patient = store.index["patient"][indices]  # codes into store.keys("patient")
    patients = _present(store, patient)
    score = np.array(
        [
            int.from_bytes(
                hashlib.sha256(f"{seed}:label_fraction:{p}".encode()).digest()[:8], "little"
            )
            for p in store.keys("patient")[patients]
        ],
        dtype=np.uint64,
    )
    keep = np.zeros(len(store.patients()), dtype=bool)
    keep[patients[np.argsort(score, kind="stable")][: max(1, round(fraction * len(patients)))]] = (
        True
    )
    return indices[keep[patient]]


def _present(store: Store, codes: np.ndarray) -> np.ndarray:
    """The distinct patient codes among ``codes``, sorted: a count per patient, no sort of
    the rows (millions at RadNet scale)."""
    return np.flatnonzero(np.bincount(codes, minlength=len(store.patients())))


@dataclass
class TaskData:
    """One task on one store at one label fraction and seed.

    Attributes:
        spec: the task.
        store: the store.
        names: class names (multi-class), label names (multi-label, binary) or mask class
            names (segmentation), one per output.
        splits: sorted store rows of each split ("train" is the label-fraction subset).
        targets: per split, aligned with ``splits``: ``(N,)`` int64 classes (multi-class) or
            ``(N, L)`` float32 0/1 labels (multi-label, binary); empty for segmentation.
        train_patients: training patients before and after the label fraction.
    """

    spec: TaskSpec
    store: Store
    names: list[str]
    splits: dict[str, np.ndarray]
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    train_patients: tuple[int, int] = (0, 0)

    @property
    def num_outputs(self) -> int:
        return len(self.names)

    def with_label_fraction(self, fraction: float, seed: int) -> TaskData:
        """This task with only ``fraction`` of its training patients (see
        :func:`label_subset`); the targets are sliced, not recomputed."""
        if not 0.0 < fraction <= 1.0:
            raise EvalError(f"--label-fraction must be in (0, 1], got {fraction}")
        rows = self.splits["train"]
        keep = label_subset(self.store, rows, fraction, seed)
        pos = np.searchsorted(rows, keep)
        splits = {**self.splits, "train": keep}
        targets = dict(self.targets)
        if "train" in targets:
            targets["train"] = targets["train"][pos]
        patients = len(_present(self.store, self.store.index["patient"][keep]))
        return TaskData(self.spec, self.store, self.names, splits, targets,
                        (self.train_patients[0], patients))  # fmt: skip

    def lookup(self, split: str, rows: np.ndarray) -> np.ndarray:
        """Targets of store ``rows`` (all in ``split``)."""
        pos = np.searchsorted(self.splits[split], rows)
        return self.targets[split][pos]


def _mask_names(store: Store) -> list[str]:
    names = store.meta.get("mask_classes")
    if names:
        return list(names)
    return [f"class{i}" for i in range(int(np.iinfo(store.arrays["mask"].dtype).max) + 1)]


def _organ_presence(store: Store, rows: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, num_classes) bool: which mask classes occur in each slice."""
    out = np.zeros((len(rows), num_classes), dtype=bool)
    start = 0
    for _, masks in store.iter_chunks(rows, chunk=256, name="mask"):
        n = len(masks)
        flat = masks.reshape(n, -1).astype(np.int64)
        if flat.size and flat.max() >= num_classes:
            raise EvalError(
                f"mask value {int(flat.max())} in {store.path} is outside its "
                f"{num_classes} mask_classes"
            )
        flat += num_classes * np.arange(n)[:, None]
        counts = np.bincount(flat.ravel(), minlength=n * num_classes).reshape(n, num_classes)
        out[start : start + n] = counts > 0
        start += n
    return out


def build_task(
    store: Store,
    name: str,
    protocol: str,
    *,
    split_seed: int = 0,
    label_fraction: float = 1.0,
    seed: int = 0,
) -> TaskData:
    """Select and label the samples of task ``name`` on ``store``.

    Raises:
        EvalError: unknown task, a task the protocol cannot run, a store without the labels
            or masks the task needs, a label fraction outside (0, 1], or an empty split.
    """
    spec = _task_spec(name, protocol)
    if not 0.0 < label_fraction <= 1.0:
        raise EvalError(f"--label-fraction must be in (0, 1], got {label_fraction}")
    index = store.index
    if len(store) == 0:
        raise EvalError(f"store {store.path} holds no samples")
    kind = spec.kind
    if name == "body_region" and store.kind != "ct":
        raise EvalError(
            f"task body_region needs {spec.needs}; {store.path} is an image store: use --task class"
        )
    if kind in ("multilabel", "segmentation") and "mask" not in store.arrays:
        raise EvalError(
            f"task {name} needs {spec.needs}; {store.path} has arrays "
            f"{sorted(store.arrays)} (no 'mask')"
        )
    if kind == "binary" and ("lesion" not in index or not (index["lesion"] >= 0).any()):
        raise EvalError(f"task {name} needs {spec.needs}; {store.path} has no lesion labels")
    column = "contrast" if name == "contrast" else "label"
    if kind == "multiclass" and column not in index:
        raise EvalError(f"task {name} needs {spec.needs}; {store.path} has no {column} column")
    if kind == "multiclass" and not (index[column] >= 0).any():
        raise EvalError(f"task {name} needs {spec.needs}; every {column} in {store.path} is -1")

    if kind == "multiclass":
        if column == "label":
            names = store.classes or [str(i) for i in range(int(index["label"].max()) + 1)]
        else:
            names = store.meta.get(f"{column}_classes") or [
                str(i) for i in range(int(index[column].max()) + 1)
            ]
        known = index[column] >= 0
    elif kind == "binary":
        names = ["lesion"]
        known = index["lesion"] >= 0
    else:
        names = _mask_names(store)
        known = np.ones(len(store), dtype=bool)
        if kind == "multilabel":
            names = names[1:]  # class 0 is the background, present (almost) everywhere

    splits: dict[str, np.ndarray] = {}
    patients_before = patients_after = 0
    for split in SPLITS:
        rows = store.select(split, seed=split_seed)
        rows = rows[known[rows]]
        if split == "train":
            patients_before = len(_present(store, index["patient"][rows]))
            rows = label_subset(store, rows, label_fraction, seed)
            patients_after = len(_present(store, index["patient"][rows]))
        if len(rows) == 0:
            total = len(store.patients())
            raise EvalError(
                f"the {split} split of {store.path} has no samples labelled for task {name} "
                f"(the store has {total} patients; the split takes "
                f"{'80' if split == 'train' else '10'}% of them at data.split_seed="
                f"{split_seed}). Use a store with more patients"
            )
        splits[split] = rows

    targets: dict[str, np.ndarray] = {}
    if kind == "multiclass":
        for split, rows in splits.items():
            targets[split] = index[column][rows].astype(np.int64)
        if int(index[column].max()) >= len(names):
            raise EvalError(
                f"{store.path}: {column} {int(index[column].max())} but only {len(names)} "
                "class names in store.json"
            )
    elif kind == "binary":
        for split, rows in splits.items():
            targets[split] = (index["lesion"][rows] > 0).astype(np.float32)[:, None]
    elif kind == "multilabel":
        for split, rows in splits.items():
            targets[split] = _organ_presence(store, rows, len(names) + 1)[:, 1:].astype(np.float32)
    return TaskData(
        spec=spec,
        store=store,
        names=list(names),
        splits=splits,
        targets=targets,
        train_patients=(patients_before, patients_after),
    )

"""Classification and segmentation metrics of the transfer studies, exact and streamable.

Every function takes torch tensors on any device and computes there; results are float64
tensors on that device (0-d for a scalar, ``(C,)`` per class). The accumulators keep what a
metric needs across batches (all scores for the exact AUC, counts for the rest) and return
plain floats and CPU tensors, ready for a report or MLflow.

Conventions, chosen to agree with scikit-learn where it has the metric:

- **Accuracy** (top-k): a sample counts when its target is among the ``k`` highest scores
  (``torch.topk``; exact ties between scores are broken by its order, which random
  real-valued scores never hit).
- **Balanced accuracy**: mean recall over the classes that occur in the target, as
  ``sklearn.metrics.balanced_accuracy_score`` (a class that is only predicted, never true,
  has no recall and is left out).
- **ROC AUC** is the Mann-Whitney statistic ``U / (n_pos * n_neg)`` with tied scores given
  their average rank, which is exactly the trapezoidal area under the ROC curve that
  ``sklearn.metrics.roc_auc_score`` computes, ties included. It is computed from integer
  rank sums, so it is exact up to the final division. A label (or a class, one-vs-rest)
  whose target holds only one of the two classes has no AUC: it is NaN in the per-label
  result and **left out of the mean** (the mean of the remaining labels; NaN if none
  remain). No warning is raised; callers who need to know count the NaNs.
- **Multi-class AUC** is one-vs-rest per class, macro-averaged, on the scores as given.
  scikit-learn's ``roc_auc_score(multi_class="ovr")`` ranks probabilities: pass softmax
  probabilities (or ``softmax=True``) to match it; logits of a class rank samples
  differently from its softmax probabilities.
- **Dice** per class ``2 TP / (2 TP + FP + FN)``, per image and then averaged over the
  images with a defined value (MONAI ``DiceMetric(reduction="mean_batch")``), or over the
  whole set (``per_image=False``, the "global Dice" of LiTS). A class absent from both the
  prediction and the target of an image gives 0/0: NaN by default and skipped in the means,
  as nnU-Net's evaluation does; ``empty="one"`` scores it 1.0 instead (MONAI's
  ``ignore_empty=False``, the BraTS challenge rule). A class absent from the target but
  predicted scores 0, in both conventions. (MONAI's default ``ignore_empty=True`` differs:
  it skips every image with an empty target, hiding false positives there.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AUC",
    "ClassificationAccumulator",
    "SegmentationAccumulator",
    "accuracy",
    "balanced_accuracy",
    "binary_auc",
    "confusion_matrix",
    "dice",
    "dice_from_stats",
    "dice_stats",
    "multiclass_auc",
    "multilabel_auc",
    "nanmean",
]

EmptyRule = Literal["nan", "one"]

# Elements per chunk of the AUC's rank computation (a few int64 work arrays of this size).
_AUC_CHUNK = 1 << 21


class AUC(NamedTuple):
    """Per-label ROC AUC and their mean.

    Attributes:
        per_class: ``(L,)`` float64; NaN where the target holds only one class.
        mean: 0-d float64, the mean over the non-NaN entries (NaN if all are NaN).
    """

    per_class: Tensor
    mean: Tensor


# --------------------------------------------------------------------------------------
# input checks


def _is_float(t: Tensor) -> bool:
    return t.is_floating_point()


def _is_integer(t: Tensor) -> bool:
    return not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool


def _check_tensor(t: Any, name: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _check_scores(scores: Any, name: str, ndim: int) -> Tensor:
    scores = _check_tensor(scores, name)
    if not _is_float(scores):
        raise ValueError(f"{name} must be floating point, got {scores.dtype}")
    if scores.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(scores.shape)}")
    if scores.shape[0] == 0:
        raise ValueError(f"{name} is empty (no samples)")
    if torch.isnan(scores).any():
        raise ValueError(f"{name} contains NaN")
    return scores


def _check_class_target(target: Any, name: str, n: int, num_classes: int | None) -> Tensor:
    target = _check_tensor(target, name)
    if not _is_integer(target):
        raise ValueError(f"{name} must hold integer class indices, got {target.dtype}")
    if target.ndim != 1 or target.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(target.shape)}")
    if n and int(target.min()) < 0:
        raise ValueError(f"{name} has negative class indices (min {int(target.min())})")
    if n and num_classes is not None and int(target.max()) >= num_classes:
        raise ValueError(
            f"{name} has class index {int(target.max())} >= num_classes ({num_classes})"
        )
    return target


def _check_binary(target: Any, name: str, shape: torch.Size) -> Tensor:
    """A 0/1 (bool, integer or float) target of the given shape, as bool."""
    target = _check_tensor(target, name)
    if target.shape != shape:
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(target.shape)}")
    if target.dtype == torch.bool:
        return target
    if ((target != 0) & (target != 1)).any():
        raise ValueError(f"{name} must hold only 0 and 1 (binary labels)")
    return target != 0


# --------------------------------------------------------------------------------------
# classification


def _predictions(scores_or_pred: Tensor, name: str) -> tuple[Tensor, int | None]:
    """``(N,)`` integer predictions and the class count the scores imply (None if labels)."""
    t = _check_tensor(scores_or_pred, name)
    if _is_float(t):
        t = _check_scores(t, name, 2)
        return t.argmax(dim=1), t.shape[1]
    if not _is_integer(t) or t.ndim != 1:
        raise ValueError(
            f"{name} must be (N, C) floating scores or (N,) integer predictions, got "
            f"{t.dtype} of shape {tuple(t.shape)}"
        )
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty (no samples)")
    return t, None


def accuracy(scores: Tensor, target: Tensor, k: int = 1) -> Tensor:
    """Top-k accuracy.

    Args:
        scores: ``(N, C)`` scores (logits or probabilities), or ``(N,)`` integer predicted
            classes (then only ``k == 1``).
        target: ``(N,)`` integer classes in ``[0, C)``.
        k: count a sample as correct when its target is among its ``k`` highest scores.

    Returns:
        0-d float64, the fraction of correct samples, on the device of ``scores``.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    scores = _check_tensor(scores, "scores")
    if _is_float(scores):
        scores = _check_scores(scores, "scores", 2)
        num_classes = scores.shape[1]
        if k > num_classes:
            raise ValueError(f"k ({k}) exceeds the number of classes ({num_classes})")
        target = _check_class_target(target, "target", scores.shape[0], num_classes)
        top = scores.topk(k, dim=1).indices
        correct = (top == target.unsqueeze(1)).any(dim=1)
    else:
        if k != 1:
            raise ValueError(f"k={k} needs (N, C) scores, got integer predictions")
        pred, _ = _predictions(scores, "scores")
        target = _check_class_target(target, "target", pred.shape[0], None)
        correct = pred == target
    return correct.double().mean()


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Confusion counts, rows the true class, columns the predicted one (as scikit-learn).

    Args:
        pred: ``(N,)`` integer predictions, or ``(N, C)`` scores (argmax taken).
        target: ``(N,)`` integer classes.
        num_classes: ``C``; every class index must be below it.

    Returns:
        ``(C, C)`` int64 on the device of ``pred``.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    pred, implied = _predictions(pred, "pred")
    if implied is not None and implied != num_classes:
        raise ValueError(f"pred has {implied} score columns but num_classes is {num_classes}")
    if int(pred.min()) < 0 or int(pred.max()) >= num_classes:
        raise ValueError(f"pred has class indices outside [0, {num_classes})")
    target = _check_class_target(target, "target", pred.shape[0], num_classes)
    flat = target.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def _balanced_from_confusion(cm: Tensor) -> Tensor:
    support = cm.sum(dim=1)
    present = support > 0
    recall = cm.diagonal()[present].double() / support[present].double()
    return recall.mean()


def balanced_accuracy(scores: Tensor, target: Tensor, num_classes: int | None = None) -> Tensor:
    """Mean per-class recall over the classes present in ``target``.

    Args:
        scores: ``(N, C)`` scores (argmax taken) or ``(N,)`` integer predictions.
        target: ``(N,)`` integer classes.
        num_classes: number of classes; default ``C`` from the scores, or one more than the
            largest index in either input for integer predictions.

    Returns:
        0-d float64, as ``sklearn.metrics.balanced_accuracy_score``.
    """
    pred, implied = _predictions(scores, "scores")
    if num_classes is None:
        num_classes = implied
    if num_classes is None:
        target = _check_class_target(target, "target", pred.shape[0], None)
        num_classes = int(torch.maximum(pred.max(), target.max())) + 1
    return _balanced_from_confusion(confusion_matrix(pred, target, num_classes))


def _auc_columns(scores: Tensor, labels: Tensor) -> Tensor:
    """Mann-Whitney AUC of each column: ``scores (N, L)`` float, ``labels (N, L)`` bool."""
    n, num_labels = scores.shape
    chunk = max(1, _AUC_CHUNK // max(n, 1))
    out = []
    for c0 in range(0, num_labels, chunk):
        s, order = torch.sort(scores[:, c0 : c0 + chunk], dim=0)
        y = labels[:, c0 : c0 + chunk].gather(0, order).long()
        # Ties: every member of a run of equal scores gets the run's average rank. A run
        # spans sorted positions [start, end]; the 1-based average rank is
        # (start + end) / 2 + 1, so twice it, start + end + 2, is an integer.
        idx = torch.arange(n, device=s.device).unsqueeze(1).expand_as(s)
        new_run = torch.ones_like(s, dtype=torch.bool)
        new_run[1:] = s[1:] != s[:-1]
        last_of_run = torch.ones_like(new_run)
        last_of_run[:-1] = new_run[1:]
        start = torch.where(new_run, idx, 0).cummax(dim=0).values
        end = torch.where(last_of_run, idx, n).flip(0).cummin(dim=0).values.flip(0)
        twice_rank = start + end + 2
        n_pos = y.sum(dim=0)
        n_neg = n - n_pos
        # 2U = 2 * (sum of positive ranks) - n_pos (n_pos + 1), exact in int64.
        twice_u = (twice_rank * y).sum(dim=0) - n_pos * (n_pos + 1)
        auc = twice_u.double() / (2 * n_pos * n_neg).double()
        out.append(torch.where((n_pos == 0) | (n_neg == 0), float("nan"), auc))
    return torch.cat(out)


def nanmean(values: Tensor) -> Tensor:
    """Mean of the non-NaN entries as float64; NaN (not an error) when there are none."""
    values = values.double()
    keep = ~torch.isnan(values)
    if not bool(keep.any()):
        return torch.tensor(float("nan"), dtype=torch.float64, device=values.device)
    return values[keep].mean()


def binary_auc(scores: Tensor, target: Tensor) -> Tensor:
    """ROC AUC of one binary problem.

    Args:
        scores: ``(N,)`` scores, higher meaning more positive (any monotone transform of
            them, e.g. sigmoid, gives the same AUC).
        target: ``(N,)`` 0/1 labels (bool, integer or float).

    Returns:
        0-d float64; NaN when ``target`` holds only one class.
    """
    scores = _check_scores(scores, "scores", 1)
    labels = _check_binary(target, "target", scores.shape)
    return _auc_columns(scores.unsqueeze(1), labels.unsqueeze(1))[0]


def multilabel_auc(scores: Tensor, target: Tensor) -> AUC:
    """Per-label ROC AUC and their mean (ChestX-ray14, CheXpert).

    Args:
        scores: ``(N, L)`` scores per label (logits or sigmoid probabilities: same AUC).
        target: ``(N, L)`` 0/1 labels.

    Returns:
        :class:`AUC` with ``per_class (L,)`` (NaN for a label with one class only) and the
        mean over the other labels.
    """
    scores = _check_scores(scores, "scores", 2)
    labels = _check_binary(target, "target", scores.shape)
    per = _auc_columns(scores, labels)
    return AUC(per, nanmean(per))


def multiclass_auc(scores: Tensor, target: Tensor, *, softmax: bool = False) -> AUC:
    """One-vs-rest ROC AUC per class and the macro mean.

    Args:
        scores: ``(N, C)`` class scores.
        target: ``(N,)`` integer classes in ``[0, C)``.
        softmax: rank ``softmax(scores)`` (computed in float64) instead of the scores. Use
            it with logits to match ``roc_auc_score(multi_class="ovr")``, which ranks
            probabilities.

    Returns:
        :class:`AUC` with ``per_class (C,)`` (NaN for a class absent from ``target``, or
        the only one present) and the macro mean over the other classes.
    """
    scores = _check_scores(scores, "scores", 2)
    target = _check_class_target(target, "target", scores.shape[0], scores.shape[1])
    if softmax:
        scores = scores.double().softmax(dim=1)
    labels = F.one_hot(target.long(), scores.shape[1]).bool()
    per = _auc_columns(scores, labels)
    return AUC(per, nanmean(per))


# --------------------------------------------------------------------------------------
# segmentation


def dice_stats(
    pred: Tensor,
    target: Tensor,
    num_classes: int | None = None,
    *,
    multilabel: bool = False,
    threshold: float = 0.0,
    ignore_index: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image, per-class true positives, false positives and false negatives.

    Multi-class (one label per pixel; LiTS liver/tumour):
        ``pred`` is ``(B, *S)`` integer labels or ``(B, C, *S)`` floating scores (logits or
        probabilities; argmax over ``C``), ``target`` is ``(B, *S)`` integer labels.
        ``num_classes`` is needed for integer predictions. Pixels whose target is
        ``ignore_index`` count nowhere.

    Multi-label (overlapping regions, one channel each; BraTS WT/TC/ET):
        ``pred`` is ``(B, C, *S)``: bool/integer 0/1 masks, or floating scores counted
        positive where ``> threshold`` (0 for logits, 0.5 for probabilities); ``target``
        is ``(B, C, *S)`` 0/1.

    Args:
        pred: prediction, see above.
        target: ground truth, see above.
        num_classes: ``C`` (multi-class); inferred from floating ``pred``.
        multilabel: the multi-label form above.
        threshold: decision threshold on floating multi-label ``pred``.
        ignore_index: target label excluded from the counts (multi-class only).

    Returns:
        ``(tp, fp, fn)``, each ``(B, C)`` int64 on the device of ``pred``.
    """
    pred = _check_tensor(pred, "pred")
    target = _check_tensor(target, "target")
    if multilabel:
        if ignore_index is not None:
            raise ValueError("ignore_index applies to multi-class labels, not multilabel=True")
        if pred.ndim < 3:
            raise ValueError(f"pred must be (B, C, *S) for multilabel, got {tuple(pred.shape)}")
        if num_classes is not None and pred.shape[1] != num_classes:
            raise ValueError(f"pred has {pred.shape[1]} channels, num_classes is {num_classes}")
        p = pred > threshold if _is_float(pred) else _check_binary(pred, "pred", pred.shape)
        t = _check_binary(target, "target", pred.shape)
        dims = tuple(range(2, pred.ndim))
        tp = (p & t).sum(dims)
        fp = (p & ~t).sum(dims)
        fn = (~p & t).sum(dims)
        return tp.long(), fp.long(), fn.long()

    if not _is_integer(target):
        raise ValueError(f"target must hold integer labels, got {target.dtype}")
    if _is_float(pred):
        if pred.ndim < 3:
            raise ValueError(f"floating pred must be (B, C, *S), got {tuple(pred.shape)}")
        if num_classes is not None and pred.shape[1] != num_classes:
            raise ValueError(f"pred has {pred.shape[1]} channels, num_classes is {num_classes}")
        num_classes = pred.shape[1]
        pred = pred.argmax(dim=1)
    elif not _is_integer(pred):
        raise ValueError(f"pred must be integer labels or floating scores, got {pred.dtype}")
    elif num_classes is None:
        raise ValueError("num_classes is required when pred holds integer labels")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if pred.shape != target.shape or pred.ndim < 2:
        raise ValueError(
            f"pred labels {tuple(pred.shape)} and target {tuple(target.shape)} must both be "
            "(B, *S) with the same shape"
        )
    b = pred.shape[0]
    pred = pred.reshape(b, -1).long()
    target = target.reshape(b, -1).long()
    valid = torch.ones_like(target, dtype=torch.bool)
    if ignore_index is not None:
        valid = target != ignore_index
    if pred.numel():
        if int(pred.min()) < 0 or int(pred.max()) >= num_classes:
            raise ValueError(f"pred has labels outside [0, {num_classes})")
        vt = target[valid]
        if vt.numel() and (int(vt.min()) < 0 or int(vt.max()) >= num_classes):
            raise ValueError(
                f"target has labels outside [0, {num_classes})"
                + ("" if ignore_index is None else f" other than ignore_index={ignore_index}")
            )
    # One bincount gives every image's confusion matrix: index (image, true, predicted).
    image = torch.arange(b, device=pred.device).unsqueeze(1).expand_as(pred)
    flat = ((image * num_classes + target) * num_classes + pred)[valid]
    cm = torch.bincount(flat, minlength=b * num_classes**2).reshape(b, num_classes, num_classes)
    tp = cm.diagonal(dim1=1, dim2=2)
    fp = cm.sum(dim=1) - tp
    fn = cm.sum(dim=2) - tp
    return tp.contiguous(), fp, fn


def dice_from_stats(tp: Tensor, fp: Tensor, fn: Tensor, *, empty: EmptyRule = "nan") -> Tensor:
    """``2 TP / (2 TP + FP + FN)`` elementwise, as float64.

    Args:
        tp: true positive counts (any shape); ``fp``, ``fn`` the same shape.
        fp: false positive counts.
        fn: false negative counts.
        empty: value where all three are 0 (class absent from prediction and target):
            ``"nan"`` (nnU-Net; skipped by the means) or ``"one"`` (MONAI
            ``ignore_empty=False``, BraTS).

    Returns:
        float64, the shape of ``tp``.
    """
    if empty not in ("nan", "one"):
        raise ValueError(f"empty must be 'nan' or 'one', got {empty!r}")
    if tp.shape != fp.shape or tp.shape != fn.shape:
        raise ValueError(
            f"tp, fp, fn must have one shape, got {tuple(tp.shape)}, {tuple(fp.shape)}, "
            f"{tuple(fn.shape)}"
        )
    denom = (2 * tp + fp + fn).double()
    fill = float("nan") if empty == "nan" else 1.0
    return torch.where(denom > 0, 2 * tp.double() / denom.clamp_min(1), fill)


def dice(
    pred: Tensor,
    target: Tensor,
    num_classes: int | None = None,
    *,
    multilabel: bool = False,
    threshold: float = 0.0,
    ignore_index: int | None = None,
    empty: EmptyRule = "nan",
    per_image: bool = True,
) -> Tensor:
    """Dice per class (the background class 0 included: drop it with ``[1:]``).

    Args:
        pred: as :func:`dice_stats`.
        target: as :func:`dice_stats`.
        num_classes: as :func:`dice_stats`.
        multilabel: as :func:`dice_stats`.
        threshold: as :func:`dice_stats`.
        ignore_index: as :func:`dice_stats`.
        empty: the 0/0 rule of :func:`dice_from_stats`.
        per_image: Dice of each image, averaged over the images where it is defined; else
            one Dice from the counts summed over the batch ("global Dice").

    Returns:
        ``(C,)`` float64; NaN for a class with no defined value.
    """
    tp, fp, fn = dice_stats(
        pred,
        target,
        num_classes,
        multilabel=multilabel,
        threshold=threshold,
        ignore_index=ignore_index,
    )
    if not per_image:
        return dice_from_stats(tp.sum(0), fp.sum(0), fn.sum(0), empty=empty)
    per = dice_from_stats(tp, fp, fn, empty=empty)
    keep = ~torch.isnan(per)
    count = keep.sum(0)
    total = torch.where(keep, per, 0.0).sum(0)
    return torch.where(count > 0, total / count.clamp_min(1), float("nan"))


# --------------------------------------------------------------------------------------
# accumulators


class ClassificationAccumulator:
    """Streams classification outputs over batches; exact metrics at :meth:`compute`.

    The exact AUC needs every score, so scores and targets are kept (on ``store_device``,
    the CPU by default, so GPU memory does not grow with the dataset): ``N * C`` floats.

    Args:
        num_classes: ``C`` (classes, or labels for ``multilabel``).
        multilabel: ``(N, C)`` 0/1 targets (per-label AUC and mean AUC) instead of
            ``(N,)`` class indices (accuracy, balanced accuracy, one-vs-rest AUC).
        topk: the ``k`` of the top-k accuracies reported (multi-class); those above ``C``
            are skipped.
        softmax_auc: multi-class AUC ranks ``softmax(scores)``; set False when the scores
            passed are already probabilities (or to rank raw scores).
        store_device: where the scores are kept.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        multilabel: bool = False,
        topk: Sequence[int] = (1, 5),
        softmax_auc: bool = True,
        store_device: str | torch.device = "cpu",
    ) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if any(not isinstance(k, int) or k < 1 for k in topk):
            raise ValueError(f"topk must hold positive integers, got {list(topk)}")
        self.num_classes = num_classes
        self.multilabel = multilabel
        self.topk = tuple(k for k in topk if k <= num_classes)
        self.softmax_auc = softmax_auc
        self.store_device = torch.device(store_device)
        self._scores: list[Tensor] = []
        self._targets: list[Tensor] = []

    def reset(self) -> None:
        """Forget everything seen."""
        self._scores.clear()
        self._targets.clear()

    @property
    def num_samples(self) -> int:
        """Samples seen since construction or the last :meth:`reset`."""
        return sum(s.shape[0] for s in self._scores)

    @torch.no_grad()
    def update(self, scores: Tensor, target: Tensor) -> None:
        """Add a batch.

        Args:
            scores: ``(B, C)`` floating scores (logits or probabilities).
            target: ``(B,)`` integer classes, or ``(B, C)`` 0/1 labels for multilabel.
        """
        scores = _check_scores(scores, "scores", 2)
        if scores.shape[1] != self.num_classes:
            raise ValueError(
                f"scores has {scores.shape[1]} columns, expected num_classes={self.num_classes}"
            )
        if self.multilabel:
            target = _check_binary(target, "target", scores.shape)
        else:
            target = _check_class_target(target, "target", scores.shape[0], self.num_classes)
        self._scores.append(scores.detach().to(self.store_device))
        self._targets.append(target.detach().to(self.store_device))

    @torch.no_grad()
    def compute(self) -> dict[str, Any]:
        """The metrics over everything seen.

        Returns:
            Multi-class: ``acc_top{k}`` for each ``k`` in ``topk``, ``balanced_acc``,
            ``auc_macro`` (floats) and ``auc_per_class`` (``(C,)`` CPU float64 tensor).
            Multi-label: ``auc_mean`` (float) and ``auc_per_class``. Always ``num_samples``.
        """
        if not self._scores:
            raise ValueError("no batches seen: call update() before compute()")
        scores = torch.cat(self._scores)
        target = torch.cat(self._targets)
        out: dict[str, Any] = {"num_samples": scores.shape[0]}
        if self.multilabel:
            auc = multilabel_auc(scores, target)
            out["auc_mean"] = float(auc.mean)
        else:
            for k in self.topk:
                out[f"acc_top{k}"] = float(accuracy(scores, target, k))
            cm = confusion_matrix(scores, target, self.num_classes)
            out["balanced_acc"] = float(_balanced_from_confusion(cm))
            auc = multiclass_auc(scores, target, softmax=self.softmax_auc)
            out["auc_macro"] = float(auc.mean)
        out["auc_per_class"] = auc.per_class.cpu()
        return out


class SegmentationAccumulator:
    """Streams segmentation predictions over batches into per-class Dice.

    Keeps, per class, the sum and count of the defined per-image Dice values and the summed
    TP/FP/FN counts, so memory does not grow with the dataset.

    Args:
        num_classes: ``C``.
        multilabel: overlapping regions (see :func:`dice_stats`).
        threshold: decision threshold on floating multi-label predictions.
        ignore_index: target label excluded (multi-class).
        empty: the 0/0 rule of :func:`dice_from_stats`.
        include_background: count class 0 in the mean Dice (multi-class; multi-label means
            always cover every channel).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        multilabel: bool = False,
        threshold: float = 0.0,
        ignore_index: int | None = None,
        empty: EmptyRule = "nan",
        include_background: bool = False,
    ) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if empty not in ("nan", "one"):
            raise ValueError(f"empty must be 'nan' or 'one', got {empty!r}")
        if not multilabel and not include_background and num_classes < 2:
            raise ValueError("num_classes must be >= 2 when the background is excluded")
        self.num_classes = num_classes
        self.multilabel = multilabel
        self.threshold = threshold
        self.ignore_index = ignore_index
        self.empty: EmptyRule = empty
        self.include_background = include_background
        self.reset()

    def reset(self) -> None:
        """Forget everything seen."""
        z = torch.zeros(self.num_classes, dtype=torch.float64)
        self._dice_sum = z.clone()
        self._dice_count = torch.zeros(self.num_classes, dtype=torch.int64)
        self._tp = torch.zeros(self.num_classes, dtype=torch.int64)
        self._fp = self._tp.clone()
        self._fn = self._tp.clone()
        self.num_images = 0

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch (shapes as :func:`dice_stats`)."""
        tp, fp, fn = dice_stats(
            pred,
            target,
            self.num_classes,
            multilabel=self.multilabel,
            threshold=self.threshold,
            ignore_index=self.ignore_index,
        )
        per = dice_from_stats(tp, fp, fn, empty=self.empty)
        keep = ~torch.isnan(per)
        self._dice_sum += torch.where(keep, per, 0.0).sum(0).cpu()
        self._dice_count += keep.sum(0).cpu()
        self._tp += tp.sum(0).cpu()
        self._fp += fp.sum(0).cpu()
        self._fn += fn.sum(0).cpu()
        self.num_images += tp.shape[0]

    def compute(self) -> dict[str, Any]:
        """Per-class and mean Dice over everything seen.

        Returns:
            ``dice_per_class`` (mean of per-image Dice, ``(C,)`` CPU float64),
            ``dice_mean`` (its mean over the classes counted, NaN ones skipped),
            ``dice_global_per_class`` and ``dice_global_mean`` (from the summed counts),
            and ``num_images``.
        """
        if self.num_images == 0:
            raise ValueError("no batches seen: call update() before compute()")
        per = torch.where(
            self._dice_count > 0,
            self._dice_sum / self._dice_count.clamp_min(1),
            float("nan"),
        )
        glob = dice_from_stats(self._tp, self._fp, self._fn, empty=self.empty)
        first = 0 if (self.multilabel or self.include_background) else 1
        return {
            "dice_per_class": per,
            "dice_mean": float(nanmean(per[first:])),
            "dice_global_per_class": glob,
            "dice_global_mean": float(nanmean(glob[first:])),
            "num_images": self.num_images,
        }

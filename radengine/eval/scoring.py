"""Task scores as flat, named metrics (what goes to MLflow under ``val/`` and ``test/``).

=============== =================================================================
task kind       metrics
=============== =================================================================
multi-class     ``accuracy``, ``top5_accuracy`` (more than 5 classes),
                ``balanced_accuracy``, ``auc_mean`` (one-vs-rest, macro) and
                ``auc/<class>``
multi-label     ``auc_mean`` (labels with both values in the set) and ``auc/<label>``
binary          ``auc``, ``accuracy`` (probability > 0.5)
segmentation    ``dice_mean`` (per image, then over foreground classes), ``dice/<class>``,
                ``dice_global_mean`` (from counts summed over the set)
=============== =================================================================

A label or class whose AUC or Dice is undefined on the set (one class only, or absent) is
left out of the mean and of the per-class metrics (MLflow would store NaN).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from radengine.eval import metrics

__all__ = ["classification_metrics", "segmentation_metrics"]


def _per_class(prefix: str, values: Tensor, names: list[str]) -> dict[str, float]:
    out = {}
    for name, v in zip(names, values.tolist(), strict=True):
        if not math.isnan(v):
            out[f"{prefix}/{name}"] = float(v)
    return out


@torch.no_grad()
def classification_metrics(
    kind: str, scores: Tensor, target: Tensor, names: list[str], *, logits: bool = True
) -> dict[str, float]:
    """Named metrics of ``scores (N, C)`` against ``target``.

    Args:
        kind: "multiclass", "multilabel" or "binary".
        scores: logits (``logits=True``) or probabilities / shares.
        target: ``(N,)`` int64 classes, or ``(N, C)`` 0/1 labels.
        names: one name per output.
        logits: multi-class AUC ranks softmax(scores) when True; binary accuracy
            thresholds at 0 (logits) or 0.5 (probabilities).
    """
    scores = scores.float()
    out: dict[str, float] = {}
    if kind == "multiclass":
        out["accuracy"] = float(metrics.accuracy(scores, target))
        if scores.shape[1] > 5:
            out["top5_accuracy"] = float(metrics.accuracy(scores, target, k=5))
        out["balanced_accuracy"] = float(
            metrics.balanced_accuracy(scores, target, num_classes=scores.shape[1])
        )
        auc = metrics.multiclass_auc(scores, target, softmax=logits)
        out["auc_mean"] = float(auc.mean)
        out.update(_per_class("auc", auc.per_class, names))
    elif kind == "multilabel":
        auc = metrics.multilabel_auc(scores, target)
        out["auc_mean"] = float(auc.mean)
        out.update(_per_class("auc", auc.per_class, names))
    elif kind == "binary":
        s, t = scores[:, 0], target[:, 0]
        out["auc"] = float(metrics.binary_auc(s, t))
        threshold = 0.0 if logits else 0.5
        out["accuracy"] = float(((s > threshold).float() == t.float()).double().mean())
    else:
        raise ValueError(f"not a classification kind: {kind!r}")
    return out


def segmentation_metrics(
    acc: metrics.SegmentationAccumulator, names: list[str]
) -> dict[str, float]:
    """Named metrics from a filled :class:`SegmentationAccumulator` (background excluded)."""
    res = acc.compute()
    out = {
        "dice_mean": res["dice_mean"],
        "dice_global_mean": res["dice_global_mean"],
    }
    first = 0 if (acc.multilabel or acc.include_background) else 1
    out.update(_per_class("dice", res["dice_per_class"][first:], names[first:]))
    return out

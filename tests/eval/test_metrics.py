"""Metrics against scikit-learn (the oracle) on random data, Dice against hand counts."""

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from radengine.eval import metrics as M
from radengine.eval.metrics import (
    ClassificationAccumulator,
    SegmentationAccumulator,
    accuracy,
    balanced_accuracy,
    binary_auc,
    confusion_matrix,
    dice,
    dice_from_stats,
    dice_stats,
    multiclass_auc,
    multilabel_auc,
)
from tests.conftest import DEVICES


def _np(t):
    return t.detach().cpu().numpy()


@pytest.mark.parametrize("device", DEVICES)
def test_accuracy_top1_and_topk_match_sklearn(gen, device):
    n, c = 301, 7
    scores = torch.randn(n, c, generator=gen).to(device)
    target = torch.randint(0, c, (n,), generator=gen).to(device)
    top1 = accuracy(scores, target)
    assert top1.dtype == torch.float64 and top1.device.type == device
    assert top1.item() == pytest.approx(skm.accuracy_score(_np(target), _np(scores.argmax(1))))
    for k in (2, 3, 6):
        want = skm.top_k_accuracy_score(_np(target), _np(scores), k=k, labels=np.arange(c))
        assert accuracy(scores, target, k).item() == pytest.approx(want)
    # Integer predictions give the top-1 accuracy.
    assert accuracy(scores.argmax(1), target).item() == pytest.approx(top1.item())


def test_balanced_accuracy_and_confusion_match_sklearn(gen):
    n, c = 257, 6
    # Skewed classes, and class 5 never true (only predicted): sklearn drops it.
    target = torch.randint(0, 5, (n,), generator=gen)
    target[: n // 2] = 0
    scores = torch.randn(n, c, generator=gen)
    pred = scores.argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = skm.balanced_accuracy_score(_np(target), _np(pred))
    assert balanced_accuracy(scores, target).item() == pytest.approx(want, abs=1e-12)
    assert balanced_accuracy(pred, target, num_classes=c).item() == pytest.approx(want, abs=1e-12)
    cm = confusion_matrix(pred, target, c)
    np.testing.assert_array_equal(
        _np(cm), skm.confusion_matrix(_np(target), _np(pred), labels=range(c))
    )


@pytest.mark.parametrize("device", DEVICES)
def test_binary_auc_with_ties_matches_sklearn(gen, device):
    for levels in (3, 10, None):  # heavy ties, some ties, continuous
        scores = torch.randn(500, generator=gen, dtype=torch.float64)
        if levels:
            scores = torch.round(scores * levels / 4)
        target = torch.rand(500, generator=gen) < 0.3
        got = binary_auc(scores.to(device), target.to(device))
        want = skm.roc_auc_score(_np(target), _np(scores))
        assert got.item() == pytest.approx(want, abs=1e-12)
    # All scores tied: AUC 0.5 exactly.
    assert binary_auc(torch.zeros(10), torch.arange(10) % 2).item() == 0.5


def test_multilabel_auc_matches_sklearn_and_skips_single_class_labels(gen):
    n, labels = 400, 9
    scores = torch.randn(n, labels, generator=gen)
    scores[:, :3] = torch.round(scores[:, :3] * 2)  # ties in some labels
    target = (torch.rand(n, labels, generator=gen) < torch.linspace(0.05, 0.6, labels)).long()
    target[:, 4] = 0  # no positives
    target[:, 7] = 1  # no negatives
    res = multilabel_auc(scores, target)
    valid = [j for j in range(labels) if j not in (4, 7)]
    want = skm.roc_auc_score(_np(target)[:, valid], _np(scores)[:, valid], average=None)
    np.testing.assert_allclose(_np(res.per_class)[valid], want, rtol=0, atol=1e-12)
    assert math.isnan(res.per_class[4]) and math.isnan(res.per_class[7])
    assert res.mean.item() == pytest.approx(float(np.mean(want)), abs=1e-12)
    # Without degenerate labels the mean is sklearn's macro AUC.
    res = multilabel_auc(scores[:, valid], target[:, valid])
    macro = skm.roc_auc_score(_np(target)[:, valid], _np(scores)[:, valid], average="macro")
    assert res.mean.item() == pytest.approx(macro, abs=1e-12)
    # No usable label at all: NaN mean, no error.
    assert math.isnan(multilabel_auc(scores[:, :2], torch.zeros(n, 2)).mean)


def test_auc_column_chunks_give_the_same_result(gen, monkeypatch):
    scores = torch.randn(100, 13, generator=gen)
    target = torch.rand(100, 13, generator=gen) < 0.4
    full = multilabel_auc(scores, target).per_class
    monkeypatch.setattr(M, "_AUC_CHUNK", 250)  # 2 columns per chunk
    torch.testing.assert_close(multilabel_auc(scores, target).per_class, full, rtol=0, atol=0)


def test_multiclass_auc_ovr_matches_sklearn(gen):
    n, c = 350, 5
    logits = torch.randn(n, c, generator=gen, dtype=torch.float64)
    target = torch.randint(0, c, (n,), generator=gen)
    probs = logits.softmax(1)
    want = skm.roc_auc_score(_np(target), _np(probs), multi_class="ovr", average="macro")
    assert multiclass_auc(probs, target).mean.item() == pytest.approx(want, abs=1e-12)
    assert multiclass_auc(logits, target, softmax=True).mean.item() == pytest.approx(
        want, abs=1e-12
    )
    per = multiclass_auc(logits, target).per_class
    for k in range(c):
        assert per[k].item() == pytest.approx(
            skm.roc_auc_score(_np(target) == k, _np(logits)[:, k]), abs=1e-12
        )
    # A class absent from the target: NaN, left out of the macro mean.
    target[target == 2] = 0
    res = multiclass_auc(probs, target)
    assert math.isnan(res.per_class[2])
    assert res.mean.item() == pytest.approx(_np(res.per_class)[[0, 1, 3, 4]].mean(), abs=1e-15)


def test_dice_hand_computed():
    # One 3x4 image, classes 0..2.
    target = torch.tensor([[[0, 0, 1, 1], [0, 2, 2, 1], [0, 0, 0, 0]]])
    pred = torch.tensor([[[0, 1, 1, 1], [0, 2, 0, 0], [0, 0, 0, 2]]])
    tp, fp, fn = dice_stats(pred, target, 3)
    # class 0: true {0,1,4,8,9,10,11}, pred {0,4,6,7,8,9,10}: tp 5, fp 2, fn 2
    # class 1: true {2,3,7}, pred {1,2,3}: tp 2, fp 1, fn 1
    # class 2: true {5,6}, pred {5,11}: tp 1, fp 1, fn 1
    assert tp.tolist() == [[5, 2, 1]] and fp.tolist() == [[2, 1, 1]] and fn.tolist() == [[2, 1, 1]]
    torch.testing.assert_close(
        dice(pred, target, 3), torch.tensor([10 / 14, 4 / 6, 2 / 4], dtype=torch.float64)
    )
    # Logits give the argmax's Dice.
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float() * 5
    torch.testing.assert_close(dice(logits, target), dice(pred, target, 3))


def test_dice_empty_conventions_and_reductions():
    # Image 0 has class 2 nowhere; image 1 predicts class 2 where the target has none.
    target = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0]])
    pred = torch.tensor([[0, 1, 0, 0], [0, 1, 2, 0]])
    per_image = dice_from_stats(*dice_stats(pred, target, 3))
    assert math.isnan(per_image[0, 2]) and per_image[1, 2] == 0.0
    assert dice_from_stats(*dice_stats(pred, target, 3), empty="one")[0, 2] == 1.0
    d = dice(pred, target, 3)
    assert d[1].item() == pytest.approx((2 / 3 + 1.0) / 2)
    assert d[2].item() == 0.0  # the NaN image is skipped, the false positive counts
    assert dice(pred, target, 3, empty="one")[2].item() == pytest.approx(0.5)
    # Global Dice: class 1 has tp 2, fp 0, fn 1 over the batch.
    assert dice(pred, target, 3, per_image=False)[1].item() == pytest.approx(4 / 5)
    # A class absent everywhere: NaN.
    assert math.isnan(dice(pred, target, 4)[3])


def test_dice_ignore_index_and_multilabel():
    target = torch.tensor([[0, 1, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 0]])
    tp, fp, fn = dice_stats(pred, target, 2, ignore_index=255)
    assert tp.tolist() == [[1, 1]] and fp.tolist() == [[1, 0]] and fn.tolist() == [[0, 1]]
    # Multi-label (overlapping channels), logits thresholded at 0.
    t = torch.tensor([[[1, 1, 0, 0], [0, 1, 0, 0]]])
    logits = torch.tensor([[[2.0, -1.0, 3.0, -2.0], [-1.0, 0.5, -3.0, -1.0]]])
    d = dice(logits, t, multilabel=True)
    torch.testing.assert_close(d, torch.tensor([2 / 4, 1.0], dtype=torch.float64))
    torch.testing.assert_close(dice(logits.sigmoid(), t, multilabel=True, threshold=0.5), d)


def test_classification_accumulator_streams_exactly(gen):
    n, c = 203, 6
    logits = torch.randn(n, c, generator=gen)
    target = torch.randint(0, c, (n,), generator=gen)
    acc = ClassificationAccumulator(c, topk=(1, 5, 10))
    for i in range(0, n, 17):
        acc.update(logits[i : i + 17], target[i : i + 17])
    out = acc.compute()
    assert out["num_samples"] == n and "acc_top10" not in out
    assert out["acc_top1"] == pytest.approx(accuracy(logits, target).item())
    assert out["acc_top5"] == pytest.approx(accuracy(logits, target, 5).item())
    assert out["balanced_acc"] == pytest.approx(balanced_accuracy(logits, target).item())
    want = skm.roc_auc_score(_np(target), _np(logits.double().softmax(1)), multi_class="ovr")
    assert out["auc_macro"] == pytest.approx(want, abs=1e-12)
    acc.reset()
    with pytest.raises(ValueError, match="no batches"):
        acc.compute()

    ml = ClassificationAccumulator(4, multilabel=True)
    scores = torch.randn(50, 4, generator=gen)
    labels = torch.rand(50, 4, generator=gen) < 0.5
    ml.update(scores[:20], labels[:20])
    ml.update(scores[20:], labels[20:])
    out = ml.compute()
    assert out["auc_mean"] == pytest.approx(skm.roc_auc_score(_np(labels), _np(scores)), abs=1e-12)


def test_segmentation_accumulator_matches_functional(gen):
    c = 3
    pred = torch.randint(0, c, (7, 9, 11), generator=gen)
    target = torch.randint(0, c, (7, 9, 11), generator=gen)
    target[2] = 0
    pred[2] = 0  # classes 1, 2 empty in both for image 2: NaN, skipped
    acc = SegmentationAccumulator(c)
    acc.update(pred[:3], target[:3])
    acc.update(pred[3:], target[3:])
    out = acc.compute()
    torch.testing.assert_close(out["dice_per_class"], dice(pred, target, c))
    torch.testing.assert_close(out["dice_global_per_class"], dice(pred, target, c, per_image=False))
    assert out["dice_mean"] == pytest.approx(out["dice_per_class"][1:].mean().item())
    assert out["num_images"] == 7


def test_bad_inputs_name_the_argument():
    s, t = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    with pytest.raises(ValueError, match="k"):
        accuracy(s, t, 4)
    with pytest.raises(ValueError, match="target"):
        accuracy(s, torch.tensor([0, 1, 3, 1]))
    with pytest.raises(ValueError, match="target"):
        accuracy(s, t[:3])
    with pytest.raises(ValueError, match="scores"):
        multilabel_auc(torch.tensor([[float("nan")]]), torch.tensor([[1]]))
    with pytest.raises(ValueError, match="target"):
        multilabel_auc(s, torch.full((4, 3), 2))
    with pytest.raises(ValueError, match="num_classes"):
        dice(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        dice(
            torch.zeros(1, 4, dtype=torch.long),
            torch.zeros(1, 4, dtype=torch.long),
            2,
            empty="zero",
        )
    with pytest.raises(ValueError, match="target"):
        dice(torch.zeros(1, 4, dtype=torch.long), torch.full((1, 4), 5), 2)

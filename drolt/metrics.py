"""Test-set metrics (SPEC §5): top-k, per-class accuracy, many/medium/few shot splits, NCM accuracy."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from drolt.centroids import ncm_predict

SPLITS = ("many", "medium", "few")


def topk_correct(logits: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """Return {k: number of samples whose target is among the top-k logits}, k clipped to the class count."""
    num_classes = logits.shape[1]
    max_k = min(max(ks), num_classes)
    top = logits.topk(max_k, dim=1).indices  # [n, max_k]
    hits = top == targets[:, None]  # [n, max_k], at most one True per row
    return {k: int(hits[:, : min(k, num_classes)].any(dim=1).sum()) for k in ks}


def per_class_accuracy(preds: Tensor, targets: Tensor, num_classes: int) -> np.ndarray:
    """Return float64 [C] accuracy in percent per class; NaN for a class absent from targets."""
    targets = targets.detach().cpu().long()
    correct = (preds.detach().cpu().long() == targets).long()
    total = torch.bincount(targets, minlength=num_classes).numpy().astype(np.float64)
    right = torch.bincount(targets, weights=correct.double(), minlength=num_classes).numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 100.0 * right / total, np.nan)


def shot_split_of(train_counts: Sequence[int]) -> dict[str, list[int]]:
    """Return the class indices of each split by training count: many > 100, medium 20..100, few < 20."""
    split = {name: [] for name in SPLITS}
    for c, n in enumerate(train_counts):
        split["many" if n > 100 else "medium" if n >= 20 else "few"].append(c)
    return split


def split_accuracies(per_class_acc: np.ndarray, train_counts: Sequence[int]) -> dict:
    """Return {split: mean class accuracy, split_n: class count}; NaN for an empty split (not 0, SPEC §5)."""
    per_class_acc = np.asarray(per_class_acc, dtype=np.float64)
    if per_class_acc.shape != (len(train_counts),):
        raise ValueError(
            f"per_class_acc has shape {per_class_acc.shape} but train_counts has {len(train_counts)} classes"
        )
    result = {}
    for name, classes in shot_split_of(train_counts).items():
        # Classes absent from the test set (NaN) are left out; a split with none measured is NaN.
        measured = per_class_acc[classes][~np.isnan(per_class_acc[classes])]
        result[name] = float(measured.mean()) if measured.size else float("nan")
        result[f"{name}_n"] = len(classes)
    return result


def classification_report(
    logits: Tensor, features: Tensor, targets: Tensor, centroids: Tensor | None, train_counts: Sequence[int]
) -> dict:
    """Return one test pass's metrics as JSON-ready Python values: top-1/5, per-class, splits, NCM (percent).

    Without `centroids` (an epoch that skipped its NCM bank) the NCM fields are NaN."""
    num_classes = len(train_counts)
    centroid_classes = num_classes if centroids is None else centroids.shape[0]
    if logits.shape[1] != num_classes or centroid_classes != num_classes:
        raise ValueError(
            f"logits [n, {logits.shape[1]}] and centroids [{centroid_classes}, d] must both have "
            f"{num_classes} classes to match train_counts"
        )
    logits, targets = logits.detach(), targets.detach()
    n = targets.shape[0]
    top = topk_correct(logits, targets, ks=(1, 5))
    per_class = per_class_accuracy(logits.argmax(dim=1), targets, num_classes)
    report = {
        "top1": 100.0 * top[1] / n,
        "top5": 100.0 * top[5] / n,
        "per_class": [float(a) for a in per_class],
        **split_accuracies(per_class, train_counts),
    }
    if centroids is None:
        return {**report, "ncm_top1": float("nan"), **{f"ncm_{name}": float("nan") for name in SPLITS}}
    ncm_preds = ncm_predict(features.detach(), centroids.detach())
    ncm_splits = split_accuracies(per_class_accuracy(ncm_preds, targets, num_classes), train_counts)
    return {
        **report,
        "ncm_top1": 100.0 * int((ncm_preds.cpu() == targets.cpu()).sum()) / n,
        **{f"ncm_{name}": ncm_splits[name] for name in SPLITS},
    }

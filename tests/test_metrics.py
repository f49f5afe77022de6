"""Metrics and centroids: top-k, per-class accuracy, shot splits (SPEC §5), centroid means and cosine NCM."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from drolt.centroids import class_centroids, ncm_predict
from drolt.metrics import (
    SPLITS,
    classification_report,
    per_class_accuracy,
    shot_split_of,
    split_accuracies,
    topk_correct,
)


def lt_counts(num_classes: int, rho: int) -> list[int]:
    """SPEC §1 exp profile, written out here so the test does not lean on the data module."""
    n_max, f = 50000 / num_classes, 1 / rho
    return [int(n_max * f ** (c / (num_classes - 1))) for c in range(num_classes)]


def test_topk_correct_on_a_hand_example():
    logits = torch.tensor(
        [
            [0.9, 0.05, 0.03, 0.02],  # target 0: top-1 hit
            [0.5, 0.3, 0.15, 0.05],  # target 1: second place, top-2 hit
            [0.4, 0.3, 0.2, 0.1],  # target 3: last place, only within top-4
        ]
    )
    targets = torch.tensor([0, 1, 3])
    assert topk_correct(logits, targets, ks=(1, 2, 3)) == {1: 1, 2: 2, 3: 2}
    # k above the class count is clipped to C, where every target is found.
    assert topk_correct(logits, targets, ks=(1, 5)) == {1: 1, 5: 3}


def test_per_class_accuracy_is_percent_with_nan_for_a_class_missing_from_targets():
    preds = torch.tensor([0, 0, 1, 2, 2, 0])
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    acc = per_class_accuracy(preds, targets, num_classes=4)
    assert acc.dtype == np.float64
    np.testing.assert_allclose(acc[:3], [100.0, 50.0, 50.0])
    assert math.isnan(acc[3])


@pytest.mark.parametrize(
    ("num_classes", "rho", "sizes"),
    [
        (100, 100, (35, 35, 30)),
        (100, 50, (41, 41, 18)),
        (100, 10, (69, 31, 0)),
        (10, 100, (8, 2, 0)),
        (10, 50, (9, 1, 0)),
        (10, 10, (10, 0, 0)),
    ],
)
def test_shot_split_sizes_match_spec(num_classes, rho, sizes):
    split = shot_split_of(lt_counts(num_classes, rho))
    assert tuple(len(split[name]) for name in SPLITS) == sizes
    assert sorted(sum(split.values(), [])) == list(range(num_classes))


def test_shot_split_boundaries_are_100_many_exclusive_and_20_medium_inclusive():
    assert shot_split_of([101, 100, 20, 19]) == {"many": [0], "medium": [1, 2], "few": [3]}


def test_split_accuracies_average_classes_and_report_empty_split_as_nan():
    counts = lt_counts(10, 10)  # all ten classes are "many"
    acc = np.arange(10, dtype=np.float64) * 10
    result = split_accuracies(acc, counts)
    assert result["many"] == pytest.approx(45.0)
    assert math.isnan(result["medium"]) and math.isnan(result["few"])
    assert (result["many_n"], result["medium_n"], result["few_n"]) == (10, 0, 0)


def test_split_accuracies_mean_is_over_classes_not_samples():
    result = split_accuracies(np.array([100.0, 0.0, 50.0]), [500, 30, 5])
    assert (result["many"], result["medium"], result["few"]) == (100.0, 0.0, 50.0)


def test_class_centroids_equal_a_per_class_loop_mean_and_zero_for_absent_class():
    gen = torch.Generator().manual_seed(0)
    features = torch.rand(20, 5, generator=gen)
    labels = torch.tensor([0, 2, 1, 0, 2] * 4)
    centroids = class_centroids(features, labels, num_classes=4)
    assert centroids.shape == (4, 5)
    for c in range(3):
        torch.testing.assert_close(centroids[c], features[labels == c].mean(dim=0))
    assert torch.all(centroids[3] == 0)


def test_ncm_uses_cosine_so_a_scaled_feature_keeps_its_prediction():
    centroids = torch.tensor([[1.0, 0.0], [10.0, 10.0]])
    z = torch.tensor([[0.9, 1.0]])
    # Euclidean nearest is centroid 0 (distance ~1.0 vs ~13), but the direction matches centroid 1.
    assert ncm_predict(z, centroids).tolist() == [1]
    scaled = torch.cat([z, 1000 * z, 1e-3 * z])
    assert ncm_predict(scaled, centroids).tolist() == [1, 1, 1]
    assert ncm_predict(z, centroids).dtype == torch.int64


def test_classification_report_has_every_field_and_serialises_to_json():
    num_classes = 10
    counts = lt_counts(num_classes, 10)  # medium and few splits are empty here
    gen = torch.Generator().manual_seed(0)
    targets = torch.arange(num_classes).repeat(3)
    logits = torch.randn(len(targets), num_classes, generator=gen)
    logits[torch.arange(len(targets)), targets] += 3.0  # mostly right
    centroids = torch.eye(num_classes, 12)
    features = centroids[targets] + 0.1 * torch.rand(len(targets), 12, generator=gen)

    report = classification_report(logits, features, targets, centroids, counts)
    expected = {"top1", "top5", "per_class", "ncm_top1"}
    expected |= {name for name in SPLITS} | {f"{name}_n" for name in SPLITS} | {f"ncm_{name}" for name in SPLITS}
    assert expected <= set(report)

    assert report["top1"] == pytest.approx(100.0 * (logits.argmax(1) == targets).float().mean().item())
    assert report["top5"] >= report["top1"]
    assert report["ncm_top1"] == 100.0 and report["ncm_many"] == 100.0
    assert len(report["per_class"]) == num_classes
    assert math.isnan(report["medium"]) and math.isnan(report["ncm_few"]) and report["few_n"] == 0
    assert all(type(v) in (float, int, list) for v in report.values())
    assert json.loads(json.dumps(report))["many_n"] == num_classes

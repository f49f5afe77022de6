"""Losses: the DRO-LT robust loss against a literal re-computation of SPEC §4.2, CE weights, LDAM, DRW."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from drolt.losses import (
    MODES,
    class_weights,
    drw_weights,
    ldam_loss,
    ldam_margins,
    robust_loss,
    weighted_cross_entropy,
)

NUM_CLASSES, DIM = 4, 3
UNSORTED = torch.tensor([2, 0, 1, 2, 0, 3, 1])  # labels out of order: the QUIRK changes who gets which radius
SORTED = torch.sort(UNSORTED).values


def reference_robust_loss(features, targets, centroids, eps, tau, mode):
    """SPEC §4.2 step by step with explicit loops over classes and samples, float64, naive log-sum-exp."""
    n, C = len(targets), centroids.shape[0]
    y = [int(t) for t in targets]
    batch_order_radii = iter([eps[y_j] for y_j in y])  # faithful: eps[y_1], eps[y_2], ... in batch order
    A = [[None] * n for _ in range(C)]
    for c in range(C):  # row-major walk of the C x n matrix: by class, then batch position
        for j in range(n):
            A[c][j] = -torch.linalg.vector_norm(centroids[c] - features[j])
            if y[j] == c:
                radius = next(batch_order_radii) if mode == "faithful" else eps[y[j]]
                A[c][j] = A[c][j] - radius
    per_class = []
    for c in sorted(set(y)):
        row = [A[c][j] / tau for j in range(n)]
        log_norm = torch.log(sum(torch.exp(v) for v in row))
        positives = [row[j] - log_norm for j in range(n) if y[j] == c]
        per_class.append(-sum(positives) / len(positives))
    return sum(per_class) / len(per_class)


def make_inputs(targets, seed=0):
    gen = torch.Generator().manual_seed(seed)
    features = torch.rand(len(targets), DIM, generator=gen, dtype=torch.float64, requires_grad=True)
    centroids = torch.rand(NUM_CLASSES, DIM, generator=gen, dtype=torch.float64, requires_grad=True)
    # Distinct radii per class so that handing a positive the wrong class's radius changes the loss.
    eps = torch.tensor([1.0, -0.5, 2.0, 0.25], dtype=torch.float64, requires_grad=True)
    return features, centroids, eps


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("targets", [UNSORTED, SORTED], ids=["unsorted", "sorted"])
def test_robust_loss_matches_literal_spec_recomputation(mode, targets):
    features, centroids, eps = make_inputs(targets)
    got = robust_loss(features, targets, centroids, eps, temperature=0.7, mode=mode)
    want = reference_robust_loss(features, targets, centroids, eps, 0.7, mode)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_faithful_mode_gives_positives_other_classes_radii():
    features, centroids, eps = make_inputs(UNSORTED)
    faithful = robust_loss(features, UNSORTED, centroids, eps, 0.7, "faithful")
    clean = robust_loss(features, UNSORTED, centroids, eps, 0.7, "clean")
    assert not torch.isclose(faithful, clean)

    # On a label-sorted batch row-major order equals batch order, so the quirk is invisible.
    features, centroids, eps = make_inputs(SORTED)
    faithful = robust_loss(features, SORTED, centroids, eps, 0.7, "faithful")
    clean = robust_loss(features, SORTED, centroids, eps, 0.7, "clean")
    torch.testing.assert_close(faithful, clean, rtol=0, atol=0)


def test_faithful_mode_moves_radius_gradients_between_classes_of_an_unsorted_batch():
    # Batch [1, 0]: the positive of class 0 (row-major first) gets eps[y_1] = eps[1] and vice versa;
    # with one sample per class each radius still receives gradient, but from the other class's row.
    targets = torch.tensor([1, 0])
    features, centroids, eps = make_inputs(targets)
    eps = torch.zeros(NUM_CLASSES, dtype=torch.float64, requires_grad=True)
    robust_loss(features, targets, centroids, eps, 1.0, "faithful").backward()
    swapped = eps.grad.clone()
    eps.grad = None
    robust_loss(features, targets, centroids, eps, 1.0, "clean").backward()
    assert torch.count_nonzero(eps.grad[2:]) == 0
    assert not torch.allclose(swapped, eps.grad)


@pytest.mark.parametrize("mode", MODES)
def test_gradient_reaches_eps_and_features_but_not_centroids(mode):
    features, centroids, eps = make_inputs(UNSORTED)
    robust_loss(features, UNSORTED, centroids, eps, 0.5, mode).backward()
    assert features.grad is not None and torch.count_nonzero(features.grad) > 0
    assert eps.grad is not None and torch.count_nonzero(eps.grad) > 0
    assert centroids.grad is None


@pytest.mark.parametrize("mode", MODES)
def test_small_temperature_with_large_distances_stays_finite(mode):
    targets = UNSORTED
    gen = torch.Generator().manual_seed(1)
    features = (100 * torch.rand(len(targets), DIM, generator=gen)).requires_grad_()
    centroids = 100 * torch.rand(NUM_CLASSES, DIM, generator=gen)
    eps = torch.ones(NUM_CLASSES, requires_grad=True)
    tau = 1e-3

    # The reference's log-sum-exp without max subtraction: every exp underflows in float32, log(0) = -inf.
    logits = -torch.cdist(centroids, features.detach()) / tau
    naive = logits - torch.log(torch.exp(logits).sum(dim=1, keepdim=True))
    assert not torch.isfinite(naive).all()

    loss = robust_loss(features, targets, centroids, eps, tau, mode)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(features.grad).all() and torch.isfinite(eps.grad).all()


def test_features_equal_to_a_centroid_give_finite_gradient():
    targets = torch.tensor([0, 1])
    centroids = torch.eye(2, DIM)
    features = centroids.clone().requires_grad_()  # zero distance on the positive entries
    robust_loss(features, targets, centroids, torch.ones(2), 1.0, "clean").backward()
    assert torch.isfinite(features.grad).all()


@pytest.mark.parametrize("mode", MODES)
def test_absent_classes_contribute_nothing(mode):
    targets = torch.tensor([0, 2, 0, 2])
    features, centroids, eps = make_inputs(targets)
    base = robust_loss(features, targets, centroids, eps, 0.5, mode)
    moved = centroids.detach().clone()
    moved[[1, 3]] += 50.0  # rows of classes 1 and 3 are never softmax anchors for this batch
    other_eps = eps.detach().clone()
    other_eps[[1, 3]] = 7.0
    torch.testing.assert_close(robust_loss(features, targets, moved, other_eps, 0.5, mode), base)
    # ... and the loss is the mean over the two present classes only.
    torch.testing.assert_close(base, reference_robust_loss(features, targets, centroids, eps, 0.5, mode))


def test_invalid_mode_names_allowed_values():
    features, centroids, eps = make_inputs(UNSORTED)
    with pytest.raises(ValueError, match="faithful.*clean.*'exact'"):
        robust_loss(features, UNSORTED, centroids, eps, 1.0, "exact")


def test_mismatched_shapes_are_rejected_with_the_shapes():
    features, centroids, eps = make_inputs(UNSORTED)
    with pytest.raises(ValueError, match=r"eps .*\(4,\)"):
        robust_loss(features, UNSORTED, centroids, eps[:3], 1.0, "clean")
    with pytest.raises(ValueError, match="centroids"):
        robust_loss(features, UNSORTED, centroids[:, :2], eps, 1.0, "clean")
    with pytest.raises(ValueError, match="targets"):
        robust_loss(features, UNSORTED[:3], centroids, eps, 1.0, "clean")


# ---------------------------------------------------------------------------------------------------------
# Cross-entropy weights, LDAM, DRW
# ---------------------------------------------------------------------------------------------------------

def test_class_weights_lt_and_bal_values():
    counts = [500, 100, 25]
    torch.testing.assert_close(class_weights(counts, "lt"), torch.tensor([1.0, 0.2, 0.05]))
    torch.testing.assert_close(class_weights(counts, "bal"), torch.tensor([625 / 1500, 625 / 300, 625 / 75]))
    assert class_weights(counts, "lt").dtype == torch.float32
    with pytest.raises(ValueError, match="'lt', 'bal'"):
        class_weights(counts, "balanced")


def test_weighted_cross_entropy_is_pytorch_weighted_mean():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=gen)
    targets = torch.tensor([0, 0, 1, 2, 2, 2])
    weights = class_weights([500, 100, 25], "lt")
    per_sample = F.cross_entropy(logits, targets, reduction="none")
    hand = (weights[targets] * per_sample).sum() / weights[targets].sum()
    torch.testing.assert_close(weighted_cross_entropy(logits, targets, weights), hand)
    torch.testing.assert_close(weighted_cross_entropy(logits, targets, None), per_sample.mean())


def test_bf16_logits_keep_the_class_weights_and_ldam_margins_in_float32():
    # Under bf16 autocast the classifier's logits are bf16; the CIFAR-LT weights (n_c / max n) and LDAM's
    # margins must not be rounded to bf16 with them: only the logits themselves carry bf16's rounding.
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 100, generator=gen).to(torch.bfloat16)
    targets = torch.randint(0, 100, (64,), generator=gen)
    counts = [int(500 * 0.01 ** (c / 99)) for c in range(100)]
    weights, margins = class_weights(counts, "lt"), ldam_margins(counts)
    assert not torch.equal(weights.bfloat16().float(), weights), "the weights must be ones bf16 would round"
    exact = logits.float()
    torch.testing.assert_close(weighted_cross_entropy(logits, targets, weights),
                               weighted_cross_entropy(exact, targets, weights), rtol=1e-6, atol=0)
    torch.testing.assert_close(ldam_loss(logits, targets, margins, weights=weights),
                               ldam_loss(exact, targets, margins, weights=weights), rtol=1e-6, atol=0)


def test_ldam_margins_peak_at_half_on_the_smallest_class():
    counts = [5000, 625, 50]
    margins = ldam_margins(counts)
    assert margins.argmax() == 2 and margins[2].item() == pytest.approx(0.5)
    torch.testing.assert_close(margins, torch.tensor([0.5 * (50 / 5000) ** 0.25, 0.5 * (50 / 625) ** 0.25, 0.5]))


def test_ldam_loss_subtracts_margin_from_target_logit_only():
    logits = torch.tensor([[0.2, -0.1, 0.4], [0.0, 0.3, -0.2]])
    targets = torch.tensor([2, 0])
    margins = torch.tensor([0.1, 0.2, 0.5])
    s = 30.0

    def ce(row, y):
        return -(row[y] - math.log(sum(math.exp(v) for v in row)))

    hand = [ce([s * 0.2, s * -0.1, s * (0.4 - 0.5)], 2), ce([s * (0.0 - 0.1), s * 0.3, s * -0.2], 0)]
    torch.testing.assert_close(ldam_loss(logits, targets, margins, s), torch.tensor(sum(hand) / 2))

    weights = torch.tensor([1.0, 1.0, 3.0])
    weighted = (3.0 * hand[0] + 1.0 * hand[1]) / 4.0
    torch.testing.assert_close(ldam_loss(logits, targets, margins, s, weights), torch.tensor(weighted))


def test_drw_weights_are_off_before_epoch_160_and_sum_to_c_after():
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert drw_weights(counts, epoch=0) is None
    assert drw_weights(counts, epoch=159) is None
    weights = drw_weights(counts, epoch=160)
    assert weights.dtype == torch.float32
    assert weights.sum().item() == pytest.approx(len(counts), rel=1e-6)
    assert torch.all(weights[1:] > weights[:-1])  # rarer class, larger weight
    raw = [(1 - 0.9999) / (1 - 0.9999**n) for n in counts]
    torch.testing.assert_close(weights, torch.tensor([w * 10 / sum(raw) for w in raw]))

"""Losses: the DRO-LT robust loss (SPEC §4.2), class-weighted cross-entropy (§4.4) and LDAM-DRW (§3.1)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

MODES = ("faithful", "clean")
WEIGHT_KINDS = ("lt", "bal")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _counts_tensor(counts: Sequence[int]) -> Tensor:
    counts = torch.as_tensor(list(counts), dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() == 0 or bool((counts <= 0).any()):
        raise ValueError(f"counts must be a non-empty list of positive per-class sizes, got {counts.tolist()}")
    return counts


# ---------------------------------------------------------------------------------------------------------
# DRO-LT robust loss
# ---------------------------------------------------------------------------------------------------------

def _positive_margins(targets: Tensor, eps: Tensor, mode: str) -> Tensor:
    """Radius subtracted at each sample's positive entry (y_j, j), as a [n] tensor in batch order."""
    if mode == "clean":
        return eps[targets]
    # QUIRK (faithful): the reference fills the positive entries of the C x n matrix in row-major order
    # (by class, then batch position) with eps[y_1], eps[y_2], ... taken in batch order. The k-th positive
    # in row-major order belongs to sample order[k], so that sample receives eps[y_k].
    order = torch.argsort(targets, stable=True)  # [n] batch positions in row-major order of the positives
    return torch.empty_like(eps[targets]).index_copy(0, order, eps[targets])


def robust_loss(
    features: Tensor, targets: Tensor, centroids: Tensor, eps: Tensor, temperature: float, mode: str
) -> Tensor:
    """Return the scalar DRO-LT robust loss of SPEC §4.2: mean over present classes of -mean log p(j | c)."""
    _check_mode(mode)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be a non-empty [n, d] tensor, got shape {tuple(features.shape)}")
    n, d = features.shape
    if targets.shape != (n,) or targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"targets must be an integer tensor of shape ({n},) matching features, "
            f"got shape {tuple(targets.shape)} dtype {targets.dtype}"
        )
    if centroids.ndim != 2 or centroids.shape[1] != d:
        raise ValueError(f"centroids must be [C, {d}] to match features [n, {d}], got {tuple(centroids.shape)}")
    num_classes = centroids.shape[0]
    if eps.shape != (num_classes,):
        raise ValueError(f"eps must hold one radius per class, shape ({num_classes},), got {tuple(eps.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")

    # At least float32: reduced-precision features (autocast) would make small-tau logits meaningless.
    dtype = torch.promote_types(features.dtype, torch.float32)
    z = features.to(dtype)
    mu = centroids.detach().to(dtype)
    targets = targets.long()
    cols = torch.arange(n, device=z.device)

    # Broadcast difference rather than cdist: exact, and its gradient is 0 (not NaN) where z_j == mu_c.
    dist = torch.linalg.vector_norm(mu[:, None, :] - z[None, :, :], dim=2)  # [C, n]
    margins = _positive_margins(targets, eps.to(dtype), mode)  # [n]
    logits = (-dist).index_put((targets, cols), -dist[targets, cols] - margins) / temperature  # [C, n]

    # Softmax over the batch for each centroid row; logsumexp subtracts the row max, so it cannot overflow.
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # [C, n]
    positive_log_prob = log_prob[targets, cols]  # [n]

    # Per-class means by scatter, and a masked mean over present classes: no host sync, no Python loop.
    zeros = torch.zeros(num_classes, dtype=dtype, device=z.device)
    class_sum = zeros.index_add(0, targets, positive_log_prob)  # [C]
    class_n = zeros.index_add(0, targets, torch.ones_like(positive_log_prob))  # [C]
    present = class_n > 0
    per_class = -class_sum / class_n.clamp(min=1)  # [C], 0 for absent classes
    return (per_class * present).sum() / present.sum()


# ---------------------------------------------------------------------------------------------------------
# Cross-entropy variants
# ---------------------------------------------------------------------------------------------------------

def class_weights(counts: Sequence[int], kind: str) -> Tensor:
    """Return float32 [C] class weights: "lt" n_c / max n (SPEC ce_lt), "bal" N / (C * n_c)."""
    n = _counts_tensor(counts)
    if kind == "lt":
        weights = n / n.max()
    elif kind == "bal":
        weights = n.sum() / (n.numel() * n)
    else:
        raise ValueError(f"class weight kind must be one of {WEIGHT_KINDS}, got {kind!r}")
    return weights.float()


def weighted_cross_entropy(logits: Tensor, targets: Tensor, weights: Tensor | None) -> Tensor:
    """Return cross-entropy reduced as PyTorch's weighted mean (sum w_y * loss / sum w_y); plain mean if None."""
    if weights is not None:
        # In the wider of the two dtypes: bf16 logits would round the weights (and under autocast
        # cross-entropy computes in float32 anyway).
        dtype = torch.promote_types(logits.dtype, weights.dtype)
        logits, weights = logits.to(dtype), weights.to(device=logits.device, dtype=dtype)
    return F.cross_entropy(logits, targets, weight=weights)


def ldam_margins(counts: Sequence[int], max_margin: float = 0.5) -> Tensor:
    """Return float32 [C] LDAM margins m_c = max_margin * n_c^(-1/4) / max_k n_k^(-1/4)."""
    inv_quarter = _counts_tensor(counts) ** -0.25
    return (max_margin * inv_quarter / inv_quarter.max()).float()


def ldam_loss(
    logits: Tensor, targets: Tensor, margins: Tensor, scale: float = 30.0, weights: Tensor | None = None
) -> Tensor:
    """Return the LDAM loss: (weighted) cross-entropy of scale * (logits - m_y on the target logit only)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # margins and x30 not in bf16
    margins = margins.to(device=logits.device, dtype=logits.dtype)
    target_mask = F.one_hot(targets, logits.shape[1]).to(logits.dtype)  # [n, C]
    shifted = logits - target_mask * margins[targets][:, None]
    return weighted_cross_entropy(scale * shifted, targets, weights)


def drw_weights(counts: Sequence[int], epoch: int, start_epoch: int = 160, beta: float = 0.9999) -> Tensor | None:
    """Return DRW's float32 [C] effective-number weights summing to C from start_epoch on, else None."""
    if epoch < start_epoch:
        return None
    n = _counts_tensor(counts)
    weights = (1 - beta) / (1 - beta**n)
    return (weights / weights.sum() * n.numel()).float()

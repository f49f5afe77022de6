"""Class centroids of the 64-d features and nearest-centroid (NCM) prediction (SPEC §4.5 steps 1, 3, 4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def class_centroids(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Return [C, d] mean feature per class (at least float32); a class with no sample gets a zero row.

    A zero row is safe: every bank SPEC §4.5 builds covers all classes (the class-aware stream visits each
    class about 500 times per pass, the LT training set holds at least 5 images per class), so it only
    occurs with partial banks. There it stays finite where a 0/0 mean would put NaN into every distance
    softmax and argmax; its robust-loss row is only used for classes present in a batch, and its cosine
    with any feature is 0.
    """
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(
            f"need features [n, d] and labels [n], got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    # Accumulate in at least float32 so a 50,000-sample bank of half-precision features sums accurately.
    dtype = torch.promote_types(features.dtype, torch.float32)
    labels = labels.long()
    sums = torch.zeros(num_classes, features.shape[1], dtype=dtype, device=features.device)
    sums.index_add_(0, labels, features.to(dtype))  # [C, d]
    counts = torch.zeros(num_classes, dtype=dtype, device=features.device)
    counts.index_add_(0, labels, torch.ones_like(labels, dtype=dtype))  # [C]
    return sums / counts.clamp(min=1)[:, None]


def ncm_predict(features: Tensor, centroids: Tensor) -> Tensor:
    """Return [n] int64 nearest-centroid predictions, argmax_c cos(mu_c, z)."""
    cosine = F.normalize(features.float(), dim=1) @ F.normalize(centroids.float(), dim=1).T  # [n, C]
    return cosine.argmax(dim=1)

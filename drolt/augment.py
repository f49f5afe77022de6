"""Batched CIFAR augmentation on uint8 tensors that live on any device.

The training transforms of SPEC 3 and 4.1 (crop, flip, AutoAugment CIFAR-10 policy, Cutout, normalise)
rewritten as whole-batch tensor ops, so a GPU-resident uint8 dataset never goes back through PIL.
Every random draw comes from the caller's ``torch.Generator`` (same device as the batch), which makes a
run reproducible from its seed. The AutoAugment ops themselves are in autoaugment.py.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from .autoaugment import check_uint8_batch, autoaugment_cifar10

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

# ----------------------------------------------------------------------------------------------------
# Crop, flip, Cutout, normalise and the stage pipelines


def random_crop_flip(x: Tensor, gen: torch.Generator, padding: int = 4) -> Tensor:
    """Return uint8 ``x`` randomly cropped from its zero-padded copy, then flipped left-right with p=0.5."""
    check_uint8_batch(x, "random_crop_flip")
    n, c, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=gen, device=x.device)  # (dy, dx)
    flip = torch.rand(n, generator=gen, device=x.device) < 0.5
    padded = F.pad(x, (padding, padding, padding, padding))  # [N, C, H+2p, W+2p]
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # [N, H]
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # [N, W]
    cols = torch.where(flip.unsqueeze(1), cols.flip(1), cols)
    padded = torch.gather(padded, 2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * padding))
    return torch.gather(padded, 3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def cutout(x: Tensor, gen: torch.Generator, size: int = 16) -> Tensor:
    """Return float ``x`` [B, C, H, W] with one size x size square (centre uniform, clipped) set to 0."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1), generator=gen, device=x.device)
    cx = torch.randint(0, w, (n, 1), generator=gen, device=x.device)
    ys = torch.arange(h, device=x.device)
    xs = torch.arange(w, device=x.device)
    half = size // 2
    in_rows = (ys >= cy - half) & (ys < cy + half)  # [N, H]
    in_cols = (xs >= cx - half) & (xs < cx + half)  # [N, W]
    hole = in_rows.view(n, 1, h, 1) & in_cols.view(n, 1, 1, w)
    return x.masked_fill(hole, 0.0)


def to_unit_float(x: Tensor) -> Tensor:
    """Return uint8 ``x`` as float32 in [0, 1] (x / 255, as torchvision's ToTensor)."""
    return x.to(torch.float32).div(255)


@functools.lru_cache(maxsize=None)
def _mean_std(dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Return the CIFAR mean and std as [1, 3, 1, 1] tensors (cached: a host-to-GPU copy syncs)."""
    as_tensor = functools.partial(torch.tensor, dtype=dtype, device=device)
    return as_tensor(CIFAR_MEAN).view(1, 3, 1, 1), as_tensor(CIFAR_STD).view(1, 3, 1, 1)


def normalize(x: Tensor) -> Tensor:
    """Return float ``x`` [B, 3, H, W] in [0, 1] standardised with the CIFAR mean and std per channel."""
    mean, std = _mean_std(x.dtype, x.device)
    return x.sub(mean).div(std)


def stage1_train_transform(x: Tensor, gen: torch.Generator) -> Tensor:
    """Return the normalised float batch after SPEC 3's crop (pad 4) and flip."""
    return normalize(to_unit_float(random_crop_flip(x, gen)))


def stage2_train_transform(x: Tensor, gen: torch.Generator, autoaugment: bool = True,
                           use_cutout: bool = True) -> Tensor:
    """Return the normalised float batch after SPEC 4.1's crop, flip, AutoAugment and Cutout (each of the
    last two can be switched off for ablations)."""
    x = random_crop_flip(x, gen)
    if autoaugment:
        x = autoaugment_cifar10(x, gen)
    x = to_unit_float(x)
    return normalize(cutout(x, gen) if use_cutout else x)


def test_transform(x: Tensor) -> Tensor:
    """Return the normalised float batch of uint8 (or [0, 1] float) ``x``, with no augmentation."""
    return normalize(to_unit_float(x) if x.dtype == torch.uint8 else x)

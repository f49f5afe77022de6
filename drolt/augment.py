"""Batched CIFAR augmentation on uint8 tensors that live on any device.

The training transforms of SPEC 3 and 4.1 (crop, flip, AutoAugment CIFAR-10 policy, Cutout, normalise)
rewritten as whole-batch tensor ops, so a GPU-resident uint8 dataset never goes back through PIL.
Every random draw comes from the caller's ``torch.Generator`` (same device as the batch), which makes a
run reproducible from its seed. The AutoAugment ops themselves are in autoaugment.py.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .autoaugment import AutoAugmentPlan, apply_autoaugment_plan, check_uint8_batch, sample_autoaugment_plan

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

# ----------------------------------------------------------------------------------------------------
# Crop, flip, Cutout, normalise and the stage pipelines


class Draws(NamedTuple):
    """The per-image random choices of one training-transform call (None: that step is off)."""

    offsets: Tensor  # [N, 2] int64 crop offsets (dy, dx) into the zero-padded image
    flip: Tensor  # [N] bool, flipped left-right
    plan: Optional[AutoAugmentPlan]
    holes: Optional[Tensor]  # [N, 2] int64 Cutout centres (cy, cx)

    def tensors(self) -> tuple[Optional[Tensor], ...]:
        """Return the draws as a flat tuple (AutoAugment's three fields in place of its plan)."""
        plan = self.plan if self.plan is not None else (None, None, None)
        return (self.offsets, self.flip, *plan, self.holes)

    @classmethod
    def from_tensors(cls, tensors: Sequence[Optional[Tensor]]) -> "Draws":
        """Return the draws that ``tensors()`` flattened."""
        offsets, flip, policy, applied, sign, holes = tensors
        return cls(offsets, flip, None if policy is None else AutoAugmentPlan(policy, applied, sign), holes)


# How a pipeline applies its draws: `apply_draws`, or a faster function computing the same images.
ApplyDraws = Callable[[Tensor, Draws], Tensor]


def draw(n: int, gen: torch.Generator, device: torch.device, autoaugment: bool = False,
         use_cutout: bool = False, padding: int = 4, image_size: int = 32) -> Draws:
    """Return the random choices for ``n`` images, drawn from ``gen`` in the order of the pipeline's steps."""
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=gen, device=device)
    flip = torch.rand(n, generator=gen, device=device) < 0.5
    plan = sample_autoaugment_plan(n, gen, device) if autoaugment else None
    holes = _draw_holes(n, gen, device, image_size, image_size) if use_cutout else None
    return Draws(offsets, flip, plan, holes)


def _draw_holes(n: int, gen: torch.Generator, device: torch.device, h: int, w: int) -> Tensor:
    """Return [n, 2] Cutout centres (cy, cx), uniform over the image."""
    cy = torch.randint(0, h, (n, 1), generator=gen, device=device)
    cx = torch.randint(0, w, (n, 1), generator=gen, device=device)
    return torch.cat([cy, cx], dim=1)


def concat_draws(parts: Sequence[Draws]) -> Draws:
    """Return the draws of consecutive calls as one, for one call on the concatenated images."""
    def cat(field: Sequence) -> Any:
        if field[0] is None:
            return None
        if isinstance(field[0], AutoAugmentPlan):
            return AutoAugmentPlan(*(torch.cat(f) for f in zip(*field)))
        return torch.cat(list(field))

    return Draws(*(cat(field) for field in zip(*parts)))


def take_draws(d: Draws, index: Tensor) -> Draws:
    """Return the draws of the images ``index`` selects, for one call on those images."""
    def take(field: Any) -> Any:
        if field is None:
            return None
        if isinstance(field, AutoAugmentPlan):
            return AutoAugmentPlan(*(t[index] for t in field))
        return field[index]

    return Draws(*(take(field) for field in d))


def crop_flip(x: Tensor, offsets: Tensor, flip: Tensor, padding: int = 4) -> Tensor:
    """Return uint8 ``x`` cropped at ``offsets`` from its zero-padded copy, flipped left-right where ``flip``."""
    check_uint8_batch(x, "crop_flip")
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # [N, C, H+2p, W+2p]
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # [N, H]
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # [N, W]
    cols = torch.where(flip.unsqueeze(1), cols.flip(1), cols)
    padded = torch.gather(padded, 2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * padding))
    return torch.gather(padded, 3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def random_crop_flip(x: Tensor, gen: torch.Generator, padding: int = 4) -> Tensor:
    """Return uint8 ``x`` randomly cropped from its zero-padded copy, then flipped left-right with p=0.5."""
    d = draw(x.shape[0], gen, x.device, padding=padding)
    return crop_flip(x, d.offsets, d.flip, padding)


def cut_holes(x: Tensor, holes: Tensor, size: int = 16) -> Tensor:
    """Return float ``x`` [B, C, H, W] with a size x size square (clipped) around each centre set to 0."""
    n, _, h, w = x.shape
    cy, cx = holes[:, :1], holes[:, 1:]
    ys = torch.arange(h, device=x.device)
    xs = torch.arange(w, device=x.device)
    half = size // 2
    in_rows = (ys >= cy - half) & (ys < cy + half)  # [N, H]
    in_cols = (xs >= cx - half) & (xs < cx + half)  # [N, W]
    hole = in_rows.view(n, 1, h, 1) & in_cols.view(n, 1, 1, w)
    return x.masked_fill(hole, 0.0)


def cutout(x: Tensor, gen: torch.Generator, size: int = 16) -> Tensor:
    """Return float ``x`` [B, C, H, W] with one size x size square (centre uniform, clipped) set to 0."""
    n, _, h, w = x.shape
    return cut_holes(x, _draw_holes(n, gen, x.device, h, w), size)


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


def apply_draws(x: Tensor, d: Draws, sync_free: bool = False) -> Tensor:
    """Return the normalised float batch of uint8 ``x`` after the steps ``d`` holds: crop, flip, AutoAugment,
    Cutout (AutoAugment ``sync_free``: see ``apply_autoaugment_plan``)."""
    x = crop_flip(x, d.offsets, d.flip)
    if d.plan is not None:
        check_uint8_batch(x, "autoaugment", cifar_size=True)
        x = apply_autoaugment_plan(x, d.plan, sync_free)
    x = to_unit_float(x)
    return normalize(cut_holes(x, d.holes) if d.holes is not None else x)


def stage1_train_transform(x: Tensor, gen: torch.Generator) -> Tensor:
    """Return the normalised float batch after SPEC 3's crop (pad 4) and flip."""
    return apply_draws(x, draw(x.shape[0], gen, x.device))


def stage2_train_transform(x: Tensor, gen: torch.Generator, autoaugment: bool = True, use_cutout: bool = True,
                           apply: ApplyDraws = apply_draws) -> Tensor:
    """Return the normalised float batch after SPEC 4.1's crop, flip, AutoAugment and Cutout (each of the
    last two can be switched off for ablations), the draws applied by ``apply``."""
    return apply(x, draw(x.shape[0], gen, x.device, autoaugment, use_cutout, image_size=x.shape[2]))


def test_transform(x: Tensor) -> Tensor:
    """Return the normalised float batch of uint8 (or [0, 1] float) ``x``, with no augmentation."""
    return normalize(to_unit_float(x) if x.dtype == torch.uint8 else x)

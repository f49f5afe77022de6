"""Stage-1 and stage-2 epochs written the way the reference (DRO-LT, a fork of LDAM-DRW) writes them.

The baseline of `benchmarks/bench_loops.py`, built from SPEC.md's description and given no handicap: the
project's ResNet-32 and losses, batch 128, a torch `DataLoader` over a `Dataset` that turns each uint8 image
into a PIL image and runs torchvision transforms, a per-image PIL AutoAugment (SPEC 4.6) and a tensor Cutout;
as many worker processes as cores, pinned memory on a GPU, cudnn autotuning on (LDAM-DRW turns it on), and
no persistent workers (the reference's plain DataLoader starts its workers anew at every pass).

Stage 2 makes the reference's three passes per epoch: a feature bank over the augmented class-aware stream
in eval mode, a training pass that re-averages every class centroid from the whole bank with a Python loop
over classes at every batch, and the evaluation pass (un-augmented LT-set bank, then the test set, NCM).
The benchmark shortens an epoch by handing in a proportionally smaller data set (see bench_loops.py).
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms as T

from benchmarks.common import available_cores, sync
from drolt.config import Stage2Config
from drolt.data import LongTailData
from drolt.losses import robust_loss, weighted_cross_entropy

MEAN = (0.4914, 0.4822, 0.4465)  # SPEC 1
STD = (0.2023, 0.1994, 0.2010)
FILL = (128, 128, 128)           # grey left by the geometric ops outside the source image
EVAL_BATCH = 100                 # the reference's validation loader batch (LDAM-DRW)
SAMPLES_PER_CLASS = 4            # "resample,4"

# ---------------------------------------------------------------------------------------------------------
# AutoAugment, CIFAR-10 policy, on PIL images (SPEC 4.6)

# Magnitude index 0..9 -> op parameter.
_BINS = {
    "shearX": np.linspace(0, 0.3, 10),
    "shearY": np.linspace(0, 0.3, 10),
    "translateX": np.linspace(0, 150 / 331, 10),  # fraction of the image size
    "translateY": np.linspace(0, 150 / 331, 10),
    "rotate": np.linspace(0, 30, 10),
    "color": np.linspace(0.0, 0.9, 10),
    "posterize": np.round(np.linspace(8, 4, 10), 0).astype(int),
    "solarize": np.linspace(256, 0, 10),
    "contrast": np.linspace(0.0, 0.9, 10),
    "sharpness": np.linspace(0.0, 0.9, 10),
    "brightness": np.linspace(0.0, 0.9, 10),
    "autocontrast": np.zeros(10),
    "equalize": np.zeros(10),
    "invert": np.zeros(10),
}


def _sign() -> int:
    return random.choice((-1, 1))


def _affine(img: Image.Image, coeffs: tuple, resample: int) -> Image.Image:
    # The module-level constants work with every Pillow version (the enums need Pillow >= 9.1).
    return img.transform(img.size, Image.AFFINE, coeffs, resample, fillcolor=FILL)


_OPS: dict[str, Callable[[Image.Image, float], Image.Image]] = {
    "shearX": lambda img, v: _affine(img, (1, v * _sign(), 0, 0, 1, 0), Image.BICUBIC),
    "shearY": lambda img, v: _affine(img, (1, 0, 0, v * _sign(), 1, 0), Image.BICUBIC),
    "translateX": lambda img, v: _affine(img, (1, 0, v * img.size[0] * _sign(), 0, 1, 0), Image.NEAREST),
    "translateY": lambda img, v: _affine(img, (1, 0, 0, 0, 1, v * img.size[1] * _sign()), Image.NEAREST),
    "rotate": lambda img, v: img.rotate(v, fillcolor=FILL),  # positive angles only, as the reference
    "color": lambda img, v: ImageEnhance.Color(img).enhance(1 + v * _sign()),
    "posterize": lambda img, v: ImageOps.posterize(img, int(v)),
    "solarize": lambda img, v: ImageOps.solarize(img, v),
    "contrast": lambda img, v: ImageEnhance.Contrast(img).enhance(1 + v * _sign()),
    "sharpness": lambda img, v: ImageEnhance.Sharpness(img).enhance(1 + v * _sign()),
    "brightness": lambda img, v: ImageEnhance.Brightness(img).enhance(1 + v * _sign()),
    "autocontrast": lambda img, v: ImageOps.autocontrast(img),
    "equalize": lambda img, v: ImageOps.equalize(img),
    "invert": lambda img, v: ImageOps.invert(img),
}

# (p1, op1, m1, p2, op2, m2)
CIFAR10_SUBPOLICIES = (
    (0.1, "invert", 7, 0.2, "contrast", 6), (0.7, "rotate", 2, 0.3, "translateX", 9),
    (0.8, "sharpness", 1, 0.9, "sharpness", 3), (0.5, "shearY", 8, 0.7, "translateY", 9),
    (0.5, "autocontrast", 8, 0.9, "equalize", 2), (0.2, "shearY", 7, 0.3, "posterize", 7),
    (0.4, "color", 3, 0.6, "brightness", 7), (0.3, "sharpness", 9, 0.7, "brightness", 9),
    (0.6, "equalize", 5, 0.5, "equalize", 1), (0.6, "contrast", 7, 0.6, "sharpness", 5),
    (0.7, "color", 7, 0.5, "translateX", 8), (0.3, "equalize", 7, 0.4, "autocontrast", 8),
    (0.4, "translateY", 3, 0.2, "sharpness", 6), (0.9, "brightness", 6, 0.2, "color", 8),
    (0.5, "solarize", 2, 0.0, "invert", 3), (0.2, "equalize", 0, 0.6, "autocontrast", 0),
    (0.2, "equalize", 8, 0.6, "equalize", 4), (0.9, "color", 9, 0.6, "equalize", 6),
    (0.8, "autocontrast", 4, 0.2, "solarize", 8), (0.1, "brightness", 3, 0.7, "color", 0),
    (0.4, "solarize", 5, 0.9, "autocontrast", 3), (0.9, "translateY", 9, 0.7, "translateY", 9),
    (0.9, "autocontrast", 2, 0.8, "solarize", 3), (0.8, "equalize", 8, 0.1, "invert", 3),
    (0.7, "translateY", 9, 0.9, "autocontrast", 1),
)


class PilCifar10Policy:
    """Transform: one uniformly drawn sub-policy applied to a PIL image; returns the new image."""

    def __call__(self, img: Image.Image) -> Image.Image:
        p1, op1, m1, p2, op2, m2 = random.choice(CIFAR10_SUBPOLICIES)
        if random.random() < p1:
            img = _OPS[op1](img, _BINS[op1][m1])
        if random.random() < p2:
            img = _OPS[op2](img, _BINS[op2][m2])
        return img


class Cutout:
    """Transform: zeroes one size x size square of a [C, H, W] tensor (centre uniform, clipped); returns it."""

    def __init__(self, size: int = 16):
        self.half = size // 2

    def __call__(self, img: Tensor) -> Tensor:
        h, w = img.shape[1:]
        cy, cx = random.randrange(h), random.randrange(w)
        img[:, max(cy - self.half, 0):cy + self.half, max(cx - self.half, 0):cx + self.half] = 0
        return img


def stage1_transform() -> T.Compose:
    """Returns SPEC 3's training transform: crop (pad 4), flip, to tensor, normalise."""
    return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])


def stage2_transform() -> T.Compose:
    """Returns SPEC 4.1's training transform: crop, flip, AutoAugment, to tensor, Cutout, normalise."""
    return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), PilCifar10Policy(), T.ToTensor(),
                      Cutout(16), T.Normalize(MEAN, STD)])


def test_transform() -> T.Compose:
    """Returns the evaluation transform: to tensor, normalise."""
    return T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])


# ---------------------------------------------------------------------------------------------------------
# Data set, class-aware sampler, loaders

class PilImages(Dataset):
    """uint8 HWC images served one at a time as PIL images through `transform`, with int labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(f"need uint8 images [n, H, W, 3], got {images.dtype} {images.shape}")
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


class _Cycle:
    """Endless iterator over `items` in random order, re-shuffled with Python's `random` at each wrap."""

    def __init__(self, items: Sequence[int]):
        self.items = list(items)
        self.pos = len(self.items)

    def __next__(self) -> int:
        if self.pos == len(self.items):
            random.shuffle(self.items)
            self.pos = 0
        self.pos += 1
        return self.items[self.pos - 1]


class ClassAwareSampler(Sampler[int]):
    """The "resample,k" stream: a cycling class order, k indices from the drawn class's own cycling iterator.

    The iterators live in the sampler, so they keep their position from pass to pass. A pass has
    `num_samples` indices (the reference: max n_c * C).
    """

    def __init__(self, labels: np.ndarray, samples_per_class: int, num_samples: int):
        classes = int(labels.max()) + 1
        self.k = samples_per_class
        self.num_samples = num_samples
        self.class_cycle = _Cycle(range(classes))
        self.sample_cycles = [_Cycle(np.flatnonzero(labels == c).tolist()) for c in range(classes)]

    def __iter__(self) -> Iterator[int]:
        emitted = 0
        while True:
            cycle = self.sample_cycles[next(self.class_cycle)]
            for _ in range(self.k):
                if emitted == self.num_samples:
                    return
                emitted += 1
                yield next(cycle)

    def __len__(self) -> int:
        return self.num_samples


@contextlib.contextmanager
def _cudnn_autotune() -> Iterator[None]:
    """Turns cudnn's autotuner on for the block, as LDAM-DRW's script does, and restores the setting after."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


# ---------------------------------------------------------------------------------------------------------
# The loops

class ReferenceLoop:
    """Reference-style epochs over all of `data`'s training and test images (the caller shortens `data`)."""

    def __init__(self, data: LongTailData, device: torch.device, batch_size: int = 128,
                 workers: int | None = None, seed: int = 0):
        random.seed(seed)  # the sampler's draws in this process; workers are seeded by the DataLoader
        torch.manual_seed(seed)
        images = data.train_images.cpu().permute(0, 2, 3, 1).numpy()  # [n, 32, 32, 3], as the reference holds it
        labels = data.train_labels.cpu().numpy()
        self.device = device
        self.num_classes = data.num_classes
        self.batch_size = batch_size
        self.workers = available_cores() if workers is None else workers
        # The reference's bank holds a whole stream pass of the full LT set (max n_c * C rows, from the
        # class counts) and every training batch averages all of it, however short this pass is.
        self.bank_rows = max(data.class_counts) * data.num_classes
        self.train1 = PilImages(images, labels, stage1_transform())
        self.stream = PilImages(images, labels, stage2_transform())
        self.lt_plain = PilImages(images, labels, test_transform())
        self.test = PilImages(data.test_images.cpu().permute(0, 2, 3, 1).numpy(), data.test_labels.cpu().numpy(),
                              test_transform())
        pass_length = int(np.bincount(labels).max()) * data.num_classes
        self.class_aware = ClassAwareSampler(labels, SAMPLES_PER_CLASS, pass_length)

    def _loader(self, dataset: Dataset, batch_size: int, sampler: Sampler | None = None,
                shuffle: bool = False) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=self.workers,
                          pin_memory=self.device.type == "cuda")

    def _to_device(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _timed(self, passes: dict, name: str, fn: Callable[[], object]) -> object:
        t0 = time.perf_counter()
        out = fn()
        sync(self.device)
        passes[name] = time.perf_counter() - t0
        return out

    def stage1_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """Runs a stage-1 epoch (shuffled CE training, then a test pass); returns seconds per pass."""
        passes: dict[str, float] = {}
        with _cudnn_autotune():
            self._timed(passes, "train", lambda: self._ce_pass(model, optimizer))
            self._timed(passes, "eval", lambda: self._test_pass(model, centroids=None))
        return passes

    def stage2_epoch(self, model: nn.Module, eps: nn.Parameter, optimizer: torch.optim.Optimizer,
                     ce_weights: Tensor | None, cfg: Stage2Config) -> dict:
        """Runs a DRO-LT feature epoch (bank, training, evaluation pass); returns seconds per pass."""
        passes: dict[str, float] = {}
        with _cudnn_autotune():
            bank = self._timed(passes, "bank", lambda: self._bank_pass(model))
            self._timed(passes, "train", lambda: self._robust_pass(model, eps, optimizer, ce_weights, cfg, *bank))
            self._timed(passes, "eval", lambda: self._evaluation_pass(model))
        return passes

    def _ce_pass(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
        model.train()
        loss_sum = 0.0
        for x, y in self._loader(self.train1, self.batch_size, shuffle=True):
            x, y = self._to_device(x, y)
            _, logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)  # the reference's loss meter: one sync per batch
        return loss_sum

    def _bank_pass(self, model: nn.Module) -> tuple[Tensor, Tensor]:
        model.eval()
        feats, labels = [], []
        with torch.no_grad():
            for x, y in self._loader(self.stream, self.batch_size, self.class_aware):
                x, y = self._to_device(x, y)
                feats.append(model(x)[0])
                labels.append(y)
        z, y = torch.cat(feats), torch.cat(labels)
        reps = math.ceil(self.bank_rows / len(y))  # the shortened pass fills a full-size bank by repetition
        return z.repeat(reps, 1)[:self.bank_rows], y.repeat(reps)[:self.bank_rows]

    def _robust_pass(self, model: nn.Module, eps: nn.Parameter, optimizer: torch.optim.Optimizer,
                     ce_weights: Tensor | None, cfg: Stage2Config, bank_z: Tensor, bank_y: Tensor) -> float:
        model.train()
        model.fc.requires_grad_(False)
        loss_sum = 0.0
        for x, y in self._loader(self.stream, self.batch_size, self.class_aware):
            x, y = self._to_device(x, y)
            centroids = self._class_means(bank_z, bank_y)  # every batch, from the whole bank
            z, logits = model(x)
            loss = (cfg.ce_weight * weighted_cross_entropy(logits, y, ce_weights)
                    + cfg.robust_weight * robust_loss(z, y, centroids, eps, cfg.temperature, cfg.mode))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
        model.fc.requires_grad_(True)
        return loss_sum

    def _class_means(self, z: Tensor, y: Tensor) -> Tensor:
        return torch.stack([z[y == c].mean(0) for c in range(self.num_classes)])  # [C, 64]

    def _evaluation_pass(self, model: nn.Module) -> float:
        model.eval()
        feats, labels = [], []
        with torch.no_grad():
            for x, y in self._loader(self.lt_plain, EVAL_BATCH):
                x, y = self._to_device(x, y)
                feats.append(model(x)[0])
                labels.append(y)
        return self._test_pass(model, self._class_means(torch.cat(feats), torch.cat(labels)))

    def _test_pass(self, model: nn.Module, centroids: Tensor | None) -> float:
        model.eval()
        correct = ncm_correct = total = 0
        with torch.no_grad():
            for x, y in self._loader(self.test, EVAL_BATCH):
                x, y = self._to_device(x, y)
                z, logits = model(x)
                correct += (logits.argmax(1) == y).sum().item()
                if centroids is not None:
                    cosine = F.normalize(z, dim=1) @ F.normalize(centroids, dim=1).T  # [n, C]
                    ncm_correct += (cosine.argmax(1) == y).sum().item()
                total += len(y)
        return correct / max(total, 1)

"""Long-tailed CIFAR subsets (SPEC 1): per-class counts, the reference's choice of images, training tensors."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .cifar import DOWNLOAD, DataError, load_cifar

PROFILES = ("exp", "step")


def long_tail_counts(num_classes: int, n_max: int, imb_factor: float, profile: str = "exp") -> list[int]:
    """Returns how many training images each class keeps, class 0 first (imb_factor = 1/rho)."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 for a long-tail profile, got {num_classes}")
    if n_max < 1:
        raise ValueError(f"n_max (images of the largest class) must be at least 1, got {n_max}")
    if not 0 < imb_factor <= 1:
        raise ValueError(f"imb_factor must be in (0, 1]: it is 1/rho, e.g. 0.01 for rho=100; got {imb_factor}")
    # int() truncates, as the reference does; rounding would change the published subset sizes.
    if profile == "exp":
        return [int(n_max * imb_factor ** (c / (num_classes - 1))) for c in range(num_classes)]
    if profile == "step":
        head = num_classes // 2
        return [int(n_max)] * head + [int(n_max * imb_factor)] * (num_classes - head)
    raise ValueError(f"unknown long-tail profile {profile!r}: choose one of {', '.join(map(repr, PROFILES))}")


def long_tail_indices(labels: np.ndarray, counts: Sequence[int], subset_seed: int) -> np.ndarray:
    """Returns the int64 training indices the reference keeps for these counts, class 0 block first."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {list(labels.shape)}")
    per_class = [np.flatnonzero(labels == c) for c in range(len(counts))]  # file order within each class
    for c, (idx, n) in enumerate(zip(per_class, counts)):
        if not 0 <= n <= len(idx):
            raise ValueError(f"class {c} has {len(idx)} images but {n} were asked for: counts must be between 0 "
                             "and the class size (use counts from long_tail_counts with n_max = N / C)")
    # The reference seeds NumPy's legacy *global* generator, so we must too to pick the same images; the
    # caller's generator state is put back afterwards so that loading data never shifts anyone else's draws.
    saved = np.random.get_state()
    try:
        np.random.seed(subset_seed)
        for idx in per_class:
            np.random.shuffle(idx)
    finally:
        np.random.set_state(saved)
    return np.concatenate([idx[:n] for idx, n in zip(per_class, counts)]).astype(np.int64)


@dataclass
class LongTailData:
    """A long-tailed training subset and the full test set as uint8 [n, 3, 32, 32] / int64 [n] tensors."""

    name: str
    num_classes: int
    rho: float
    profile: str
    subset_seed: int
    indices: np.ndarray  # int64 positions of the kept images in the official training set
    class_counts: list[int]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str  # "official" or "unofficial" (files whose md5 differs from the release)

    def to(self, device: torch.device | str) -> LongTailData:
        """Returns a copy whose tensors live on device."""
        return dataclasses.replace(
            self, train_images=self.train_images.to(device), train_labels=self.train_labels.to(device),
            test_images=self.test_images.to(device), test_labels=self.test_labels.to(device))


def share_test_sets(datas: Sequence[LongTailData]) -> list[LongTailData]:
    """Returns `datas` with equal test sets (a dataset's at every rho) held as one tensor: a pack of units
    evaluates a test set they share once for all of them (training.evaluate_seeds) and keeps one copy."""
    shared: list[LongTailData] = []
    for data in datas:
        twin = next((d for d in shared if d.test_images.shape == data.test_images.shape
                     and torch.equal(d.test_images, data.test_images) and torch.equal(d.test_labels, data.test_labels)),
                    None)
        shared.append(data if twin is None else
                      dataclasses.replace(data, test_images=twin.test_images, test_labels=twin.test_labels))
    return shared


def load_long_tail(name: str, root: str | Path, rho: float, profile: str = "exp", subset_seed: int = 0,
                   download: bool = False) -> LongTailData:
    """Returns the CIFAR-LT training subset for (rho, profile, subset_seed) and the balanced test set."""
    if not rho >= 1:
        raise ValueError(f"rho (largest over smallest class size) must be at least 1, e.g. 100; got {rho}")
    if profile not in PROFILES:  # checked before the slow load
        raise ValueError(f"unknown long-tail profile {profile!r}: choose one of {', '.join(map(repr, PROFILES))}")
    splits = load_cifar(name, root, download)
    # n_max = N / C needs equal training classes; the metrics need the balanced test set the papers use.
    for split, labels in (("training", splits.train_labels), ("test", splits.test_labels)):
        per_class = np.bincount(labels, minlength=splits.num_classes)
        if per_class.min() != per_class.max():
            raise DataError(f"the {name} {split} set under {root} has unequal class sizes ({per_class.min()} to "
                            f"{per_class.max()}); the official release has equal sizes. Delete the dataset "
                            f"folder and download it again ({DOWNLOAD}).")
    n_max = len(splits.train_labels) // splits.num_classes
    counts = long_tail_counts(splits.num_classes, n_max, 1 / rho, profile)
    if min(counts) == 0:
        raise ValueError(f"rho={rho} ({profile}) leaves class {counts.index(0)} without training images at "
                         f"n_max={n_max}: use a smaller rho or a training set with more images per class")
    indices = long_tail_indices(splits.train_labels, counts, subset_seed)
    return LongTailData(
        name=name, num_classes=splits.num_classes, rho=float(rho), profile=profile, subset_seed=subset_seed,
        indices=indices, class_counts=counts,
        train_images=_nchw(splits.train_images[indices]), train_labels=torch.from_numpy(splits.train_labels[indices]),
        test_images=_nchw(splits.test_images), test_labels=torch.from_numpy(splits.test_labels),
        source=splits.source)


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # [n, 32, 32, 3] -> [n, 3, 32, 32]

"""Small synthetic CIFAR-10 / CIFAR-100 folders in the real pickle layout, for tests and smoke runs."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from .cifar import release


def write_synthetic_cifar(root: str | Path, name: str, train_per_class: int, test_per_class: int,
                          seed: int = 0) -> Path:
    """Writes a learnable synthetic copy of the release's files under root and returns the dataset folder."""
    if train_per_class < 1 or test_per_class < 1:
        raise ValueError(f"train_per_class and test_per_class must be at least 1, got {train_per_class} and "
                         f"{test_per_class}")
    rel = release(name)
    rng = np.random.default_rng(seed)
    templates = _class_templates(rng, rel.num_classes)
    folder = Path(root).expanduser() / rel.folder
    folder.mkdir(parents=True, exist_ok=True)
    train_files = list(rel.train)
    train_parts = np.array_split(np.arange(train_per_class * rel.num_classes), len(train_files))
    train_data, train_labels = _draw_split(rng, templates, train_per_class)
    for b, (file, part) in enumerate(zip(train_files, train_parts)):
        batch_label = f"training batch {b + 1} of {len(train_files)}"
        _write(folder / file, _batch(name, batch_label, train_data[part], train_labels[part], part))
    test_data, test_labels = _draw_split(rng, templates, test_per_class)
    (test_file,) = rel.test
    _write(folder / test_file, _batch(name, "testing batch 1 of 1", test_data, test_labels,
                                      np.arange(len(test_labels))))
    _write(folder / rel.meta, _meta(name, rel.num_classes))
    return folder


def _class_templates(rng: np.random.Generator, num_classes: int) -> np.ndarray:
    """Returns one int16 [3, 32, 32] image per class: a base colour plus a stripe pattern of its own."""
    colour = rng.uniform(50, 205, size=(num_classes, 3, 1, 1))
    # Random colours alone can nearly coincide among 100 classes; a per-class stripe angle and frequency
    # keeps every pair apart, so a tiny network learns the classes well above chance.
    angle = rng.uniform(0, np.pi, size=(num_classes, 1, 1))
    freq = rng.uniform(0.3, 1.2, size=(num_classes, 1, 1))
    y, x = np.mgrid[0:32, 0:32]
    stripes = np.sin(freq * (np.cos(angle) * x + np.sin(angle) * y))  # [C, 32, 32]
    return np.rint(colour + 45 * stripes[:, None]).astype(np.int16)  # [C, 3, 32, 32]


def _draw_split(rng: np.random.Generator, templates: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns uint8 [N, 3072] rows (CHW order, as the release stores them) and int64 labels in shuffled order."""
    labels = rng.permutation(np.repeat(np.arange(len(templates)), per_class))
    noise = rng.integers(-40, 41, size=(len(labels), 3, 32, 32), dtype=np.int16)
    images = np.clip(templates[labels] + noise, 0, 255).astype(np.uint8)
    return images.reshape(len(labels), 3 * 32 * 32), labels


def _batch(name: str, batch_label: str, data: np.ndarray, labels: np.ndarray, positions: np.ndarray) -> dict:
    batch = {"batch_label": batch_label, "data": data, "filenames": [f"synthetic_{i:05d}.png" for i in positions]}
    if name == "cifar100":
        batch["fine_labels"] = labels.tolist()
        batch["coarse_labels"] = (labels // 5).tolist()  # 20 superclasses of 5, like the release's grouping
    else:
        batch["labels"] = labels.tolist()
    return batch


def _meta(name: str, num_classes: int) -> dict:
    names = [f"class_{c:02d}" for c in range(num_classes)]
    if name == "cifar100":
        return {"fine_label_names": names, "coarse_label_names": [f"superclass_{k:02d}" for k in range(20)]}
    return {"label_names": names, "num_vis": 3072}


def _write(path: Path, obj: dict) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))  # the protocol of the original Python 2 release

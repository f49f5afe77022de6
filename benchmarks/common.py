"""What the benchmark scripts share: synthetic CIFAR-LT-sized data and its shortened copies, `--set`
overrides of stage settings, and the machine: device, cores, syncing."""
from __future__ import annotations

import dataclasses
import os
import platform
from typing import Optional

import numpy as np
import torch

from drolt.config import SpeedSettings, Stage1Config, Stage2Config, from_dict
from drolt.data import LongTailData, long_tail_counts
from drolt.sampling import make_sampler


def synthetic_long_tail(dataset: str = "cifar10", rho: float = 100.0, seed: int = 0) -> LongTailData:
    """Returns random uint8 CIFAR-sized images with the CIFAR-LT class counts and a balanced 10k test set."""
    classes = {"cifar10": 10, "cifar100": 100}[dataset]
    counts = long_tail_counts(classes, 50000 // classes, 1 / rho)
    rng = np.random.default_rng(seed)
    train_labels = np.repeat(np.arange(classes), counts)
    test_labels = np.repeat(np.arange(classes), 10000 // classes)
    return LongTailData(
        name=dataset, num_classes=classes, rho=rho, profile="exp", subset_seed=0,
        indices=np.arange(len(train_labels)), class_counts=counts,
        train_images=torch.from_numpy(rng.integers(0, 256, (len(train_labels), 3, 32, 32), dtype=np.uint8)),
        train_labels=torch.from_numpy(train_labels),
        test_images=torch.from_numpy(rng.integers(0, 256, (len(test_labels), 3, 32, 32), dtype=np.uint8)),
        test_labels=torch.from_numpy(test_labels), source="synthetic-random")


def subset(data: LongTailData, train_idx: np.ndarray, test_idx: np.ndarray) -> LongTailData:
    """Returns `data` holding only these training and test images (class counts kept: weights, shot splits)."""
    t_idx, s_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(test_idx))
    return dataclasses.replace(data, train_images=data.train_images[t_idx], train_labels=data.train_labels[t_idx],
                               test_images=data.test_images[s_idx], test_labels=data.test_labels[s_idx])


def shortened(data: LongTailData, stage: int, images: int, seed: int = 0) -> LongTailData:
    """Returns the proportionally smaller data set whose epoch is `images` stream images (bench_loops.py's docstring says how)."""
    n, n_test = len(data.train_labels), len(data.test_labels)
    rng = np.random.default_rng(seed)
    if stage == 1:
        if images > n:
            raise ValueError(f"{images} training images asked for, but one stage-1 epoch has only {n}; use "
                             f"--batches <= {n // 128}")
        keep = rng.permutation(n)[:images]
        scale = images / n
    else:
        scale = images / (max(data.class_counts) * data.num_classes)
        labels = data.train_labels.numpy()
        keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:max(1, round(scale * n_c))]
                               for c, n_c in enumerate(np.bincount(labels, minlength=data.num_classes))])
    return subset(data, keep, rng.permutation(n_test)[:max(1, round(scale * n_test))])


def scaled(data: LongTailData, fraction: float) -> LongTailData:
    """Returns `fraction` of the data set, every class kept in proportion (so the class-aware stream pass and
    the test set shrink by `fraction` too); 1 returns `data`."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    return data if fraction == 1 else shortened(data, 2, round(fraction * max(data.class_counts) * data.num_classes))


def train_images_per_epoch(stage: int, cfg: Stage1Config | Stage2Config, data: LongTailData) -> int:
    """Returns how many images one unit trains on per epoch: stage 1 the LT training set, stage 2 its two
    passes over the class-aware stream (the centroid bank's and the training pass)."""
    if stage == 1:
        return len(data.train_labels)
    return 2 * len(make_sampler(cfg.sampler, data.train_labels, data.num_classes, 0).next_pass())


def pack_units(cfg: Stage1Config | Stage2Config, k: int, first_seed: int = 0,
               mixed: bool = False) -> list[Stage1Config | Stage2Config]:
    """Returns the settings of a pack of k units: seeds first_seed .. first_seed + k - 1 of `cfg`, or with `mixed`
    (stage 1) CE and LDAM-DRW in turn, seeds first_seed, first_seed, first_seed + 1, ..., as the paper grid
    packs a cell's stage 1."""
    if not mixed:
        return [dataclasses.replace(cfg, seed=first_seed + i) for i in range(k)]
    if not isinstance(cfg, Stage1Config):
        raise SystemExit("--mixed packs stage 1's two methods: use it with --stage 1")
    return [dataclasses.replace(cfg, seed=first_seed + i // 2, method=("ce", "ldam_drw")[i % 2]) for i in range(k)]


def available_cores() -> int:
    """Returns how many CPU cores this process may run on (the reference loop's DataLoader workers)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def sync(device: torch.device) -> None:
    """Waits for the device's queued work, so a timer read after it includes that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# How a stage computes, not what: the settings a comparison of loops doing the same work may change.
SPEED_KEYS = frozenset({*(f.name for f in dataclasses.fields(SpeedSettings)), "compile_loss"})


def parse_overrides(pairs: list[str], cfg1: Stage1Config, cfg2: Stage2Config,
                    only: Optional[frozenset[str]] = None) -> tuple[Stage1Config, Stage2Config]:
    """Returns the configs with `stageN.key=value` overrides applied (validated like a grid file); keys
    outside `only` (when given) are refused."""
    values = {1: dataclasses.asdict(cfg1), 2: dataclasses.asdict(cfg2)}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        stage, _, name = key.partition(".")
        if not sep or stage not in ("stage1", "stage2") or not name:
            raise SystemExit(f"--set {pair!r}: write stage1.KEY=VALUE or stage2.KEY=VALUE, "
                             "e.g. stage2.eval_batch_size=2000")
        if only is not None and name not in only:
            raise SystemExit(f"--set {pair!r}: {name} changes what a stage computes, which the loops compared "
                             f"here must share; set one of {', '.join(sorted(only))}")
        values[int(stage[-1])][name] = _scalar(raw)
    try:
        return from_dict(Stage1Config, values[1], "--set stage1"), from_dict(Stage2Config, values[2], "--set stage2")
    except ValueError as error:
        raise SystemExit(str(error)) from None


def _scalar(raw: str) -> object:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def resolve_device(name: str) -> torch.device:
    """Returns the device for auto / cpu / cuda."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: PyTorch sees no CUDA GPU here; use --device cpu or auto")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """Returns a human name for the device."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()} ({available_cores()} cores, {torch.get_num_threads()} torch threads)"

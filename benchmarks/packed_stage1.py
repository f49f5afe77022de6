"""Whole stage-1 epochs of K seeds trained as one packed model in one process: aggregate images/s against K = 1.

packed_seeds.py times the bare training step; this times what packing would give a stage-1 unit: epochs as
`train_stage1` runs them (CE, batch 128 per seed, crop and flip on the device, the per-epoch evaluation with
NCM) with K seeds packed into one grouped-convolution model (`PackedResNet`). Each seed keeps its own
initialisation, sampling order and augmentation draws (the project's `augmented_batches`, one per seed), so it
trains on what `train_stage1` with that seed trains on; `--check` runs `train_stage1` beside it and prints
both records per seed. Aggregate training images/s = K x training images per epoch / steady epoch time
(evaluation included), with the ratio against K = 1 measured in the same run; process packing reached 1.36x
at best on an H100 (results/benchmarks/h100_packing_fast.txt). The model runs through `speed.prepare`'s
settings (`--set stage1.channels_last=true ...`); a packed unit would need more (LDAM-DRW's cosine head,
checkpoints per seed): this measures whether it is worth building.

    PYTHONPATH=. python3 -m benchmarks.packed_stage1 --device cuda --set stage1.compile=true ...
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.common import device_name, parse_overrides, resolve_device, scaled, sync, synthetic_long_tail
from benchmarks.packed_seeds import PackedResNet, pack, seeded_models
from drolt import speed
from drolt.augment import test_transform, to_unit_float
from drolt.centroids import class_centroids
from drolt.config import Stage1Config, Stage2Config
from drolt.data import LongTailData
from drolt.metrics import classification_report
from drolt.sampling import ShuffledEpochs
from drolt.stage1 import lr_at, train_stage1
from drolt.training import augmented_batches, device_generator, extract, set_lr


def packed_features(net, images: Tensor, k: int, cfg: Stage1Config) -> tuple[Tensor, Tensor]:
    """Returns (features [K, n, 64], logits [K, n, C]) of every seed on the same un-augmented images."""
    def every_seed(chunk: Tensor) -> Tensor:
        x = test_transform(to_unit_float(chunk))
        return pack(x.unsqueeze(0).expand(k, *x.shape))

    def images_first(x: Tensor) -> tuple[Tensor, Tensor]:  # extract concatenates along the first dimension
        z, logits = net(x)
        return z.transpose(0, 1), logits.transpose(0, 1)

    z, logits = extract(images_first, images, cfg.eval_batch_size, every_seed, cfg)
    return z.transpose(0, 1), logits.transpose(0, 1)


def train_packed(cfg: Stage1Config, data: LongTailData, device: torch.device, k: int,
                 epochs: int) -> tuple[list[float], list[list[dict]]]:
    """Trains stage 1 (CE) for seeds 0..k-1 packed into one model; returns the epoch times and each seed's
    records."""
    model = PackedResNet(seeded_models(k, data.num_classes)).to(device)
    net = speed.prepare(model, cfg)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    samplers = [ShuffledEpochs(len(data.train_labels), seed) for seed in range(k)]
    gens = [device_generator(device, seed) for seed in range(k)]
    n = len(data.train_labels)
    times, records = [], [[] for _ in range(k)]
    for epoch in range(epochs):
        sync(device)
        t0 = time.perf_counter()
        set_lr(opt, lr_at(cfg, epoch))
        model.train()
        loss_sums = torch.zeros(k, device=device)
        per_seed = [augmented_batches(data, s.next_pass().to(device), cfg.batch_size, g, cfg.augment_batches)
                    for s, g in zip(samplers, gens)]
        for batch in zip(*per_seed):
            x = speed.model_input(pack(torch.stack([b[0] for b in batch])), cfg.channels_last)
            y = torch.stack([b[1] for b in batch])  # [K, B]
            with speed.autocast(device, cfg.precision):
                _, logits = net(x)
                losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(k, -1)
            opt.zero_grad(set_to_none=True)
            losses.mean(1).sum().backward()  # each seed's mean loss: each seed's own gradient
            opt.step()
            loss_sums += losses.detach().sum(1)
        model.eval()
        train_z, _ = packed_features(net, data.train_images, k, cfg)
        test_z, test_logits = packed_features(net, data.test_images, k, cfg)
        for i, loss_sum in enumerate((loss_sums / n).tolist()):
            centroids = class_centroids(train_z[i], data.train_labels, data.num_classes)
            report = classification_report(test_logits[i], test_z[i], data.test_labels, centroids, data.class_counts)
            records[i].append({"epoch": epoch, "train_loss": loss_sum, "top1": report["top1"],
                               "ncm_top1": report["ncm_top1"]})
        sync(device)
        times.append(time.perf_counter() - t0)
        print(f"      {k} seeds, epoch {epoch}: {times[-1]:.3f} s", flush=True)  # kept should a time limit cut in
    return times, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8], help="seeds packed into one model")
    parser.add_argument("--epochs", type=int, default=3, help="per count; the first one warms up")
    parser.add_argument("--fraction", type=float, default=1.0, help="of the data (below 1 to try it on a CPU)")
    parser.add_argument("--check", action="store_true", help="also run train_stage1 per seed and print both records")
    parser.add_argument("--set", action="append", default=[], metavar="stage1.KEY=VALUE")
    args = parser.parse_args()
    if args.epochs < 2:
        raise SystemExit("--epochs must be at least 2: the first epoch warms up (compilation, CUDA graphs)")
    device = resolve_device(args.device)
    cfg, _ = parse_overrides(args.set, Stage1Config(epochs=args.epochs), Stage2Config())
    data = scaled(synthetic_long_tail(), args.fraction).to(device)
    n = len(data.train_labels)
    print(f"packed stage 1: {device_name(device)} | torch {torch.__version__} | synthetic cifar10-LT rho 100, {n} "
          f"training images, {len(data.test_labels)} test | settings: {' '.join(args.set) or 'plain'}")
    print(f"{'seeds':>5}{'first s':>9}{'steady s':>10}{'train img/s':>13}{'vs 1 seed':>11}")
    base = None
    for k in sorted(set(args.counts) | {1}):
        times, records = train_packed(cfg, data, device, k, args.epochs)
        steady = statistics.median(times[1:])
        rate = k * n / steady
        base = base or rate
        print(f"{k:>5}{times[0]:>9.2f}{steady:>10.3f}{rate:>13.0f}{rate / base:>10.2f}x", flush=True)
        torch._dynamo.reset()  # the next count compiles its own graphs
        if args.check:
            for seed, packed in enumerate(records):
                alone = train_stage1(dataclasses.replace(cfg, seed=seed), data, device).history
                for a, b in zip(alone, packed):
                    print(f"      seed {seed} epoch {b['epoch']}: train_stage1 loss {a['train_loss']:.5f} top1 "
                          f"{a['top1']:.2f} ncm {a['ncm_top1']:.2f} | packed loss {b['train_loss']:.5f} top1 "
                          f"{b['top1']:.2f} ncm {b['ncm_top1']:.2f}")


if __name__ == "__main__":
    main()

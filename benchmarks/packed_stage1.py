"""Whole stage-1 epochs of K seeds trained as one packed model in one process: aggregate images/s against K = 1.

packed_seeds.py times the bare training step; this times the project's own packed stage 1,
`train_stage1_seeds`, the loop the harness runs with `pack_seeds`: seeds 0..K-1 of one stage-1 setting
trained as one model (drolt/packed.py; K = 1 is the plain model, as an unpacked unit trains it), epochs as
`train_stage1` runs them (CE unless `--set stage1.method=ldam_drw`, batch 128 per seed, crop and flip on the
device, the per-epoch evaluation with NCM). Each seed keeps its own initialisation, sampling order and
augmentation draws; `--check` runs `train_stage1` for each seed alone and prints both records per epoch.
Epoch times are the records' `epoch_time` (training and evaluation; the same for every seed of a pack); the
first epoch warms up, steady = median of the rest (with ncm_every > 1, of those without the NCM pass), all at
one learning rate (no warm-up schedule unless `--set stage1.warmup_epochs=N`).
Aggregate training images/s = K x training images per epoch / steady epoch time, with the ratio against
K = 1 measured in the same run (results/benchmarks/h100_packed_stage1_graph_step.txt: 1.63x at 3 seeds, 2.61x
at 8, the paper grid's settings). Speed settings as in a grid file
(`--set stage1.channels_last=true ...`).

    PYTHONPATH=. python3 -m benchmarks.packed_stage1 --device cuda --set stage1.compile=true ...
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch

from benchmarks.common import device_name, parse_overrides, resolve_device, scaled, synthetic_long_tail
from drolt.config import Stage1Config, Stage2Config
from drolt.data import LongTailData
from drolt.stage1 import ncm_epoch, train_stage1, train_stage1_seeds


def train_pack(cfg: Stage1Config, data: LongTailData, device: torch.device,
               k: int) -> tuple[list[float], list[list[dict]]]:
    """Trains stage 1 of seeds 0..k-1 as one pack (`train_stage1_seeds`); returns the epoch times and each
    seed's records."""
    def show(i: int, record: dict, state: dict) -> None:
        if i == 0:  # printed as each epoch ends, kept should a time limit cut in
            print(f"      {k} seeds, epoch {record['epoch']}: {record['epoch_time']:.3f} s", flush=True)

    results = train_stage1_seeds([dataclasses.replace(cfg, seed=s) for s in range(k)], data, device, on_epoch=show)
    return [r["epoch_time"] for r in results[0].history], [result.history for result in results]


def steady_epochs(cfg: Stage1Config) -> list[int]:
    """The epochs timed as steady: all after the warm-up, or with ncm_every > 1 those without the NCM pass (the
    last epoch always has one, and a process's first NCM pass warms up a pass of its own)."""
    plain = [e for e in range(1, cfg.epochs) if cfg.ncm_every == 1 or not ncm_epoch(cfg, e)]
    if not plain:
        raise SystemExit(f"with stage1.ncm_every={cfg.ncm_every}, none of {cfg.epochs} epochs after the first runs "
                         "without NCM: raise --epochs")
    return plain


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
    # one learning rate throughout, as in the steady epochs of a run: with graph_step each new rate (the
    # warm-up's) records the step anew, which no steady epoch pays
    cfg, _ = parse_overrides(args.set, Stage1Config(epochs=args.epochs, warmup_epochs=0), Stage2Config())
    timed = steady_epochs(cfg)
    data = scaled(synthetic_long_tail(), args.fraction).to(device)
    n = len(data.train_labels)
    print(f"packed stage 1: {device_name(device)} | torch {torch.__version__} | synthetic cifar10-LT rho 100, {n} "
          f"training images, {len(data.test_labels)} test | steady: epochs {', '.join(map(str, timed))} | settings: "
          f"{' '.join(args.set) or 'plain'}")
    print(f"{'seeds':>5}{'first s':>9}{'steady s':>10}{'train img/s':>13}{'vs 1 seed':>11}")
    base = None
    for k in sorted(set(args.counts) | {1}):
        times, records = train_pack(cfg, data, device, k)
        steady = statistics.median(times[e] for e in timed)
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

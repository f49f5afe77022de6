"""Whole epochs at full size, one after another: the steady-state epoch time of each stage on this device.

    PYTHONPATH=. python3 -m benchmarks.steady_epochs --device cuda --epochs 3 --set stage2.compile=true ...

bench_loops.py times shortened epochs of a fresh `train_stage*` call each, so model set-up, compilation
and CUDA-graph recording land in every timed figure; a grid unit pays them once over 100-200 epochs.
This script runs --epochs whole epochs of stage 1, then of stage 2 (feature epochs), on synthetic
CIFAR-10-LT-sized data (12,406 images, the 50,000-image class-aware stream, 10k test images) and prints
each epoch's time from its record; the first epoch carries the set-up, the later ones are the steady state.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from benchmarks.common import device_name, parse_overrides, resolve_device, scaled, synthetic_long_tail
from drolt.config import Stage1Config, Stage2Config
from drolt.model import resnet32
from drolt.stage1 import train_stage1
from drolt.stage2 import train_stage2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--epochs", type=int, default=3, help="whole epochs per stage (the first one warms up)")
    parser.add_argument("--rho", type=float, default=100.0)
    parser.add_argument("--fraction", type=float, default=1.0, help="of the data, every class in proportion "
                        "(below 1 only to try the script on a CPU)")
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2], choices=[1, 2],
                        help="stage 2 alone starts from freshly initialised weights (its timing is the same)")
    parser.add_argument("--set", action="append", default=[], metavar="stageN.KEY=VALUE")
    args = parser.parse_args()
    device = resolve_device(args.device)
    data = scaled(synthetic_long_tail("cifar10", args.rho), args.fraction).to(device)
    cfg1, cfg2 = parse_overrides(args.set, Stage1Config(epochs=args.epochs),
                                 Stage2Config(epochs=args.epochs, classifier_epochs=0))
    print(f"steady epochs: {device_name(device)} | torch {torch.__version__} | synthetic cifar10-LT rho "
          f"{args.rho:g}, {len(data.train_labels)} images | settings: {' '.join(args.set) or 'defaults'}")
    print(f"{'stage':>5}{'epoch':>6}{'epoch s':>9}{'train img/s':>13}", flush=True)

    def show(record: dict, state: dict) -> None:  # as each epoch ends, so a run cut short still reports
        print(f"{record['stage']:>5}{record['epoch']:>6}{record['epoch_time']:>9.2f}"
              f"{record['train_images_per_s']:>13.0f}", flush=True)

    histories = {}
    weights = resnet32(data.num_classes).state_dict()
    if 1 in args.stages:
        stage1 = train_stage1(cfg1, data, device, on_epoch=show)
        histories[1], weights = stage1.history, stage1.last_state
    if 2 in args.stages:
        histories[2] = train_stage2(cfg2, data, weights, device, on_epoch=show).history
    for stage, history in histories.items():
        later = [r["epoch_time"] for r in history[1:]]
        if later:
            print(f"stage {stage}: steady epoch {statistics.median(later):.2f} s (median of epochs after the first)")


if __name__ == "__main__":
    main()

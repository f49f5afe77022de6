"""Do speed settings compute what the plain path computes on this device? A few epochs of each stage, both ways.

    PYTHONPATH=. python3 -m benchmarks.same_numbers --device cuda --set stage1.compile=true ...

The CPU tests (tests/test_speed.py) cover the settings on a CPU; CUDA graphs and bf16 tensor cores only
exist on a GPU, so this script runs three stage-1 epochs and two stage-2 feature epochs on small synthetic
data with the plain settings and with the --set ones, from the same seed, and prints the last records side
by side. Three epochs with a learning rate that changes after the first, an epoch that ends in a short
batch, and a second stage-2 pass with new centroids: what a recorded training step (`graph_step`) must
follow, and what stand-in graphs on a CPU cannot show it freezing. With --method ldam_drw stage 1 trains
LDAM-DRW, whose class re-weighting starts in the third epoch (a recorded step must follow the new weights),
and stage 2 is skipped: DRO-LT starts from CE's linear head, not LDAM's cosine one.
"""
from __future__ import annotations

import argparse
import dataclasses

import torch

from benchmarks.common import parse_overrides, resolve_device, shortened, synthetic_long_tail
from drolt.config import Stage1Config, Stage2Config
from drolt.stage1 import train_stage1
from drolt.stage2 import train_stage2

KEYS = ("train_loss", "loss", "robust_loss", "top1", "ncm_top1")


def run(cfg1: Stage1Config, cfg2: Stage2Config, data, device: torch.device) -> list[dict]:
    """Returns the last records of stage 1 and, after CE, of the stage-2 feature epochs started from it."""
    stage1 = train_stage1(cfg1, data, device)
    if cfg1.method != "ce":
        return [stage1.last]
    stage2 = train_stage2(cfg2, data, stage1.last_state, device)
    return [stage1.last, stage2.last]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--images", type=int, default=2000, help="training images per stage-1 epoch (not a "
                        "multiple of the batch size: each epoch ends in a short batch)")
    parser.add_argument("--method", choices=("ce", "ldam_drw"), default="ce", help="stage 1's method")
    parser.add_argument("--set", action="append", default=[], metavar="stageN.KEY=VALUE")
    args = parser.parse_args()
    device = resolve_device(args.device)
    data = shortened(synthetic_long_tail(), 1, args.images).to(device)
    # (class_counts stay the full set's: class weights and shot splits use them)
    empty = torch.bincount(data.train_labels, minlength=data.num_classes).eq(0).nonzero().flatten().tolist()
    if empty and args.method == "ce":  # stage 2's class-aware sampler draws from every class
        parser.error(f"--images {args.images} leaves class(es) {empty} without a training image, and stage 2 "
                     "samples every class; use --images 300 or more")
    # lr 0.01: a few SGD steps at the reference's 0.1 on random images amplify rounding differences
    base1 = Stage1Config(method=args.method, epochs=3, warmup_epochs=2, lr=0.01, drw_start_epoch=2)
    base2 = Stage2Config(epochs=2, classifier_epochs=0)
    fast1, fast2 = parse_overrides(args.set, base1, base2)
    plain, fast = run(base1, base2, data, device), run(fast1, fast2, data, device)
    changed = [f"{s}.{k}={v}" for s, (a, b) in (("stage1", (base1, fast1)), ("stage2", (base2, fast2)))
               for k, v in dataclasses.asdict(b).items() if dataclasses.asdict(a)[k] != v]
    print(f"same numbers? {device} | stage 1 {args.method} | {' '.join(changed) or 'no settings changed'}")
    print(f"{'stage':>5} {'value':<12}{'plain':>12}{'settings':>12}{'rel diff':>10}")
    for stage, (p, f) in enumerate(zip(plain, fast), start=1):
        for key in KEYS:
            if key in p:
                diff = abs(f[key] - p[key]) / max(abs(p[key]), 1e-12)
                print(f"{stage:>5} {key:<12}{p[key]:>12.5f}{f[key]:>12.5f}{diff:>10.2e}")


if __name__ == "__main__":
    main()

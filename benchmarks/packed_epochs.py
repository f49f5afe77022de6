"""Whole epochs of K units trained as one packed model in one process: aggregate images/s against K = 1.

packed_seeds.py times the bare training step; this times the project's own packed loops, the ones the harness
runs with `pack_seeds`, seeds 0..K-1 of one setting trained as one model (drolt/packed.py; K = 1 is the plain
model, as an unpacked unit trains it):
- `--stage 1`: `train_stage1_seeds`, epochs as `train_stage1` runs them (CE unless `--set
  stage1.method=ldam_drw`, batch 128 per seed, crop and flip on the device, the per-epoch evaluation with NCM);
  `--mixed` packs CE and LDAM-DRW in turn (seeds 0, 0, 1, 1, ...), as the paper grid packs a cell's stage 1
  (LDAM-DRW's class weights on from the first epoch, as in its steady epochs after drw_start_epoch);
- `--stage 2`: `train_stage2_seeds`, DRO-LT feature epochs as `train_stage2` runs them (centroid bank, training
  pass, evaluation), from fresh weights: the same work as from stage-1 weights. The paper grid packs a cell's
  3 seeds in both modes; K seeds of one mode (`--set stage2.mode=...`) cost the same.
Each unit keeps its own initialisation, sampling order and augmentation draws; `--check` trains each seed alone
(`train_stage1` / `train_stage2`) and prints both records per epoch.
Epoch times are the records' `epoch_time` (training and evaluation; the same for every unit of a pack); the
first epoch warms up, steady = median of the rest (stage 1 with ncm_every > 1: of those without the NCM pass),
all at one learning rate (stage 1: no warm-up schedule unless `--set stage1.warmup_epochs=N`).
Aggregate training images/s = K x training images per epoch (stage 2: both passes over the class-aware stream)
/ steady epoch time, with the ratio against K = 1 measured in the same run (stage 1,
results/benchmarks/h100_packed_stage1_graph_step.txt: 1.63x at 3 seeds, 2.61x at 8, the paper grid's settings,
every epoch at a new warm-up rate). Speed settings as in a grid file (`--set stage1.channels_last=true ...`).

    PYTHONPATH=. python3 -m benchmarks.packed_epochs --stage 2 --device cuda --counts 6 18 --set stage2.compile=true ...
"""
from __future__ import annotations

import argparse
import statistics

import torch

from benchmarks.common import (device_name, pack_units, parse_overrides, resolve_device, scaled,
                               synthetic_long_tail, train_images_per_epoch)
from drolt.config import Stage1Config, Stage2Config
from drolt.data import LongTailData
from drolt.model import resnet32
from drolt.stage1 import ncm_epoch, train_stage1, train_stage1_seeds
from drolt.stage2 import train_stage2, train_stage2_seeds

# the record key of each stage's training loss, which --check compares
LOSS = {1: "train_loss", 2: "loss"}


def fresh_weights(data: LongTailData, seed: int) -> dict:
    """The weights a stage-2 unit of this seed starts from here: a fresh ResNet-32's, the same for every K."""
    torch.manual_seed(seed)
    return resnet32(data.num_classes).state_dict()


def train_pack(stage: int, cfgs: list[Stage1Config] | list[Stage2Config], data: LongTailData,
               device: torch.device) -> tuple[list[float], list[list[dict]]]:
    """Trains the units of `cfgs` as one pack; returns the epoch times and each unit's records."""
    def show(i: int, record: dict, state: dict) -> None:
        if i == 0:  # printed as each epoch ends, kept should a time limit cut in
            print(f"      {len(cfgs)} units, epoch {record['epoch']}: {record['epoch_time']:.3f} s", flush=True)

    if stage == 1:
        results = train_stage1_seeds(cfgs, data, device, on_epoch=show)
    else:
        results = train_stage2_seeds(cfgs, data, [fresh_weights(data, c.seed) for c in cfgs], device, on_epoch=show)
    return [r["epoch_time"] for r in results[0].history], [result.history for result in results]


def train_alone(stage: int, cfg: Stage1Config | Stage2Config, data: LongTailData, device: torch.device) -> list[dict]:
    """Returns the records of the unit of `cfg` trained unpacked, as `train_pack` trains it in a pack."""
    if stage == 1:
        return train_stage1(cfg, data, device).history
    return train_stage2(cfg, data, fresh_weights(data, cfg.seed), device).history


def steady_epochs(stage: int, cfg: Stage1Config | Stage2Config) -> list[int]:
    """The epochs timed as steady: all after the first, or in stage 1 with ncm_every > 1 those without the NCM
    pass (the last epoch always has one, and a process's first NCM pass warms up a pass of its own)."""
    plain = [e for e in range(1, cfg.epochs) if stage == 2 or cfg.ncm_every == 1 or not ncm_epoch(cfg, e)]
    if not plain:
        raise SystemExit(f"with stage1.ncm_every={cfg.ncm_every}, none of {cfg.epochs} epochs after the first runs "
                         "without NCM: raise --epochs")
    return plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", type=int, choices=(1, 2), default=1)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8], help="units packed into one model")
    parser.add_argument("--epochs", type=int, default=3, help="per count; the first one warms up")
    parser.add_argument("--fraction", type=float, default=1.0, help="of the data (below 1 to try it on a CPU)")
    parser.add_argument("--check", action="store_true", help="also train each seed alone and print both records")
    parser.add_argument("--mixed", action="store_true", help="stage 1: CE and LDAM-DRW in turn in each pack")
    parser.add_argument("--set", action="append", default=[], metavar="stageN.KEY=VALUE")
    args = parser.parse_args()
    if args.epochs < 2:
        raise SystemExit("--epochs must be at least 2: the first epoch warms up (compilation, CUDA graphs)")
    device = resolve_device(args.device)
    # one learning rate throughout, as in the steady epochs of a run: with graph_step each new rate (stage 1's
    # warm-up) records the step anew, which no steady epoch pays; stage 2 times its feature epochs
    cfgs = parse_overrides(args.set, Stage1Config(epochs=args.epochs, warmup_epochs=0, drw_start_epoch=0),
                           Stage2Config(epochs=args.epochs, classifier_epochs=0))
    cfg = cfgs[args.stage - 1]
    timed = steady_epochs(args.stage, cfg)
    data = scaled(synthetic_long_tail(), args.fraction).to(device)
    n = train_images_per_epoch(args.stage, cfg, data)
    print(f"packed stage {args.stage}: {device_name(device)} | torch {torch.__version__} | synthetic cifar10-LT rho "
          f"100, {len(data.train_labels)} training images ({n} trained on per epoch), {len(data.test_labels)} test | "
          f"steady: epochs {', '.join(map(str, timed))} | settings: {' '.join(args.set) or 'plain'}"
          f"{' | CE and LDAM-DRW in turn' if args.mixed else ''}")
    print(f"{'units':>5}{'first s':>9}{'steady s':>10}{'train img/s':>13}{'vs 1 unit':>11}")
    base = None
    for k in sorted(set(args.counts) | {1}):
        units = pack_units(cfg, k, mixed=args.mixed)
        times, records = train_pack(args.stage, units, data, device)
        steady = statistics.median(times[e] for e in timed)
        rate = k * n / steady
        base = base or rate
        print(f"{k:>5}{times[0]:>9.2f}{steady:>10.3f}{rate:>13.0f}{rate / base:>10.2f}x", flush=True)
        torch._dynamo.reset()  # the next count compiles its own graphs
        if args.check:
            loss = LOSS[args.stage]
            for unit, packed in zip(units, records):
                name = f"seed {unit.seed}" + (f" {unit.method}" if args.mixed else "")
                for a, b in zip(train_alone(args.stage, unit, data, device), packed):
                    print(f"      {name} epoch {b['epoch']}: alone loss {a[loss]:.5f} top1 {a['top1']:.2f} "
                          f"ncm {a['ncm_top1']:.2f} | packed loss {b[loss]:.5f} top1 {b['top1']:.2f} "
                          f"ncm {b['ncm_top1']:.2f}")


if __name__ == "__main__":
    main()

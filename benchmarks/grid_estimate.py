"""The paper grid's wall time on one GPU, from measured steady epochs (the output of steady_epochs.py).

    PYTHONPATH=. python3 -m benchmarks.grid_estimate results/benchmarks/h100_steady_stage1_fast.txt \\
        results/benchmarks/h100_steady_stage2_graph_augment.txt --gain 1.35 --gain2 1.0

Each file's epoch rows give a stage's steady epoch (the median of its epochs after the first) and its
warm-up (the first epoch's excess over that). A stage-1 epoch is a training pass over the unit's n images
and evaluation passes over the n images (the NCM bank) and the 10,000 test images; a training image costs
about three evaluation images (forward and backward against forward), so an epoch is scaled to each unit
by 4n + 10,000 against the measured set's. A stage-2 epoch is mostly its two passes over the
50,000-sample class-aware stream, the same for every unit, so it is charged as measured, and all 100
stage-2 epochs as feature epochs (the 20 classifier epochs are cheaper). Warm-ups are charged to every
unit as measured: with an empty compile cache, an upper bound. --gain is the aggregate gain of packing
trials on one GPU (h100_packing_fast.txt measured it for stage 1); --gain2 the same for stage 2.
"""
from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path
from typing import Iterator

from drolt.data import long_tail_counts

TEST_IMAGES = 10000
# The paper grid (experiments/paper_cifar_lt.yaml): per (dataset, rho), 3 seeds x 2 stage-1 methods
# (CE, shared by both DRO-LT modes, and LDAM-DRW) and 3 seeds x 2 DRO-LT modes in stage 2.
GRID = {"datasets": {"cifar10": 10, "cifar100": 100}, "rhos": (100, 50, 10), "stage1_units": 6,
        "stage2_units": 6, "stage1_epochs": 200, "stage2_epochs": 100, "stream_pass": 50000}
_ROW = re.compile(r"^\s*([12])\s+(\d+)\s+([\d.]+)\s+\d+\s*$")  # stage, epoch, epoch s, train img/s


def cell_sizes() -> Iterator[int]:
    """Yields the LT training images of each (dataset, rho) cell of the paper grid."""
    for classes in GRID["datasets"].values():
        for rho in GRID["rhos"]:
            yield sum(long_tail_counts(classes, 50000 // classes, 1 / rho))


def _cost1(n: int) -> int:
    """A stage-1 epoch's cost in evaluation images: training (about 3 each), the NCM bank and the test set."""
    return 3 * n + n + TEST_IMAGES


def _full_size(path: Path) -> int:
    """Returns the training images of the full-size set a steady_epochs output names (CIFAR-10-LT at its rho)."""
    rho = re.search(r"cifar10-LT rho ([\d.]+)", path.read_text())
    return sum(long_tail_counts(10, 5000, 1 / float(rho[1]))) if rho else 0


def read_epochs(path: Path) -> tuple[int, dict[int, list[float]]]:
    """Returns (training images of the measured set, {stage: epoch times in order}) of a steady_epochs output."""
    text = path.read_text()
    size = re.search(r"(\d+) images", text)
    if size is None:
        raise SystemExit(f"{path}: no 'N images' in its header; is it the output of benchmarks.steady_epochs?")
    epochs: dict[int, list[float]] = {}
    for line in text.splitlines():
        if row := _ROW.match(line):
            stage, epoch = int(row[1]), int(row[2])
            if epoch == 0 and stage in epochs:  # gpu_next.sh appends runs with other settings to one file
                raise SystemExit(f"{path}: stage {stage} ran more than once in this file; pass a file of one run")
            epochs.setdefault(stage, []).append(float(row[3]))
    return int(size[1]), epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="steady_epochs outputs, together covering both stages")
    parser.add_argument("--gain", type=float, default=1.0, help="aggregate packing gain on one GPU (stage 1)")
    parser.add_argument("--gain2", type=float, default=None, help="the same for stage 2 (default: --gain)")
    args = parser.parse_args()
    gains = {1: args.gain, 2: args.gain if args.gain2 is None else args.gain2}
    measured: dict[int, tuple[int, float, float, Path]] = {}  # stage: (images, steady s, warm-up s, file)
    for path in args.files:
        size, epochs = read_epochs(path)
        for stage, times in epochs.items():
            if stage in measured:
                raise SystemExit(f"stage {stage} is in both {measured[stage][3]} and {path}: pass one run per stage")
            if len(times) < 2:
                raise SystemExit(f"{path}: stage {stage} has {len(times)} epoch(s); the first only warms up")
            steady = statistics.median(times[1:])
            measured[stage] = (size, steady, times[0] - steady, path)
    missing = {1, 2} - set(measured)
    if missing:
        raise SystemExit(f"no epochs of stage {', '.join(map(str, sorted(missing)))} in the files given")

    size1, steady1, warm1, _ = measured[1]
    size2, steady2, warm2, path2 = measured[2]
    full = _full_size(path2)
    if size2 != full:
        print(f"warning: stage 2 in {path2} ran on {size2} training images, not the full {full}: its epochs are "
              "charged as measured, so this estimate does not describe full-size epochs (run steady_epochs "
              "without --fraction)")
    cells = list(cell_sizes())
    units1, units2 = GRID["stage1_units"] * len(cells), GRID["stage2_units"] * len(cells)
    hours = {1: sum(GRID["stage1_units"] * GRID["stage1_epochs"] * steady1 * _cost1(n) / _cost1(size1)
                    for n in cells) / 3600,
             2: units2 * GRID["stage2_epochs"] * steady2 / 3600}
    warm = {1: units1 * warm1 / 3600, 2: units2 * warm2 / 3600}
    for stage, (size, steady, warm_up, path) in sorted(measured.items()):
        print(f"stage {stage}: steady epoch {steady:.3f} s on {size} images, warm-up {warm_up:.1f} s ({path})")
    total = 0.0
    for stage in (1, 2):
        part = (hours[stage] + warm[stage]) / gains[stage]
        total += part
        print(f"stage {stage}: {hours[stage]:.2f} h of steady epochs + {warm[stage]:.2f} h of warm-ups, "
              f"/ G {gains[stage]:.2f} = {part:.2f} h")
    print(f"paper grid on one GPU: {total:.2f} h ({units1} stage-1 units x {GRID['stage1_epochs']} epochs, "
          f"{units2} stage-2 units x {GRID['stage2_epochs']} epochs)")


if __name__ == "__main__":
    main()

"""How many images should one evaluation forward pass take? ResNet-32 in eval mode, per image, by pass size.

drolt.speed.eval_forward runs an evaluation chunk (eval_batch_size images) in passes of CPU_FORWARD_ROWS on a
CPU and in one pass on a GPU; this script measures why. Figures are medians over --repeats, each over the same
--images random images, with the ratio against passes of 1000 (the default eval_batch_size) from the same run.

    PYTHONPATH=. python3 -m benchmarks.eval_rows --device cpu
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import device_name, resolve_device, sync
from drolt.model import resnet32

ROWS = (1000, 500, 256, 128, 64, 32)


@torch.no_grad()
def seconds_per_image(model: torch.nn.Module, x: torch.Tensor, rows: int) -> float:
    """Returns the seconds per image of evaluating `x` in forward passes of `rows` images."""
    sync(x.device)
    t0 = time.perf_counter()
    for part in torch.split(x, rows):
        model(part)
    sync(x.device)
    return (time.perf_counter() - t0) / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = resnet32(10).to(device).eval()
    x = torch.randn(args.images, 3, 32, 32, device=device)
    seconds_per_image(model, x[:max(ROWS)], max(ROWS))  # warm-up: allocator, kernels
    # interleaved, so drifts in machine load hit every size alike
    runs: dict[int, list[float]] = {rows: [] for rows in ROWS}
    for _ in range(args.repeats):
        for rows in ROWS:
            runs[rows].append(seconds_per_image(model, x, rows))
    print(f"device: {device_name(device)} | torch {torch.__version__} | {args.images} images, median of "
          f"{args.repeats}")
    print(f"{'rows per pass':>14}{'ms/image':>10}{'vs 1000':>9}")
    base = statistics.median(runs[1000])
    for rows in ROWS:
        median = statistics.median(runs[rows])
        print(f"{rows:>14}{median * 1000:>10.2f}{base / median:>8.2f}x")


if __name__ == "__main__":
    main()

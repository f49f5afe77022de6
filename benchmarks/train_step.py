"""How fast can one ResNet-32 training step go? Eager vs cudnn autotuning vs torch.compile modes.

The project's loops are launch-bound on a big GPU (ResNet-32, batch 128): this script times the bare
training step (forward, CE loss, backward, SGD step) on pre-made batches under each variant, so the next
speed step is chosen from measurements. Ratios are against eager fp32 measured in the same run.

    PYTHONPATH=. python3 -m benchmarks.train_step --device cuda --steps 200
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from drolt import speed
from drolt.model import resnet32

VARIANTS = {  # name: (cudnn.benchmark, channels_last, precision, compile mode or None)
    "eager fp32": (False, False, "fp32", None),
    "eager fp32 cudnn.benchmark": (True, False, "fp32", None),
    "compile default": (True, False, "fp32", "default"),
    "compile reduce-overhead (CUDA graphs)": (True, False, "fp32", "reduce-overhead"),
    "compile reduce-overhead, channels-last bf16": (True, True, "bf16", "reduce-overhead"),
}


def time_variant(device: torch.device, batch: int, steps: int, benchmark: bool, channels_last: bool,
                 precision: str, mode: str | None) -> tuple[float, float]:
    """Returns (images/s, seconds spent before timing: warm-up and compilation)."""
    torch.backends.cudnn.benchmark = benchmark
    torch.manual_seed(0)
    model = resnet32(10).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net = torch.compile(model, mode=mode) if mode else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    x = speed.model_input(torch.randn(batch, 3, 32, 32, device=device), channels_last)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        with speed.autocast(device, precision):
            _, logits = net(x)
            loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    for _ in range(10):  # compilation and CUDA-graph capture happen here
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0), warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"train step: ResNet-32, batch {args.batch}, {args.steps} timed steps | {name} | torch {torch.__version__}")
    print(f"{'variant':<46} {'images/s':>10} {'vs eager':>9} {'warm-up s':>10}")
    base = None
    for variant in args.variants:
        try:
            rate, warm = time_variant(device, args.batch, args.steps, *VARIANTS[variant])
        except Exception as err:  # a variant this torch/device cannot run is reported, the others still are
            print(f"{variant:<46} {'FAILED':>10}  {type(err).__name__}: {str(err)[:80]}")
            continue
        base = base or rate
        print(f"{variant:<46} {rate:>10.0f} {rate / base:>8.2f}x {warm:>10.1f}", flush=True)


if __name__ == "__main__":
    main()

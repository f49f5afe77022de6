"""How many ATen ops each part of a training step dispatches: on a GPU each is a kernel launch and some
microseconds of CPU time, so a part with hundreds of them is launch-bound however small its tensors are.

    PYTHONPATH=. python3 -m benchmarks.op_counts

Counts (CPU, eager; the same ops run on a GPU) for one batch of 128: the stage-1 and stage-2 losses with
their backward, the SGD step, and the stage-1 and stage-2 augmentation per batch (augmented 8 batches at a
time, as `augment_batches` does by default; stage 2's also 32 at a time). With `compile_mode:
reduce-overhead` the model's forward and backward are one CUDA-graph replay each, so these parts are what
the CPU still dispatches op by op. With `compile_loss` the stage-2 loss runs as a few fused kernels plus the
ops counted here; with `graph_augment` the augmentation is one CUDA-graph replay per chunk plus its random
draws (counted here) and the copies in and out.
"""
from __future__ import annotations

import argparse
from typing import Callable

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from drolt import speed
from drolt.augment import apply_draws, concat_draws, draw
from drolt.model import resnet32
from drolt.stage2 import feature_losses

BATCH, CHUNK, WIDE_CHUNK = 128, 8, 32
# Ops that only make views or allocate: they cost dispatch time but launch no kernel on a GPU.
NO_KERNEL = {"as_strided", "view", "reshape", "_reshape_alias", "select", "slice", "unsqueeze", "squeeze", "expand",
             "empty", "empty_strided", "empty_like", "resize_", "t", "transpose", "permute", "detach", "alias",
             "unbind", "split", "split_with_sizes", "narrow", "lift_fresh", "unsafe_view", "_unsafe_view", "to",
             "_to_copy", "contiguous", "expand_as", "view_as", "flatten", "numpy_T", "result_type"}


def aten_ops(fn: Callable[[], object]) -> tuple[int, int]:
    """Returns (ATen ops, of which compute ops) one call of `fn` dispatches (after one warm-up call).

    Compute ops are those other than views and allocations (`to` and `_to_copy` are counted by the
    `copy_` they call when they convert)."""
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts = {e.key[6:]: e.count for e in prof.key_averages() if e.key.startswith("aten::")}
    return sum(counts.values()), sum(c for name, c in counts.items() if name not in NO_KERNEL)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # no options; --help says what it does
    torch.manual_seed(0)
    model = resnet32(10)
    eps = torch.nn.Parameter(torch.ones(10))
    optimizer = torch.optim.SGD([*model.parameters(), eps], lr=0.01, momentum=0.9, weight_decay=1e-4)
    z, logits = model(torch.randn(BATCH, 3, 32, 32))
    z, logits = z.detach().requires_grad_(), logits.detach().requires_grad_()
    y = torch.randint(0, 10, (BATCH,))
    centroids, weights = torch.randn(10, 64), torch.rand(10)
    images = torch.randint(0, 256, (BATCH * WIDE_CHUNK, 3, 32, 32), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)

    def stage2_loss(fn: Callable) -> Callable[[], object]:
        return lambda: fn(z, logits, y, centroids, eps, weights, 1.0, "faithful", 1.0, 1.0)[0].backward()

    def draws(chunk: int, stage2: bool = True) -> Callable[[], object]:
        return lambda: concat_draws([draw(BATCH, gen, images.device, stage2, stage2) for _ in range(chunk)])

    def augment(stage2: bool, chunk: int = CHUNK) -> Callable[[], object]:
        return lambda: apply_draws(images[:BATCH * chunk], draws(chunk, stage2)())

    parts = {  # name: (one call, training batches it serves)
        "stage-1 loss, forward + backward": (lambda: F.cross_entropy(logits, y).backward(), 1),
        "stage-2 loss (weighted CE + robust), forward + backward": (stage2_loss(feature_losses), 1),
        "stage-2 loss with compile_loss (ops outside the fused kernels)":
            (stage2_loss(speed.compiled(feature_losses)), 1),
        "SGD step (momentum, weight decay)": (optimizer.step, 1),
        "stage-1 augmentation, per batch": (augment(False), CHUNK),
        "stage-2 augmentation (crop, flip, AutoAugment, Cutout), per batch": (augment(True), CHUNK),
        f"stage-2 augmentation, per batch, with augment_batches: {WIDE_CHUNK}":
            (augment(True, WIDE_CHUNK), WIDE_CHUNK),
        "stage-2 random draws alone, per batch (with graph_augment, all that runs outside its CUDA graph "
        "besides 7 copies in and 1 out per call)": (draws(CHUNK), CHUNK),
        f"the same with augment_batches: {WIDE_CHUNK}": (draws(WIDE_CHUNK), WIDE_CHUNK),
    }
    print(f"ATen ops dispatched per training step of {BATCH} images (CPU eager); compute ops: those other than "
          "views and allocations, each a kernel launch on a GPU")
    print(f"{'all':>6}{'compute':>9}  part")
    for name, (fn, batches) in parts.items():
        total, compute = aten_ops(fn)
        print(f"{total / batches:>6.0f}{compute / batches:>9.0f}  {name}")


if __name__ == "__main__":
    main()

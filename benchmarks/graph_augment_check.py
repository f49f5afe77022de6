"""Does `graph_augment` give the plain augmentation's images on a GPU, beside a model in CUDA graphs?

    PYTHONPATH=. python3 -m benchmarks.graph_augment_check --device cuda

The CPU tests check the sync-free augmentation against the grouped one, but CUDA graphs exist only on a GPU.
This script augments chunks as stage 2 does (training chunks of batch_size x augment_batches images,
centroid-bank chunks of eval_batch_size, and a short last chunk, which runs eagerly) with graph_augment's
augmenter and with the plain `apply_draws`, from the same draws, for a few rounds, with training steps of a
ResNet-32 under torch.compile reduce-overhead and bf16 autocast in between. It compares the images bit for
bit, prints the milliseconds per chunk of both (round 0's graph column includes the recording; on a CPU,
where nothing is recorded, both columns are the grouped path), the GPU memory the recordings hold, and exits
with status 1 on any difference. Records of whole runs are not compared here: on a GPU two plain runs
already differ in their last bits (atomic adds).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.common import device_name, resolve_device, sync
from drolt import speed
from drolt.augment import apply_draws, draw
from drolt.config import Stage2Config
from drolt.model import resnet32
from drolt.training import augment_generator, augmenter


def timed(fn: Callable[[], Tensor], device: torch.device) -> tuple[Tensor, float]:
    """Returns fn's result and the milliseconds it took, its queued GPU work included."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, (time.perf_counter() - t0) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    device = resolve_device(args.device)
    cfg = Stage2Config(graph_augment=True)  # the defaults: batch 128, 8 batches per chunk, bank chunks of 1000
    sizes = (cfg.batch_size * cfg.augment_batches, cfg.eval_batch_size)
    augment = augmenter(cfg, sizes)
    gen = augment_generator(device, 0)
    images = torch.randint(0, 256, (5000, 3, 32, 32), dtype=torch.uint8, device=device, generator=gen)
    model = resnet32(10).to(device, memory_format=torch.channels_last)
    net = speed.compiled(model, "reduce-overhead", sizes=(cfg.batch_size,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    print(f"graph_augment check | {device_name(device)} | torch {torch.__version__}")
    print(f"{'round':>5}{'chunk':>7}{'same images':>13}{'graph ms':>10}{'plain ms':>10}{'plain/graph':>13}")
    differences = 0
    reserved = torch.cuda.memory_reserved(device) if device.type == "cuda" else 0
    for round_ in range(args.rounds):
        for n in (*sizes, 300):  # 300: a short last chunk, not recorded
            x = images[torch.randint(0, len(images), (n,), device=device, generator=gen)]
            d = draw(n, gen, device, autoaugment=True, use_cutout=True)
            graphed, graph_ms = timed(lambda: augment(x, d), device)
            plain, plain_ms = timed(lambda: apply_draws(x, d), device)
            same = torch.equal(graphed, plain)
            differences += not same
            print(f"{round_:>5}{n:>7}{str(same):>13}{graph_ms:>10.2f}{plain_ms:>10.2f}{plain_ms / graph_ms:>12.2f}x",
                  flush=True)
            # a training step whose CUDA graphs replay between the augmentation's, as in a stage-2 epoch
            batch = graphed[:cfg.batch_size].contiguous(memory_format=torch.channels_last)
            with speed.autocast(device, "bf16"):
                _, logits = net(batch)
                loss = F.cross_entropy(logits, torch.zeros(cfg.batch_size, dtype=torch.long, device=device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    if device.type == "cuda":  # the model's share included: its weights, optimizer state and CUDA graphs
        grown = (torch.cuda.memory_reserved(device) - reserved) / 2**20
        print(f"GPU memory reserved during the rounds: {grown:.0f} MiB, peak allocated "
              f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")
    print("graph_augment gives the plain images" if not differences else f"{differences} chunks DIFFER")
    sys.exit(1 if differences else 0)


if __name__ == "__main__":
    main()

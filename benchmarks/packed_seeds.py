"""Would trials packed into one model reach the packing target? K seeds of ResNet-32 trained as one.

Processes sharing a GPU time-slice: with CUDA graphs one stage-1 process keeps an H100 busy about 73% of
the time, so more processes add at most 1.36x (gpu_packing.py). A training step of ResNet-32 at batch 128
is a few hundred small kernels, each far from filling the GPU. Packing K seeds into one model makes every
kernel K times wider instead of launching K times as many: each convolution becomes a grouped convolution
(groups=K), each BatchNorm normalises K*C channels (statistics are per channel, hence per seed, as
before), the classifier a batched matmul. Each seed keeps its own weights, batches and optimizer state:
the loss is the sum of the seeds' losses, so each seed's gradient is its own, and SGD (momentum, weight
decay) is elementwise, so one optimizer over the packed parameters is K optimizers. The packed model is
the project's own, `drolt.packed.PackedResNet` (the one `train_stage1_seeds` trains), used here for every
K, 1 included (the harness trains one seed unpacked; packed_epochs.py times that).

The script first checks that claim (two SGD steps of the packed model against K separate models, in
float64, max abs differences printed), then times the training step (forward, CE, backward, SGD) on
pre-made batches for K = 1, 2, 4, 8 (`--counts`) under each mode, with ratios against K = 1 of the same
mode, measured in the same run. Modes: eager; graph (CUDA: the whole step, optimizer included, recorded as
one CUDA graph with `speed.record_graph`); compile (torch.compile reduce-overhead of the model, the
project's current per-trial setting).

    PYTHONPATH=. python3 -m benchmarks.packed_seeds --device cuda --channels-last --precision bf16
"""
from __future__ import annotations

import argparse
import functools
import gc
import statistics
import time
import traceback
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.common import device_name, resolve_device, sync
from drolt import speed
from drolt.model import ResNetCifar, resnet32
from drolt.packed import PackedResNet, pack, split_state

CLASSES = 10


def seeded_models(k: int, num_classes: int = CLASSES) -> list[ResNetCifar]:
    """Returns K ResNet-32s initialised as `train_stage1` would with seeds 0..K-1."""
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        models.append(resnet32(num_classes))
    return models


def check_packing(device: torch.device, k: int = 3, batch: int = 16) -> str:
    """Returns the max abs differences between drolt's packed model and K separate models after two SGD steps
    (features and logits in train and eval mode; each seed's weights and every BatchNorm's running statistics,
    split from the packed state dict); raises if they disagree.

    In float64, where the order of a convolution's sums barely matters: in float32 the separate models'
    own convolution algorithms differ from float64 by more (about 1e-4 after one step) than the packed
    model does, which would hide a packing mistake of that size. Each seed's BatchNorms get their own random
    affine and running statistics first: fresh ones are the same for every seed, so a BatchNorm packed in
    the wrong seed order would go unseen."""
    models = [m.to(device, torch.float64) for m in seeded_models(k)]
    gen = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for bn in (mod for m in models for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)):
            for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                t.copy_(torch.rand(t.shape, device=device, generator=gen, dtype=t.dtype) + 0.5)
    packed = PackedResNet(models)
    xs = torch.randn(3, k, batch, 3, 32, 32, device=device, generator=gen, dtype=torch.float64)
    ys = torch.randint(0, CLASSES, (3, k, batch), device=device, generator=gen)
    sgd = dict(lr=0.1, momentum=0.9, weight_decay=2e-4)
    opts = [torch.optim.SGD(m.parameters(), **sgd) for m in models]
    packed_opt = torch.optim.SGD(packed.parameters(), **sgd)
    for x, y in zip(xs[:2], ys[:2]):  # two steps: the second uses the momentum buffers
        for m, opt, xi, yi in zip(models, opts, x, y):
            opt.zero_grad()
            F.cross_entropy(m(xi)[1], yi).backward()
            opt.step()
        packed_opt.zero_grad()
        _, logits = packed(pack(x))
        sum(F.cross_entropy(logits[i], y[i]) for i in range(k)).backward()
        packed_opt.step()
    diffs = {}
    with torch.no_grad():
        for mode in ("train", "eval"):
            for net in (*models, packed):
                net.train(mode == "train")
            separate = [m(x) for m, x in zip(models, xs[2])]
            z, logits = packed(pack(xs[2]))
            diffs[f"{mode} features"] = (z - torch.stack([s[0] for s in separate])).abs().max().item()
            diffs[f"{mode} logits"] = (logits - torch.stack([s[1] for s in separate])).abs().max().item()
    # The packed state dict holds each seed's under a ResNet-32's keys (`split_state`, as checkpoints take it):
    # the weights, heads included, and every BatchNorm's running statistics against the separate models'.
    params = {name for name, _ in models[0].named_parameters()}
    weights, running = [], []
    for m, state in zip(models, split_state(packed.state_dict(), packed.cosine_heads)):
        if state.keys() != m.state_dict().keys():
            odd = sorted(state.keys() ^ m.state_dict().keys())
            raise RuntimeError(f"the packed state dict's keys are not a ResNet-32's; these differ: {odd}")
        for key, value in m.state_dict().items():
            if not key.endswith("num_batches_tracked"):
                (weights if key in params else running).append((state[key] - value).abs().max().item())
    diffs["weights"], diffs["running statistics"] = max(weights), max(running)
    if max(diffs.values()) > 1e-9:
        raise RuntimeError(f"the packed model does not compute what {k} separate models compute: {diffs}")
    return ", ".join(f"{name} {d:.1e}" for name, d in diffs.items())


def training_step(k: int, device: torch.device, batch: int, mode: str, channels_last: bool,
                  precision: str) -> Callable[[], None]:
    """Returns a function running one training step of K packed seeds on fixed batches (warmed up, and run
    once more, so a failure shows here rather than in the timing)."""
    torch.backends.cudnn.benchmark = True
    model = PackedResNet(seeded_models(k)).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net = speed.compiled(model, "reduce-overhead") if mode == "compile" else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    x = speed.model_input(pack(torch.randn(k, batch, 3, 32, 32, device=device)), channels_last)
    y = torch.randint(0, CLASSES, (k, batch), device=device)

    def step(x: Tensor, y: Tensor) -> Tensor:
        with speed.autocast(device, precision, cache=mode != "graph"):
            _, logits = net(x)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / batch  # sum of K means
        opt.zero_grad(set_to_none=True)  # inside a recording: the gradients come from the graph's own memory
        loss.backward()
        opt.step()
        return loss

    if mode != "graph":
        for _ in range(5):  # cudnn autotuning, compilation and CUDA-graph recording happen here
            step(x, y)
        sync(device)
        return functools.partial(step, x, y)
    inputs, _, graph, _ = speed.record_graph(step, (x, y))  # the whole step, optimizer included
    replay = functools.partial(_replay, graph, (model, opt, inputs))
    replay()
    sync(device)
    return replay


def _replay(graph: torch.cuda.CUDAGraph, keep_alive: tuple) -> None:
    """Replays `graph`; `keep_alive` holds the model, optimizer and batches whose memory the graph uses."""
    graph.replay()


def time_steps(step: Callable[[], None], device: torch.device, steps: int, repeats: int) -> float:
    """Returns the median seconds per step over `repeats` runs of `steps` steps."""
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="how many seeds to pack into one model, a row each (ratios are against 1)")
    parser.add_argument("--modes", nargs="+", choices=("eager", "graph", "compile"),
                        help="default: graph and compile on CUDA, eager on a CPU")
    parser.add_argument("--batch", type=int, default=128, help="images per seed per step")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    device = resolve_device(args.device)
    modes = args.modes or (["graph", "compile"] if device.type == "cuda" else ["eager"])
    if "graph" in modes and device.type != "cuda":
        raise SystemExit("--modes graph captures CUDA graphs: use --device cuda, or the eager/compile modes")
    counts = sorted(set(args.counts) | {1})  # the baseline of the ratios is always measured
    layout = "channels-last" if args.channels_last else "contiguous"
    print(f"packed seeds: ResNet-32, batch {args.batch} per seed, {args.precision}, {layout} | "
          f"{device_name(device)} | torch {torch.__version__}")
    print(f"packed = separate models after two SGD steps, float64 (max abs diff): {check_packing(device)}")
    print(f"{'mode':<8}{'seeds':>6}{'images/s':>11}{'per seed':>10}{'vs 1 seed':>10}{'ms/step':>9}{'peak MiB':>10}"
          f"{'warm-up s':>10}")
    for mode in modes:
        base = None
        for k in counts:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            try:
                step = training_step(k, device, args.batch, mode, args.channels_last, args.precision)
            except Exception as err:  # reported with its cause (a failed capture chains it), the run goes on
                print(f"{mode:<8}{k:>6}  FAILED {type(err).__name__}: {err}", flush=True)
                traceback.print_exc()
                if mode == "graph":  # a failed capture can leave the stream and allocator unusable
                    return
                break
            warm = time.perf_counter() - t0
            seconds = time_steps(step, device, args.steps, args.repeats)
            rate = k * args.batch / seconds
            base = base or rate
            peak = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if device.type == "cuda" else "-"
            print(f"{mode:<8}{k:>6}{rate:>11.0f}{rate / k:>10.0f}{rate / base:>9.2f}x{seconds * 1e3:>9.2f}"
                  f"{peak:>10}{warm:>10.1f}", flush=True)
            del step  # the next count's peak memory is its own
            gc.collect()
            torch._dynamo.reset()


if __name__ == "__main__":
    main()

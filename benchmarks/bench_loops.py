"""Side by side, one run, one machine, one data set: a stage-1 and a stage-2 epoch of three loops.

    PYTHONPATH=. python3 -m benchmarks.bench_loops --device auto --batches 6 --repeats 3

(a) ref      benchmarks/reference_style.py: DataLoader + per-image PIL augmentation; stage 2's three passes
             with the centroids re-averaged from the bank by a Python loop over classes at every batch.
(b) project  `drolt.stage1.train_stage1` / `drolt.stage2.train_stage2` for one epoch (stage 2: a feature
             epoch), the whole public function timed: set-up, bank, training, evaluation, epoch record.
(c) compute  the training steps and evaluation forward passes that (b) contains, alone, on pre-made,
             pre-augmented float batches already on the device (same batch sizes, losses, speed settings:
             the step is (b)'s, replayed from a CUDA graph with graph_step, with fused SGD with fused_sgd;
             the evaluation chunks the training set and the test set apart, as (b) does).

An epoch is shortened by running it on a proportionally smaller data set, so every loop does the same
work as in a full epoch, scaled by s, and the evaluation shrinks with the training:
  stage 1: M = --batches x 128 of the n LT images (s = M / n) and s of the test set; the project's
           evaluation embeds the M images (NCM bank) and the test subset, the reference's the test subset.
  stage 2: s = M / P with P = max n_c * C (the stream pass, 50,000 for CIFAR-LT): each class keeps
           round(s n_c) images (at least 1), the test set s of its images; the class-aware stream pass is
           then max round(s n_c) * C ~ M images, made twice (bank pass, training pass). Class weights and
           shot splits use the full counts. (a) re-averages its centroids from a full P-row bank (the rows
           of its short bank pass repeated), since the reference averages 50,000 rows at every batch.
"images/s" counts stream images (stage 1: M; stage 2: bank + training pass) per second of the whole
epoch, evaluation included, so a full epoch takes n / images/s (stage 1) or 2P / images/s (stage 2).
Figures are medians over --repeats, every loop starting from the same weights, after --warmup untimed
runs. The loops do the same work, so --set takes speed settings only (benchmarks.common.SPEED_KEYS).
Peak memory is what a loop adds at its peak to the memory held when it starts (once what earlier loops
freed is given back): CUDA torch.cuda.max_memory_allocated; CPU the summed PSS of this process and its
DataLoader workers, sampled every 250 ms.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from benchmarks.common import (SPEED_KEYS, device_name, parse_overrides, resolve_device, shortened, sync,
                               synthetic_long_tail)
from benchmarks.reference_style import ReferenceLoop
from drolt import speed
from drolt.augment import stage1_train_transform, stage2_train_transform, test_transform
from drolt.config import Stage1Config, Stage2Config
from drolt.data import LongTailData, load_long_tail
from drolt.losses import class_weights
from drolt.model import resnet32
from drolt.sampling import make_sampler
from drolt.stage1 import train_stage1
from drolt.stage2 import feature_losses, train_stage2
from drolt.training import augment_generator

LOOPS = ("ref", "project", "compute")
Run = Callable[[], dict]  # one timed epoch; returns seconds per pass

# ---------------------------------------------------------------------------------------------------------
# Data


def stream_images(data: LongTailData, stage: int) -> int:
    """Returns the stream images of one epoch: stage 1 the training set, stage 2 two class-aware passes."""
    if stage == 1:
        return len(data.train_labels)
    return 2 * int(torch.bincount(data.train_labels).max()) * data.num_classes


# ---------------------------------------------------------------------------------------------------------
# Measuring


def _tree_pss_mib(root: int) -> float:
    """Returns the summed PSS (MiB) of process `root` and all its descendants, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    total_kib, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue  # a worker that just exited
        total_kib += next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
    return total_kib / 1024


def _give_back_freed_memory() -> None:
    """Frees what earlier loops left unreachable and returns glibc's freed heap pages to the system, so that a
    loop's memory does not depend on which loops ran before it."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: its freed pages stay in the process, as they would


class PeakMemory:
    """Context manager: `.mib` is the most memory the block held above what was held at its start (CUDA
    allocator, or CPU tree PSS)."""

    def __init__(self, device: torch.device, period_s: float = 0.25):
        # Each sample reads /proc for ~5 ms of kernel time; every 250 ms keeps that near 2% of one core.
        self.device, self.period_s, self.mib = device, period_s, float("nan")
        self._start = self._peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        _give_back_freed_memory()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device) / 2**20
        elif Path("/proc/self/smaps_rollup").exists():
            self._start = self._peak = _tree_pss_mib(os.getpid())
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.period_s):
            self._peak = max(self._peak, _tree_pss_mib(os.getpid()))

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20 - self._start
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, _tree_pss_mib(os.getpid()))  # a block shorter than one period
            self.mib = self._peak - self._start


def timed(run: Run, device: torch.device) -> dict:
    """Returns {"seconds", "passes", "peak_mib"} of one call of `run`."""
    sync(device)
    with PeakMemory(device) as memory:
        t0 = time.perf_counter()
        passes = run()
        sync(device)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "passes": passes, "peak_mib": memory.mib}


class PassClock:
    """Splits a timed run into named passes (syncing the device at each boundary)."""

    def __init__(self, device: torch.device):
        self.device, self.passes, self.t0 = device, {}, time.perf_counter()

    def lap(self, name: str) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.passes[name] = now - self.t0
        self.t0 = now


# ---------------------------------------------------------------------------------------------------------
# The loops, each as prepare() -> run; preparation (model, optimizer, pre-made batches) is not timed


def fresh_model(classes: int, init: dict, device: torch.device) -> nn.Module:
    """Returns a ResNet-32 on `device` holding the weights `init`."""
    model = resnet32(classes).to(device)
    model.load_state_dict(init)
    return model


def stage1_sgd(model: nn.Module, cfg: Stage1Config, fused: bool = False) -> torch.optim.Optimizer:
    """Returns stage 1's optimizer at its first-epoch learning rate (`fused`: as cfg.fused_sgd has it)."""
    return speed.sgd(model.parameters(), cfg.lr / cfg.warmup_epochs, cfg.momentum, cfg.weight_decay, fused)


class Stage2Parts:
    """Stage 2's model, radii and feature optimizer, built as `train_stage2` builds them (`fused`: SGD as
    cfg.fused_sgd has it; the reference-style loop keeps the plain one)."""

    def __init__(self, data: LongTailData, init: dict, cfg: Stage2Config, device: torch.device,
                 fused: bool = False):
        self.model = fresh_model(data.num_classes, init, device)
        self.eps = nn.Parameter(torch.full((data.num_classes,), cfg.eps_init, device=device))
        backbone = [p for name, p in self.model.named_parameters() if not name.startswith("fc.")]
        self.optimizer = speed.sgd(backbone + [self.eps], cfg.feature_lr, cfg.momentum, cfg.weight_decay, fused)
        self.ce_weights = (None if cfg.ce_weights == "none"
                           else class_weights(data.class_counts, cfg.ce_weights).to(device))


def ref_stage1(ref: ReferenceLoop, data: LongTailData, cfg: Stage1Config, init: dict, device: torch.device) -> Run:
    model = fresh_model(data.num_classes, init, device)
    optimizer = stage1_sgd(model, cfg)
    return lambda: ref.stage1_epoch(model, optimizer)


def ref_stage2(ref: ReferenceLoop, data: LongTailData, cfg: Stage2Config, init: dict, device: torch.device) -> Run:
    p = Stage2Parts(data, init, cfg, device)
    return lambda: ref.stage2_epoch(p.model, p.eps, p.optimizer, p.ce_weights, cfg)


def project_stage1(data: LongTailData, cfg: Stage1Config, device: torch.device) -> Run:
    one_epoch = dataclasses.replace(cfg, epochs=1)
    on_device = data.to(device)

    def run() -> dict:
        record = train_stage1(one_epoch, on_device, device).last  # its init from cfg.seed: the same weights
        train = len(data.train_labels) / record["train_images_per_s"]
        return {"train": train, "eval": record["epoch_time"] - train}
    return run


def project_stage2(data: LongTailData, cfg: Stage2Config, init: dict, device: torch.device) -> Run:
    one_epoch = dataclasses.replace(cfg, epochs=1, classifier_epochs=0)
    on_device = data.to(device)

    def run() -> dict:
        record = train_stage2(one_epoch, on_device, init, device).last
        stream = stream_images(data, 2) / record["train_images_per_s"]
        return {"bank+train": stream, "eval": record["epoch_time"] - stream}
    return run


def _forwards(net: Callable, x: Tensor, batch_size: int, cfg) -> None:
    with torch.no_grad():
        for chunk in torch.split(x, batch_size):
            with speed.autocast(x.device, cfg.precision):
                speed.eval_forward(net, speed.model_input(chunk, cfg.channels_last))


def eval_sets(data: LongTailData, device: torch.device) -> tuple[Tensor, Tensor]:
    """Returns the evaluation's inputs as (b) makes them: the training set (NCM bank) and the test set, each
    chunked on its own."""
    return test_transform(data.train_images.to(device)), test_transform(data.test_images.to(device))


def training_step(model: nn.Module, net: Callable, cfg: Stage1Config | Stage2Config,
                  optimizer: torch.optim.Optimizer, loss_of: Callable[[Tensor, Tensor, Tensor], Tensor],
                  after: Callable[[], None] = lambda: None) -> Callable[[Tensor, Tensor], Tensor]:
    """Returns the training step (b) takes on a batch (x, y): forward, `loss_of(z, logits, y)`, backward, SGD
    and `after`, replayed from one CUDA graph for full batches with graph_step, as drolt.stage1/stage2 do."""
    step_net = speed.step_model(model, cfg)

    def step(x: Tensor, y: Tensor) -> Tensor:
        with speed.autocast(x.device, cfg.precision, cache=not cfg.graph_step):
            z, logits = (step_net if cfg.graph_step else net)(x)
            loss = loss_of(z, logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        after()
        return loss.detach()
    return speed.graphed(step, sizes=(cfg.batch_size,) if cfg.graph_step else (), keep_one=True)


def compute_stage1(data: LongTailData, cfg: Stage1Config, init: dict, device: torch.device) -> Run:
    model = fresh_model(data.num_classes, init, device)
    net = speed.prepare(model, cfg)
    step = training_step(model, net, cfg, stage1_sgd(model, cfg, cfg.fused_sgd),
                         lambda z, logits, y: F.cross_entropy(logits, y))
    x = stage1_train_transform(data.train_images.to(device), augment_generator(device, cfg.seed))
    batches = list(zip(torch.split(x, cfg.batch_size), torch.split(data.train_labels.to(device), cfg.batch_size)))
    bank_x, test_x = eval_sets(data, device)

    def run() -> dict:
        clock = PassClock(device)
        model.train()
        for xb, yb in batches:
            step(speed.model_input(xb, cfg.channels_last), yb)
        clock.lap("train")
        model.eval()
        for x_eval in (bank_x, test_x):
            _forwards(net, x_eval, cfg.eval_batch_size, cfg)
        clock.lap("eval")
        return clock.passes
    return run


def compute_stage2(data: LongTailData, cfg: Stage2Config, init: dict, device: torch.device) -> Run:
    p = Stage2Parts(data, init, cfg, device, cfg.fused_sgd)
    net = speed.prepare(p.model, cfg)
    loss_fn = speed.compiled(feature_losses, sizes=(cfg.batch_size,)) if cfg.compile_loss else feature_losses
    centroids = torch.rand(data.num_classes, 64, device=device)  # fixed: their values do not change the cost

    def clamp_radii() -> None:
        if cfg.eps_nonneg:
            with torch.no_grad():
                p.eps.clamp_(min=0)
    step = training_step(p.model, net, cfg, p.optimizer,
                         lambda z, logits, y: loss_fn(z, logits, y, centroids, p.eps, p.ce_weights, cfg.temperature,
                                                      cfg.mode, cfg.ce_weight, cfg.robust_weight)[0], clamp_radii)
    sampler = make_sampler(cfg.sampler, data.train_labels, data.num_classes, cfg.seed)
    stream = sampler.next_pass()
    x = stage2_train_transform(data.train_images[stream].to(device), augment_generator(device, cfg.seed),
                               cfg.autoaugment, cfg.cutout)
    y = data.train_labels[stream].to(device)
    batches = list(zip(torch.split(x, cfg.batch_size), torch.split(y, cfg.batch_size)))
    bank_x, test_x = eval_sets(data, device)

    def run() -> dict:
        clock = PassClock(device)
        p.model.eval()
        _forwards(net, x, cfg.eval_batch_size, cfg)  # the bank pass sees one pass of augmented stream images
        clock.lap("bank")
        p.model.train()
        p.model.fc.requires_grad_(False)
        for xb, yb in batches:
            step(speed.model_input(xb, cfg.channels_last), yb)
        p.model.fc.requires_grad_(True)
        clock.lap("train")
        p.model.eval()
        for x_eval in (bank_x, test_x):
            _forwards(net, x_eval, cfg.eval_batch_size, cfg)
        clock.lap("eval")
        return clock.passes
    return run


# ---------------------------------------------------------------------------------------------------------
# Driver


def load_data(args: argparse.Namespace) -> LongTailData:
    """Returns the CIFAR copy under --data, or synthetic random images with the same class counts."""
    if args.data:
        return load_long_tail(args.dataset, args.data, args.rho)
    return synthetic_long_tail(args.dataset, args.rho)


def measure(args: argparse.Namespace) -> dict:
    """Runs every loop of the chosen stages --warmup + --repeats times; returns the raw results and context."""
    device = resolve_device(args.device)
    cfg1, cfg2 = parse_overrides(args.set, Stage1Config(), Stage2Config(), only=SPEED_KEYS)
    batch_size = {1: cfg1.batch_size, 2: cfg2.batch_size}
    full = load_data(args)
    try:
        data = {s: shortened(full, s, args.batches * batch_size[s]) for s in args.stages}  # only those timed
    except ValueError as error:
        raise SystemExit(str(error)) from None
    torch.manual_seed(cfg1.seed)
    init = resnet32(full.num_classes).state_dict()  # what train_stage1 starts from (seeded the same way)
    refs = {s: ReferenceLoop(data[s], device, batch_size[s], args.workers) for s in args.stages}
    prepare = {
        (1, "ref"): lambda: ref_stage1(refs[1], data[1], cfg1, init, device),
        (1, "project"): lambda: project_stage1(data[1], cfg1, device),
        (1, "compute"): lambda: compute_stage1(data[1], cfg1, init, device),
        (2, "ref"): lambda: ref_stage2(refs[2], data[2], cfg2, init, device),
        (2, "project"): lambda: project_stage2(data[2], cfg2, init, device),
        (2, "compute"): lambda: compute_stage2(data[2], cfg2, init, device),
    }
    runs: dict = {key: [] for key in prepare if key[0] in args.stages and key[1] in args.loops}
    failed: dict = {}
    for stage in args.stages:
        for r in range(args.warmup + args.repeats):
            for loop in args.loops:  # interleaved, so drifts in machine load hit every loop alike
                if (stage, loop) in failed:
                    continue
                try:
                    result = timed(prepare[(stage, loop)](), device)
                except RuntimeError as error:
                    if loop != "ref":
                        raise
                    # e.g. a DataLoader worker killed for want of shared memory (/dev/shm) in a container:
                    # report it and still measure the project's loop; its earlier runs are not a median of
                    # --repeats, so they are dropped.
                    failed[(stage, loop)] = f"{type(error).__name__}: {error}"[:300]
                    runs[(stage, loop)] = []
                    continue
                if r >= args.warmup:
                    runs[(stage, loop)].append(result)
    runs = {key: results for key, results in runs.items() if results}
    context = {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
               "torchvision": torchvision.__version__, "python": platform.python_version(),
               "workers": next(iter(refs.values())).workers, "data": full.source, "dataset": full.name, "rho": full.rho,
               "lt_images": len(full.train_labels), "pass_length": max(full.class_counts) * full.num_classes,
               "batches": args.batches, "repeats": args.repeats, "settings": args.set,
               "stream_images": {s: stream_images(data[s], s) for s in args.stages},
               "eval_images": {s: len(data[s].train_labels) + len(data[s].test_labels) for s in args.stages},
               "test_images": {s: len(data[s].test_labels) for s in args.stages},
               "failed": {f"stage {s} {loop}": why for (s, loop), why in failed.items()}}
    return {"context": context, "runs": runs}


def summarise(measured: dict) -> dict:
    """Returns per (stage, loop) medians: seconds, images/s, per-pass seconds, peak MiB, and the ratios."""
    ctx, table = measured["context"], {}
    for (stage, loop), results in measured["runs"].items():
        seconds = [r["seconds"] for r in results]
        table[(stage, loop)] = {
            "seconds": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds),
            "images_per_s": ctx["stream_images"][stage] / statistics.median(seconds),
            "passes": {k: statistics.median(r["passes"][k] for r in results) for k in results[0]["passes"]},
            "peak_mib": statistics.median(r["peak_mib"] for r in results)}
    nan = {"seconds": float("nan")}
    for stage in {s for s, loop in table if loop == "project"}:
        row = table[(stage, "project")]
        row["speedup_vs_ref"] = table.get((stage, "ref"), nan)["seconds"] / row["seconds"]
        row["time_vs_compute"] = row["seconds"] / table.get((stage, "compute"), nan)["seconds"]
    return table


def print_report(measured: dict, table: dict) -> None:
    ctx = measured["context"]
    settings = f" | --set {' '.join(ctx['settings'])}" if ctx["settings"] else ""
    print(f"device: {ctx['device']} | torch {ctx['torch']} torchvision {ctx['torchvision']} python {ctx['python']} "
          f"| ref DataLoader workers {ctx['workers']}{settings}")
    timed = {1: lambda: f"stage 1 {ctx['stream_images'][1]} train + {ctx['eval_images'][1]} eval images (ref: "
                        f"{ctx['test_images'][1]} test only)",
             2: lambda: f"stage 2 {ctx['stream_images'][2]} bank+train + {ctx['eval_images'][2]} eval images"}
    print(f"data: {ctx['dataset']} rho {ctx['rho']:g} ({ctx['data']}), {ctx['lt_images']} LT images, full stream "
          f"pass {ctx['pass_length']}; per epoch timed: {', '.join(timed[s]() for s in sorted(ctx['stream_images']))}"
          f"; median of {ctx['repeats']}")
    mem = "+GPU MiB" if ctx["device_type"] == "cuda" else "+PSS MiB"
    print(f"{'loop':<8}{'stage':>6}{'median s':>10}{'min-max s':>15}{'images/s':>10}{'b/a':>8}{'b/c':>8}"
          f"{mem:>9}  passes (median s)")
    for (stage, loop), row in sorted(table.items(), key=lambda kv: (kv[0][0], LOOPS.index(kv[0][1]))):
        ratios = (f"{row['speedup_vs_ref']:>7.2f}x{row['time_vs_compute']:>7.2f}x" if loop == "project"
                  else " " * 16)
        passes = " ".join(f"{k} {v:.3f}" for k, v in row["passes"].items())
        print(f"{loop:<8}{stage:>6}{row['seconds']:>10.3f}{row['min_s']:>8.3f}-{row['max_s']:<6.3f}"
              f"{row['images_per_s']:>10.0f}{ratios}{row['peak_mib']:>9.0f}  {passes}")
    print("b/a: (a) ref time / (b) project time, the speed-up. b/c: (b) project time / (c) compute time "
          f"(target <= 1.2). {mem}: the most memory a loop held above what was held when it started (median).")
    for what, why in ctx["failed"].items():
        print(f"FAILED {what}: {why}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--batches", type=int, default=6, help="training batches of 128 per stream pass (M / 128)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per loop; medians are reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per loop first")
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--loops", nargs="+", default=list(LOOPS), choices=LOOPS,
                        help="which loops to time (e.g. ref alone at full size: --loops ref --batches 390)")
    parser.add_argument("--data", default=None, help="folder holding cifar-10-batches-py (else synthetic data)")
    parser.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"])
    parser.add_argument("--rho", type=float, default=100.0)
    parser.add_argument("--workers", type=int, default=None, help="ref DataLoader workers (default: cores)")
    parser.add_argument("--set", action="append", default=[], metavar="stageN.KEY=VALUE",
                        help="a stage setting for (b) and (c), e.g. stage2.precision=bf16 (repeatable)")
    parser.add_argument("--json", default=None, help="write the results here (gpu_packing --loops-json reads it)")
    args = parser.parse_args(argv)
    if args.batches < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error(f"need --batches >= 1, --repeats >= 1, --warmup >= 0; got {args.batches}, {args.repeats}, "
                     f"{args.warmup}")
    measured = measure(args)
    table = summarise(measured)
    print_report(measured, table)
    out = {"context": measured["context"],
           "results": {f"stage{s}/{loop}": row for (s, loop), row in table.items()}}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()

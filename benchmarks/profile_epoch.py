"""Where a steady-state epoch's time goes: device busy time against wall time, host-side ops, syncs.

    PYTHONPATH=. python3 -m benchmarks.profile_epoch --device cuda --stage 2 --fraction 0.3 \\
        --set stage2.compile=true --set stage2.compile_mode=reduce-overhead ...

Runs three epochs of one stage through `train_stage1` / `train_stage2` (stage 2: feature epochs, from
freshly initialised weights) on synthetic CIFAR-10-LT-sized data: the first carries compilation and
CUDA-graph recording (a 100-200 epoch unit pays them once), the second is timed as it is, the third under
torch.profiler, which slows the host side. It prints

- both epochs' wall times and the time kernels kept the GPU busy in the profiled one, as a share of the
  unprofiled epoch's time: a loop that keeps the GPU busy most of the time is bound by its kernels, one
  that leaves it idle is bound by the host (Python, op dispatch, kernel launches) or by syncs;
- kernel launches, CUDA-graph replays, copies and host waits (calls and host time);
- the ops taking the most host time and, on a GPU, the most GPU time.

--fraction below 1 scales the data set down (every class in proportion) to keep the profile small; the
per-step picture stays the same.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import device_name, parse_overrides, resolve_device, scaled, sync, synthetic_long_tail
from drolt.config import Stage1Config, Stage2Config
from drolt.data import LongTailData
from drolt.model import resnet32
from drolt.stage1 import train_stage1
from drolt.stage2 import train_stage2

# Host-side calls that show launches, copies and waits (the host blocks in a sync until the GPU catches up).
# Kernels launch through the runtime (cudaLaunchKernel*, most of ATen) or the driver (cuLaunchKernel*,
# Triton kernels from inductor and some library kernels); a tensor read on the host is _local_scalar_dense.
HOST_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
              "cudaGraphLaunch", "cudaMemcpyAsync", "cudaStreamSynchronize", "cudaEventSynchronize",
              "cudaDeviceSynchronize", "aten::_local_scalar_dense")


def profiled_third_epoch(stage: int, data: LongTailData, cfg: Stage1Config | Stage2Config,
                         device: torch.device) -> tuple[profile, float, float]:
    """Returns the profiler holding the third epoch of `stage`, the second epoch's time (unprofiled) and
    the third's wall time (profiled), in seconds."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = profile(activities=activities)
    started, unprofiled = [], []

    def on_epoch(record: dict, state: dict) -> None:
        if record["epoch"] == 1:
            unprofiled.append(record["epoch_time"])
            sync(device)
            prof.start()
            started.append(time.perf_counter())

    if stage == 1:
        train_stage1(cfg, data, device, on_epoch=on_epoch)
    else:
        train_stage2(cfg, data, resnet32(data.num_classes).state_dict(), device, on_epoch=on_epoch)
    sync(device)
    wall = time.perf_counter() - started[0]
    prof.stop()
    return prof, unprofiled[0], wall


def report(prof: profile, unprofiled: float, wall: float, device: torch.device, rows: int) -> None:
    """Prints the busy time, the host-side calls and the top ops of the profiled epoch."""
    events = prof.key_averages()
    by_name = {e.key: e for e in events}
    if device.type == "cuda":
        # Each kernel's time is listed under the kernel and again under the op that launched it: count
        # device events only, as torch's own table totals do.
        busy = sum(e.self_device_time_total for e in events
                   if e.device_type == DeviceType.CUDA and not e.is_user_annotation) / 1e6
        print(f"epoch {unprofiled:.2f} s unprofiled, {wall:.2f} s profiled | GPU kernels {busy:.2f} s "
              f"({100 * busy / unprofiled:.0f}% of the unprofiled epoch)")
    else:
        print(f"epoch {unprofiled:.2f} s unprofiled, {wall:.2f} s profiled")
    print(f"{'host call':<28}{'calls':>9}{'host s':>9}")
    for name in HOST_CALLS:
        if name in by_name:
            e = by_name[name]
            print(f"{name:<28}{e.count:>9}{e.cpu_time_total / 1e6:>9.3f}")
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows))
    if device.type == "cuda":
        print(events.table(sort_by="self_device_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--stage", type=int, default=2, choices=[1, 2])
    parser.add_argument("--fraction", type=float, default=1.0, help="of the data, every class in proportion")
    parser.add_argument("--rows", type=int, default=15, help="ops shown per table")
    parser.add_argument("--set", action="append", default=[], metavar="stageN.KEY=VALUE")
    args = parser.parse_args()
    device = resolve_device(args.device)
    data = scaled(synthetic_long_tail("cifar10", 100.0), args.fraction).to(device)
    cfg1, cfg2 = parse_overrides(args.set, Stage1Config(), Stage2Config())
    # three epochs whatever --set says: warm-up, timed, profiled
    cfg1, cfg2 = replace(cfg1, epochs=3), replace(cfg2, epochs=3, classifier_epochs=0)
    print(f"profile: {device_name(device)} | torch {torch.__version__} | stage {args.stage}, third of three epochs, "
          f"{len(data.train_labels)} LT images | settings: {' '.join(args.set) or 'defaults'}")
    prof, unprofiled, wall = profiled_third_epoch(args.stage, data, cfg1 if args.stage == 1 else cfg2, device)
    report(prof, unprofiled, wall, device, args.rows)


if __name__ == "__main__":
    main()

"""How many trials one GPU should run at once: 1, 2, 4, 8 concurrent processes, as Ray packs them.

    PYTHONPATH=. python3 -m benchmarks.gpu_packing [--stage 2] [--seeds 3] [--loops-json loops.json]

For each count k, k processes each run the project's stage 1 (`drolt.stage1.train_stage1`, CE, batch 128),
or with --stage 2 its DRO-LT feature epochs (`drolt.stage2.train_stage2_seeds`, from fresh weights: the same
time), on synthetic CIFAR-10-LT-sized data (random uint8 images, the rho-100 class counts, 10k test images)
on the one GPU, as trials with `gpus: 1/k` would. Each process finishes one warm-up epoch, waits until all
are ready, then runs whole epochs (training and the per-epoch evaluation) for --window seconds; only the
epochs that end inside the window count, so every counted epoch ran alongside all k processes.
Aggregate images/s = sum over processes of (training images of counted epochs / their time); a stage-2
epoch's training images are its two passes over the class-aware stream (centroid bank and training).

--seeds K makes each process train seeds K*rank .. K*rank+K-1 packed into one model (`train_stage1_seeds`,
`train_stage2_seeds`: what the harness runs with the grid key `pack_seeds`; with --mixed, stage 1's CE and
LDAM-DRW in turn, as the paper grid packs a cell's stage 1, LDAM-DRW's class weights on from the start); a counted epoch
then counts K x its training images. Packed seeds make each kernel K times wider, which packing processes
alone cannot (K processes launch K times as many kernels instead). Compare runs with --seeds 1 and --seeds 3
by aggregate images/s.

Recommended trials per GPU: the count after which doubling adds less than 10% aggregate throughput.
For stage 1, a grid estimate (printed with its formula) combines the single-process stage-1 rates measured
here, the stage-2 epoch time measured by `bench_loops.py --json` (--loops-json; without it, a lower bound
from the stage-1 rates), and the packing gain at the recommended count; `grid_estimate.py` takes the
gains of both stages with steady epoch times instead.
Each process uses --threads CPU threads (the grid's `cpus` per trial). Without CUDA the script stops,
unless --allow-cpu (to test the script itself with tiny sizes).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import (available_cores, pack_units, parse_overrides, scaled, shortened,
                               synthetic_long_tail, train_images_per_epoch)
from benchmarks.grid_estimate import GRID, TEST_IMAGES, cell_sizes
from drolt.config import Stage1Config, Stage2Config
from drolt.model import resnet32
from drolt.stage1 import train_stage1_seeds
from drolt.stage2 import train_stage2_seeds

REPO = Path(__file__).resolve().parents[1]


class WindowClosed(Exception):
    """Raised from the epoch callback to stop training once the measuring window is over."""


class CountFailed(Exception):
    """A process count that could not be measured; the counts measured before it are still reported."""


class Window:
    """Epoch callback of a worker: warm-up epoch, wait for the common start, count epochs until the deadline."""

    def __init__(self, sync_dir: Path, rank: int, train_images: int, eval_images: int, seeds: int = 1):
        # images of one seed's epoch; a pack of `seeds` trains and evaluates each of them once per seed
        self.sync_dir, self.rank, self.seeds = sync_dir, rank, seeds
        self.train_images, self.eval_images = train_images, eval_images
        self.deadline: float | None = None
        self.start = 0.0
        self.ends: list[float] = []
        self.train_s: list[float] = []
        self.eval_s: list[float] = []

    def __call__(self, record: dict, state: dict) -> None:
        now = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process on the machine
        if self.deadline is None:
            (self.sync_dir / f"ready-{self.rank}").touch()
            go = self.sync_dir / "go"
            while not go.exists():
                time.sleep(0.005)
            self.deadline = float(go.read_text())
            self.start = time.monotonic()
            return
        if now >= self.deadline:
            raise WindowClosed
        self.ends.append(now)
        train = self.train_images / record["train_images_per_s"]  # a pack's record: one seed's images per s
        self.train_s.append(train)
        self.eval_s.append(record["epoch_time"] - train)

    def result(self) -> dict:
        """Returns this worker's counted epochs, throughput and rates."""
        if not self.ends:
            return {"rank": self.rank, "epochs": 0}
        seconds = self.ends[-1] - self.start
        train_images, eval_images = self.seeds * self.train_images, self.seeds * self.eval_images
        return {"rank": self.rank, "seeds": self.seeds, "epochs": len(self.ends), "seconds": seconds,
                "images_per_s": len(self.ends) * train_images / seconds,
                "train_images_per_s": train_images / statistics.median(self.train_s),
                "eval_images_per_s": eval_images / statistics.median(self.eval_s)}


def worker(args: argparse.Namespace) -> None:
    """One trial: epochs of a stage on synthetic data until the window closes; prints its result as JSON."""
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = synthetic_long_tail(args.dataset, args.rho, seed=args.rank)
    # stage 1 at one learning rate, as in a run's steady epochs (graph_step records anew for each rate)
    cfg1, cfg2 = parse_overrides(args.set, Stage1Config(seed=args.rank, epochs=10**6, warmup_epochs=0,
                                                        drw_start_epoch=0),
                                 Stage2Config(seed=args.rank, epochs=10**6, classifier_epochs=0))
    if args.stage == 1 and args.subsample < 1:
        data = shortened(data, 1, max(1, round(args.subsample * len(data.train_labels))))
    elif args.stage == 2:
        data = scaled(data, args.subsample)  # every class in proportion: the stream pass shrinks too
    train_images = train_images_per_epoch(args.stage, (cfg1, cfg2)[args.stage - 1], data)
    data = data.to(device)
    window = Window(Path(args.sync_dir), args.rank, train_images, len(data.train_labels) + len(data.test_labels),
                    args.seeds)
    try:
        if args.stage == 1:
            # K = 1: the process's own seed, as train_stage1 trains it; no two processes share a seed
            cfgs = pack_units(cfg1, args.seeds, cfg1.seed * args.seeds, args.mixed)
            # every seed of a pack shares the epoch's time: seed 0's call stands for the epoch
            train_stage1_seeds(cfgs, data, device, on_epoch=lambda i, record, state: window(record, state)
                               if i == 0 else None)
        else:
            cfgs = pack_units(cfg2, args.seeds, cfg2.seed * args.seeds, args.mixed)
            torch.manual_seed(args.rank)
            weights = [resnet32(data.num_classes).state_dict() for _ in cfgs]
            train_stage2_seeds(cfgs, data, weights, device, on_epoch=lambda i, record, state: window(record, state)
                               if i == 0 else None)
    except WindowClosed:
        pass
    result = {**window.result(), "device": torch.cuda.get_device_name() if device.type == "cuda" else "CPU"}
    if device.type == "cuda":
        result["max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["max_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
    print(json.dumps(result), flush=True)


def gpu_used_mib() -> list[float]:
    """Returns nvidia-smi's used memory (MiB, CUDA context included) of each compute process; [] without it."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
        return [float(v) for v in out.split()]
    except (subprocess.SubprocessError, ValueError):
        return []


def run_count(count: int, args: argparse.Namespace) -> dict:
    """Runs `count` concurrent workers through one window; returns their results and the aggregate."""
    with tempfile.TemporaryDirectory(prefix="gpu_packing-") as tmp:
        sync_dir = Path(tmp)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        common = ["--stage", str(args.stage), "--seeds", str(args.seeds), "--dataset", args.dataset,
                  "--rho", str(args.rho), "--threads", str(args.threads), "--subsample", str(args.subsample),
                  "--sync-dir", tmp, *(["--mixed"] if args.mixed else []),
                  *(f"--set={pair}" for pair in args.set)]
        procs = []
        for rank in range(count):
            log = open(sync_dir / f"out-{rank}.txt", "w")  # files, not pipes: a full pipe would block a worker
            procs.append(subprocess.Popen([sys.executable, "-m", "benchmarks.gpu_packing", "--worker",
                                           "--rank", str(rank), *common], cwd=REPO, env=env,
                                          stdout=log, stderr=subprocess.STDOUT))
        try:
            _wait_ready(procs, sync_dir, args.setup_timeout)
            deadline = time.monotonic() + args.window
            (sync_dir / "go.tmp").write_text(repr(deadline))
            (sync_dir / "go.tmp").rename(sync_dir / "go")  # atomic: no worker reads a half-written file
            time.sleep(args.window / 2)
            smi = gpu_used_mib()
            for p in procs:
                p.wait(timeout=args.window + args.setup_timeout)
        except subprocess.TimeoutExpired:
            raise CountFailed(f"with {count} processes a worker outlasted the window by over --setup-timeout "
                              f"{args.setup_timeout:g} s") from None
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        results = []
        for rank, p in enumerate(procs):
            text = (sync_dir / f"out-{rank}.txt").read_text()
            if p.returncode != 0:
                raise CountFailed(f"worker {rank} of {count} failed (exit {p.returncode}); its output ends:\n"
                                 + text[-3000:])
            try:
                results.append(json.loads(text.strip().splitlines()[-1]))
            except (IndexError, json.JSONDecodeError):
                raise CountFailed(f"worker {rank} of {count} printed no result; its output ends:\n"
                                  + text[-3000:]) from None
    if any(r["epochs"] == 0 for r in results):
        raise CountFailed(f"with {count} processes an epoch takes longer than --window {args.window:g} s; "
                         "raise --window")
    return {"count": count, "workers": results, "nvidia_smi_mib": smi,
            "aggregate_images_per_s": sum(r["images_per_s"] for r in results)}


def _wait_ready(procs: list[subprocess.Popen], sync_dir: Path, timeout: float) -> None:
    start = time.monotonic()
    while sum(1 for _ in sync_dir.glob("ready-*")) < len(procs):
        if any(p.poll() is not None for p in procs):
            return  # a worker died: its exit code and output are reported by the caller
        if time.monotonic() - start > timeout:
            raise CountFailed(f"workers not ready after {timeout:g} s (start-up and one warm-up epoch); raise "
                             "--setup-timeout or lower --counts")
        time.sleep(0.05)


def recommend(runs: list[dict], min_gain: float = 0.10) -> int:
    """Returns the process count after which doubling adds less than `min_gain` aggregate throughput."""
    best = runs[0]["count"]
    for prev, nxt in zip(runs, runs[1:]):
        if nxt["aggregate_images_per_s"] < (1 + min_gain) * prev["aggregate_images_per_s"]:
            break
        best = nxt["count"]
    return best


def grid_estimate(single: dict, gain: float, loops: dict | None, seeds: int = 1) -> list[str]:
    """Returns the lines estimating the paper grid's wall time on one GPU, formula first."""
    r_tr, r_ev = single["train_images_per_s"], single["eval_images_per_s"]
    p = GRID["stream_pass"]
    ips2 = (loops or {}).get("results", {}).get("stage2/project", {}).get("images_per_s")
    if ips2 is not None:
        t2_text = f"t2 = 2P / {ips2:.0f}, bench_loops' stage-2 project images/s on this device"
    else:
        t2_text = "t2 = P/r_tr + P/r_ev + (n + 10k)/r_ev, no AutoAugment cost: a LOWER BOUND (pass --loops-json)"
    s1 = s2 = 0.0
    for n in cell_sizes():
        s1 += GRID["stage1_units"] * GRID["stage1_epochs"] * (n / r_tr + (n + TEST_IMAGES) / r_ev)
        t2 = 2 * p / ips2 if ips2 is not None else p / r_tr + p / r_ev + (n + TEST_IMAGES) / r_ev
        s2 += GRID["stage2_units"] * GRID["stage2_epochs"] * t2
    lines = [
        "grid estimate, one GPU: T = [sum_units1 200 (n/r_tr + (n + 10k)/r_ev) + sum_units2 100 t2] / G",
        f"  n: the unit's LT training images; 36 stage-1 and 36 stage-2 units, 6 per (dataset, rho); P = {p};",
        f"  r_tr = {r_tr:.0f}, r_ev = {r_ev:.0f} images/s: one process's stage-1 training / evaluation rates (k=1"
        + (f", its {seeds} seeds together: every stage-1 unit packed);" if seeds > 1 else ");"),
        f"  {t2_text};",
        "  all 100 stage-2 epochs charged as feature epochs (the 20 classifier epochs are cheaper);",
        f"  G = {gain:.2f}: aggregate gain of the recommended packing over one process (assumed for stage 2 too).",
        f"  stage 1 {s1 / gain / 3600:.2f} h + stage 2 {s2 / gain / 3600:.2f} h = {(s1 + s2) / gain / 3600:.2f} h",
    ]
    if loops is not None and {"stage1/ref", "stage2/ref"} <= set(loops["results"]):
        ref1 = loops["results"]["stage1/ref"]["images_per_s"]
        ref2 = loops["results"]["stage2/ref"]["images_per_s"]
        ref = sum(GRID["stage1_units"] * GRID["stage1_epochs"] * n / ref1
                  + GRID["stage2_units"] * GRID["stage2_epochs"] * 2 * p / ref2 for n in cell_sizes())
        lines.append(f"  for scale, the reference-style loop one trial at a time (bench_loops ref images/s "
                     f"{ref1:.0f} / {ref2:.0f}): {ref / 3600:.1f} h")
    return lines


def print_header(device: str, args: argparse.Namespace) -> None:
    what = ("stage 1 CE and LDAM-DRW in turn" if args.mixed else "stage 1 CE") if args.stage == 1 \
        else "stage 2 DRO-LT feature epochs"
    what += f", {args.seeds} unit(s) packed into one model per process"
    print(f"packing: {device} | torch {torch.__version__} | {what} on synthetic {args.dataset}-LT rho "
          f"{args.rho:g} (x{args.subsample:g}) | {args.threads} CPU threads per process | window {args.window:g} s"
          f" | settings: {' '.join(args.set) or 'defaults'}")
    print(f"{'procs':>5}{'seeds/proc':>11}{'aggregate img/s':>17}{'vs 1':>7}{'per proc img/s':>16}{'epochs':>8}"
          f"{'alloc MiB':>11}{'reserved MiB':>14}{'nvidia-smi MiB':>16}")


def print_row(run: dict, base: float, args: argparse.Namespace) -> None:
    w = run["workers"]
    smi = f"{max(run['nvidia_smi_mib']):.0f}" if run["nvidia_smi_mib"] else "n/a"
    print(f"{run['count']:>5}{args.seeds:>11}{run['aggregate_images_per_s']:>17.0f}"
          f"{run['aggregate_images_per_s'] / base:>6.2f}x"
          f"{statistics.median(r['images_per_s'] for r in w):>16.0f}{sum(r['epochs'] for r in w):>8}"
          f"{max(r.get('max_allocated_mib', float('nan')) for r in w):>11.0f}"
          f"{max(r.get('max_reserved_mib', float('nan')) for r in w):>14.0f}{smi:>16}", flush=True)


def print_summary(runs: list[dict], args: argparse.Namespace, loops: dict | None) -> None:
    base = runs[0]["aggregate_images_per_s"]
    k = recommend(runs)
    gain = next(r for r in runs if r["count"] == k)["aggregate_images_per_s"] / base
    cores = available_cores()
    print(f"recommended: {k} trial(s) per GPU (doubling adds < 10% beyond it): experiments/paper_cifar_lt.yaml "
          f"resources: {{cpus: {max(1, cores // k)}, gpus: {1 / k:g}}}"
          + (f", pack_seeds: {args.seeds}" if args.seeds > 1 else "") + f" for this {cores}-core, one-GPU machine")
    if args.stage == 2:  # the grid's trials per GPU hold for both stages: the gain at its count is what counts
        gains = ", ".join(f"{r['count']}: {r['aggregate_images_per_s'] / base:.2f}x" for r in runs)
        print(f"stage-2 aggregate gain over one process by processes per GPU ({gains}); grid_estimate.py takes "
              "the one at the grid's trials per GPU as --gain2")
        return
    for line in grid_estimate(runs[0]["workers"][0], gain, loops, args.seeds):
        print(line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--stage", type=int, default=1, choices=[1, 2], help="the stage every process trains")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8], help="processes per run")
    parser.add_argument("--seeds", type=int, default=1,
                        help="seeds each process trains packed into one model (the grid's pack_seeds)")
    parser.add_argument("--mixed", action="store_true",
                        help="stage 1: each pack CE and LDAM-DRW in turn, as the paper grid packs a cell's stage 1")
    parser.add_argument("--window", type=float, default=20.0, help="measuring window per count, seconds")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per process (the trial's cpus)")
    parser.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"])
    parser.add_argument("--rho", type=float, default=100.0)
    parser.add_argument("--subsample", type=float, default=1.0, help="fraction of the data (tiny CPU tests)")
    parser.add_argument("--setup-timeout", type=float, default=300.0, help="seconds to start up and warm up")
    parser.add_argument("--loops-json", default=None, help="bench_loops --json output, for the stage-2 epoch time")
    parser.add_argument("--set", action="append", default=[], metavar="stageN.KEY=VALUE",
                        help="a speed setting for every process, e.g. stage1.compile=true (repeatable)")
    parser.add_argument("--allow-cpu", action="store_true", help="run without CUDA (only to test this script)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--sync-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if not 0 < args.subsample <= 1 or args.window <= 0 or min(args.counts) < 1 or args.seeds < 1:
        parser.error("need 0 < --subsample <= 1, --window > 0, --counts >= 1 and --seeds >= 1")
    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("gpu_packing measures how trials share a GPU, and PyTorch sees no CUDA GPU here. Run it on "
                         "a GPU machine, or pass --allow-cpu (with e.g. --subsample 0.02 --counts 1 2 --window 5) "
                         "to test the script itself.")
    loops = None
    if args.loops_json and Path(args.loops_json).is_file():
        loops = json.loads(Path(args.loops_json).read_text())
    elif args.loops_json:
        print(f"note: {args.loops_json} not found (did bench_loops fail?); stage 2 estimated from stage-1 rates")
    # Each count's row is printed as soon as it is measured: a time limit or a failing count later keeps it.
    runs: list[dict] = []
    try:
        for k in sorted(set(args.counts)):
            run = run_count(k, args)  # the parent runs nothing on the GPU
            if not runs:
                print_header(run["workers"][0]["device"], args)
            runs.append(run)
            print_row(run, runs[0]["aggregate_images_per_s"], args)
    except CountFailed as err:
        raise SystemExit(f"{err}\n" + ("no recommendation from the counts above: not every count was measured"
                                       if runs else ""))
    print_summary(runs, args, loops)


if __name__ == "__main__":
    main()

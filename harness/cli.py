"""The `drolt` command line."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from drolt.checkpoint import FolderBusy
from drolt.config import load_yaml
from drolt.data import DataError
from drolt.training import TrainingDiverged
from drolt.unit import METHODS, resolve_device, run_unit, unit_from_dict


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="run one unit in this process, without Ray (debugging a single run)",
                       description="Run one unit (stage 1, then stage 2 for dro_lt) in-process. Settings come "
                                   "from --config (YAML with keys method, data, stage1, stage2, out, device; its "
                                   "paths relative to the file), then the flags, then --set overrides.")
    p.add_argument("--config", type=Path, help="YAML unit file")
    p.add_argument("--method", choices=METHODS)
    p.add_argument("--mode", choices=("faithful", "clean"), help="both stages' mode")
    p.add_argument("--dataset", choices=("cifar10", "cifar100"))
    p.add_argument("--rho", type=float, help="imbalance ratio n_max/n_min (100, 50, 10)")
    p.add_argument("--profile", choices=("exp", "step"))
    p.add_argument("--subset-seed", type=int, help="which images form the long-tailed subset")
    p.add_argument("--seed", type=int, help="training seed of both stages")
    p.add_argument("--stage1-epochs", type=int)
    p.add_argument("--stage2-epochs", type=int)
    p.add_argument("--classifier-epochs", type=int)
    p.add_argument("--data-root", help="folder holding cifar-10-batches-py/ or cifar-100-python/")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=None,
                   help="download CIFAR when it is missing")
    p.add_argument("--synthetic", type=int, metavar="N",
                   help="use a generated stand-in dataset with N train images per class (smoke runs)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any setting, e.g. --set stage2.temperature=0.5 or --set out=runs/x (repeatable)")
    p.add_argument("--out", type=Path, help="output folder (default runs/train)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--stage1-weights", type=Path, help="model_best.pt or model_last.pt of a finished stage 1: run stage 2 only")


def _put(tree: dict, dotted: str, value: Any) -> None:
    *parents, key = dotted.split(".")
    for name in parents:
        tree = tree.setdefault(name, {})
        if not isinstance(tree, dict):
            raise ValueError(f"cannot set {dotted!r}: {name!r} is not a section")
    tree[key] = value


def train_settings(args: argparse.Namespace) -> tuple[dict, Path, str]:
    """Returns (unit settings, output folder, device name) merged from --config, flags and --set."""
    tree: dict = {"out": "runs/train", "device": "auto"}
    if args.config:
        if not args.config.exists():
            raise ValueError(f"config file {args.config} does not exist")
        written = load_yaml(args.config) or {}
        if not isinstance(written, dict):
            raise ValueError(f"config file {args.config} must hold a mapping (keys method, data, stage1, ...)")
        _paths_relative_to(written, args.config.parent)
        tree.update(written)
    flags = {"out": args.out, "device": args.device, "method": args.method, "data.dataset": args.dataset,
             "data.rho": args.rho, "data.profile": args.profile, "data.subset_seed": args.subset_seed,
             "data.root": args.data_root, "data.download": args.download, "data.synthetic": args.synthetic,
             "stage1.epochs": args.stage1_epochs, "stage2.epochs": args.stage2_epochs,
             "stage2.classifier_epochs": args.classifier_epochs}
    for stage in ("stage1", "stage2"):
        flags[f"{stage}.mode"], flags[f"{stage}.seed"] = args.mode, args.seed
    for key, value in flags.items():
        if value is not None:
            _put(tree, key, value)
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. stage2.temperature=0.5")
        try:
            _put(tree, key, yaml.safe_load(value))
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or type(err).__name__  # the parser's one-line reason
            raise ValueError(f"--set {item!r}: {value!r} is not a YAML value ({problem}); quote a string, or "
                             "write a list as [1, 2]") from None
    out, device = tree.pop("out"), tree.pop("device")
    if not isinstance(out, (str, Path)) or not str(out):
        raise ValueError(f"out must be a folder (a path); got {out!r}")
    return tree, Path(out).expanduser().resolve(), device


def _paths_relative_to(tree: dict, folder: Path) -> None:
    """Makes the `out` and `data.root` a config file gives relative to the file's folder, as a grid file's paths
    are; the command line's and the defaults stay relative to the working directory."""
    if isinstance(tree.get("out"), str) and tree["out"]:
        tree["out"] = str((folder / Path(tree["out"]).expanduser()).resolve())
    data = tree.get("data")
    if isinstance(data, dict) and isinstance(data.get("root"), str) and data["root"]:
        data["root"] = str((folder / Path(data["root"]).expanduser()).resolve())


def cmd_train(args: argparse.Namespace) -> int:
    tree, out, device_name = train_settings(args)
    unit = unit_from_dict(tree, where=f"{args.config} and the command line" if args.config else "the command line",
                          taken=("out", "device"))
    device = resolve_device(device_name)
    stages = (2,) if args.stage1_weights and 2 in unit.stages() else unit.stages()
    print(f"drolt train: method {unit.method}, stages {stages}, device {device}, output {out}", flush=True)
    # --mode and --seed set both stages; anything else under stage2 was asked for by name
    ignored = sorted(set(tree.get("stage2") or {}) - {"mode", "seed"}) if 2 not in unit.stages() else []
    if ignored:
        print(f"warning: {unit.method} trains stage 1 only, so stage2 settings {ignored} have no effect", flush=True)
    results = run_unit(unit, out, device, log=lambda line: print(line, flush=True),
                       stage1_weights=args.stage1_weights)
    for stage, result in results.items():
        last, best = result["last"], result["best"]
        print(f"stage {stage} done: last epoch top-1 {last['top1']:.2f}, best-on-test top-1 {best['top1']:.2f} "
              f"(epoch {best['epoch'] + 1}); the {result['selected']} one is reported "
              f"({out / f'stage{stage}' / 'result.json'})")
    return 0


def _grid_parsers(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run a whole grid on Ray Tune (local Ray by default)",
                         description="Expand GRID into units and run those not done yet on Ray Tune; re-running "
                                     "after a crash or Ctrl-C continues where it stopped.")
    run.add_argument("grid", type=Path, help="grid file (YAML), e.g. experiments/smoke.yaml")
    run.add_argument("--address", help="an existing Ray cluster (e.g. 10.0.0.5:6379); default: a private "
                                       "local Ray instance")
    run.add_argument("--storage", type=Path, help="override the grid's storage folder")
    run.add_argument("--dry-run", action="store_true", help="print the plan (to run, to resume, done) and stop")
    run.add_argument("--progress-every", type=float, default=30.0, metavar="S",
                     help="seconds between status lines (default 30)")
    report = sub.add_parser("report", help="rebuild a grid's tables and figures from its records (no training)")
    report.add_argument("grid", type=Path)
    report.add_argument("--storage", type=Path, help="override the grid's storage folder")
    report.add_argument("--out", type=Path, help="output folder (default results/<grid name>/)")
    status = sub.add_parser("status", help="what of a grid is done, running, failed or pending")
    status.add_argument("grid", type=Path)
    status.add_argument("--storage", type=Path, help="override the grid's storage folder")


def cmd_run(args: argparse.Namespace) -> int:
    from harness.grid import load_grid
    grid = load_grid(args.grid, args.storage)
    if args.dry_run:
        from harness.plan import make_plan
        print(make_plan(grid).describe())
        return 0
    from harness.launch import run_grid
    from harness.report import write_report
    t0 = time.time()
    plan = run_grid(grid, args.address, log=lambda line: print(line, flush=True), every=args.progress_every)
    write_report(grid, log=lambda line: print(line, flush=True))
    failed = [u for u in plan.units.values() if plan.states[u.id].status != "done"]
    print(f"drolt run: {plan.count('done')}/{len(plan.units)} units done in {time.time() - t0:.0f}s")
    for unit in failed:
        state = plan.states[unit.id]
        status = state.status
        if status == "pending" and unit.depends_on and plan.states[unit.depends_on].status != "done":
            status = "waiting"  # as drolt status says: for its stage-1 unit
        print(f"  not done: {unit.id} {unit.label}: {status} {state.detail}".rstrip())
    if failed:
        storage = f" --storage {args.storage}" if args.storage else ""
        print(f"drolt run: {len(failed)} unit(s) not done; see `drolt status {args.grid}{storage}`; fix and run "
              "again to retry only those", file=sys.stderr)
    return 1 if failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from harness.grid import load_grid
    from harness.report import write_report
    write_report(load_grid(args.grid, args.storage), args.out, log=lambda line: print(line, flush=True))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from harness.grid import load_grid
    from harness.status import status_table
    print(status_table(load_grid(args.grid, args.storage)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Returns the parser of the `drolt` command and its sub-commands."""
    parser = argparse.ArgumentParser(prog="drolt", description="DRO-LT reproduction harness")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _grid_parsers(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from harness.launch import LaunchError
    try:
        return {"train": cmd_train, "run": cmd_run, "status": cmd_status, "report": cmd_report}[args.command](args)
    except (ValueError, DataError, FileNotFoundError, FolderBusy, LaunchError, TrainingDiverged) as err:
        print(f"drolt {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the output went to a reader that stopped (`drolt status ... | head`)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (else Python's exit flush reports the pipe again)
        return 141  # as a shell reports a command a SIGPIPE ended
    except OSError as err:  # a full disk, a lost mount: the finished epochs are safe on disk
        trains = args.command == "train" or (args.command == "run" and not args.dry_run)
        print(f"drolt {args.command}: error: {err}"
              + (". Every finished epoch is saved: fix this and run the same command again to resume" if trains
                 else ""), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"drolt {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

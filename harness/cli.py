"""The `drolt` command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from drolt.data import DataError
from drolt.unit import METHODS, resolve_device, run_unit, unit_from_dict


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="run one unit in this process, without Ray (debugging a single run)",
                       description="Run one unit (stage 1, then stage 2 for dro_lt) in-process. Settings come "
                                   "from --config (YAML with keys method, data, stage1, stage2, out, device), "
                                   "then the flags, then --set overrides.")
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
                   help="override any setting, e.g. --set stage2.temperature=0.5 (repeatable)")
    p.add_argument("--out", type=Path, help="output folder (default runs/train)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--stage1-weights", type=Path, help="model.pt of a finished stage 1: run stage 2 only")


def _put(tree: dict, dotted: str, value: Any) -> None:
    *parents, key = dotted.split(".")
    for name in parents:
        tree = tree.setdefault(name, {})
        if not isinstance(tree, dict):
            raise ValueError(f"cannot set {dotted!r}: {name!r} is not a section")
    tree[key] = value


def train_settings(args: argparse.Namespace) -> tuple[dict, Path, str]:
    """Returns (unit settings, output folder, device name) merged from --config, flags and --set."""
    tree: dict = {}
    if args.config:
        if not args.config.exists():
            raise ValueError(f"config file {args.config} does not exist")
        tree = yaml.safe_load(args.config.read_text()) or {}
        if not isinstance(tree, dict):
            raise ValueError(f"config file {args.config} must hold a mapping (keys method, data, stage1, ...)")
    out = tree.pop("out", "runs/train")
    device = tree.pop("device", "auto")
    flags = {"method": args.method, "data.dataset": args.dataset, "data.rho": args.rho,
             "data.profile": args.profile, "data.subset_seed": args.subset_seed, "data.root": args.data_root,
             "data.download": args.download, "data.synthetic": args.synthetic,
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
        _put(tree, key, yaml.safe_load(value))
    return tree, Path(args.out or out), args.device or device


def cmd_train(args: argparse.Namespace) -> int:
    tree, out, device_name = train_settings(args)
    unit = unit_from_dict(tree, where=str(args.config or "flags"))
    device = resolve_device(device_name)
    print(f"drolt train: method {unit.method}, stages {unit.stages()}, device {device}, output {out.resolve()}",
          flush=True)
    results = run_unit(unit, out, device, log=lambda line: print(line, flush=True),
                       stage1_weights=args.stage1_weights)
    for stage, result in results.items():
        last, best = result["last"], result["best"]
        print(f"stage {stage} done: last epoch top-1 {last['top1']:.2f}, best-on-test top-1 {best['top1']:.2f} "
              f"(epoch {best['epoch'] + 1}); the {result['selected']} one is reported "
              f"({out.resolve() / f'stage{stage}' / 'result.json'})")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="drolt", description="DRO-LT reproduction harness")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    args = parser.parse_args(argv)
    try:
        return {"train": cmd_train}[args.command](args)
    except (ValueError, DataError, FileNotFoundError) as err:
        print(f"drolt {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"drolt {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

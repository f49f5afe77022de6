"""The Ray Tune trainable: one stage of one unit (or of a pack of seeds), run through `drolt` into the units'
folders.

The unit folder is the checkpoint store: every epoch's state is written there atomically, so a retried trial,
a re-run after the driver died and another grid sharing the storage all resume from the same files.
"""
from __future__ import annotations

import math
import pickle
from contextlib import ExitStack
from pathlib import Path

import ray
import torch
from ray import tune

from drolt.checkpoint import folder_lock, load_state
from drolt.data import DataError, share_test_sets
from drolt.training import TrainingDiverged
from drolt.unit import (diverged, epochs_done, load_data, record_failure, recorded_failure, run_pack,
                        unit_from_dict)

# Per-class lists and radii stay in metrics.jsonl; Ray gets the scalars.
_SCALARS = ("epoch", "lr", "train_loss", "loss", "ce_loss", "robust_loss", "top1", "top5", "many", "medium",
            "few", "ncm_top1", "epoch_time")
# Failures that a retry would only repeat: recorded once, the trial ends without asking Ray to retry.
_DETERMINISTIC = (TrainingDiverged, DataError, ValueError)
# What torch.load raises for a missing, empty, truncated or garbled checkpoint.
_DAMAGED = (FileNotFoundError, EOFError, RuntimeError, pickle.UnpicklingError)


def trial_device() -> torch.device:
    """Returns the GPU Ray assigned to this trial (Ray sets CUDA_VISIBLE_DEVICES), else the CPU; outside a Ray
    worker (asking would start Ray) the CPU."""
    if ray.is_initialized() and ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _metrics(record: dict) -> dict:
    return {k: record[k] for k in _SCALARS if k in record and not (isinstance(record[k], float)
                                                                    and math.isnan(record[k]))}


def train_units(config: dict) -> None:
    """Runs one unit, or a stage of units that differ only in their seed (stage 1: or method; stage 2: or mode,
    or rho; harness.plan.packs says which) packed into one model, into <storage>/<unit id>/ each.

    config = {"units": [{"id", "stage", "settings", "depends_on", "drolt": the settings drolt takes (method,
    data, stage1[, stage2])}, ...], "storage": absolute path of the storage folder}. Each report carries
    "unit", the index of the unit its record belongs to.
    """
    units, storage = config["units"], Path(config["storage"])
    folders = [storage / unit["id"] for unit in units]
    kept = list(range(len(units)))  # the units this trial trains: all, unless stage-1 weights fail to load
    with ExitStack() as held:
        for folder in folders:
            held.enter_context(folder_lock(folder, wait_s=120, holder="another drolt run", what="a drolt run trial"))
            _clear_earlier_attempt(folder)
        try:
            cfgs = [unit_from_dict(unit["drolt"], where=f"unit {unit['id']}") for unit in units]
            device = trial_device()
            datas = []  # unit i's data; a stage-2 pack may hold units of several rhos, each data set loaded once
            for i, cfg in enumerate(cfgs):
                same = next((j for j in range(i) if cfgs[j].data == cfg.data), None)
                datas.append(datas[same] if same is not None else load_data(cfg.data).to(device))
            datas = share_test_sets(datas)

            weights = None
            if units[0]["stage"] == 2:
                kept, weights = _stage1_weights(units, folders, storage)
                if not kept:
                    return

            def report(j: int, record: dict) -> None:
                tune.report({**_metrics(record), "unit": kept[j]})
            run_pack(units[0]["stage"], [cfgs[i] for i in kept], [folders[i] for i in kept],
                     [datas[i] for i in kept], device, _log, report, weights)
        except Exception as err:
            _record_unfinished([folders[i] for i in kept], err)
            if not isinstance(err, _DETERMINISTIC):
                raise


def _stage1_weights(units: list[dict], folders: list[Path], storage: Path) -> tuple[list[int], list]:
    """Returns the indices of the stage-2 units that can train and the weights each starts from, its own stage-1
    unit's. A unit whose stage-1 weights are missing or damaged is recorded failed, naming the file, and the
    rest of its pack goes on without it (a unit already done or diverged is only left out). Other errors, such
    as a storage that failed for a moment, reach Ray, which retries the trial."""
    kept, weights = [], []
    for i, (unit, folder) in enumerate(zip(units, folders)):
        path = storage / unit["depends_on"] / f"model_{unit['settings']['handoff']}.pt"
        try:
            weights.append(load_state(path))
        except _DAMAGED as err:
            if _unfinished(folder):
                problem = ValueError(f"the stage-1 weights {path} do not load ({type(err).__name__}: {err}); "
                                     "`drolt run` again rebuilds them from that unit's last state")
                record_failure(folder, problem, epochs_done(folder))
                _log(f"unit {unit['id']} failed: {problem}")
            continue
        kept.append(i)
    return kept, weights


def _clear_earlier_attempt(folder: Path) -> None:
    """Removes the error an earlier attempt of this trial recorded before Ray retried it: until this attempt
    ends, the unit is unfinished, not failed (`drolt status`; and a Ctrl-C during the retry must find it
    stopped, or harness.launch would start the next wave). A diverged unit's error stays: it would only
    diverge again, and run_pack leaves it out."""
    error = folder / "error.json"
    if error.exists() and not diverged(folder):
        _log(f"unit {folder.name}: trying again after an earlier attempt's "
             f"{recorded_failure(folder) or 'error (unreadable)'}")
        error.unlink()


def _log(line: str) -> None:
    print(line, flush=True)


def _unfinished(folder: Path) -> bool:
    """True unless the unit finished or diverged before: a later failure of its trial is not its own."""
    return not (folder / "done").exists() and not diverged(folder)


def _record_unfinished(folders: list[Path], err: BaseException) -> None:
    """Records the failure in every unit of the trial that neither finished nor diverged before it (a pack's
    others may have: their own records stand)."""
    for folder in folders:
        if _unfinished(folder):
            record_failure(folder, err, epochs_done(folder))

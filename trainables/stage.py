"""The Ray Tune trainable: one stage of one unit, run through `drolt` into the unit's folder.

The unit folder is the checkpoint store: every epoch's state is written there atomically, so a retried trial,
a re-run after the driver died and another grid sharing the storage all resume from the same files.
"""
from __future__ import annotations

import math
from pathlib import Path

import ray
import torch
from ray import tune

from drolt.checkpoint import folder_lock, load_state
from drolt.data import DataError
from drolt.training import TrainingDiverged
from drolt.unit import epochs_done, load_data, record_failure, run_stage, unit_from_dict

# Per-class lists and radii stay in metrics.jsonl; Ray gets the scalars.
_SCALARS = ("epoch", "lr", "train_loss", "loss", "ce_loss", "robust_loss", "top1", "top5", "many", "medium",
            "few", "ncm_top1", "epoch_time")
# Failures that a retry would only repeat: recorded once, the trial ends without asking Ray to retry.
_DETERMINISTIC = (TrainingDiverged, DataError, ValueError)


def trial_device() -> torch.device:
    """Returns the GPU Ray assigned to this trial (Ray sets CUDA_VISIBLE_DEVICES), else the CPU."""
    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _metrics(record: dict) -> dict:
    return {k: record[k] for k in _SCALARS if k in record and not (isinstance(record[k], float)
                                                                    and math.isnan(record[k]))}


def train_unit(config: dict) -> None:
    """Runs one unit into <storage>/<unit id>/.

    config = {"unit": {"id", "stage", "settings", "depends_on", "drolt": the settings drolt takes (method,
    data, stage1[, stage2])}, "storage": absolute path of the storage folder}.
    """
    unit, storage = config["unit"], Path(config["storage"])
    folder = storage / unit["id"]
    with folder_lock(folder, wait_s=120, holder="another drolt run"):
        try:
            cfg = unit_from_dict(unit["drolt"], where=f"unit {unit['id']}")
            device = trial_device()
            data = load_data(cfg.data).to(device)
            weights = None
            if unit["stage"] == 2:
                weights = load_state(storage / unit["depends_on"] / f"model_{unit['settings']['handoff']}.pt")
            run_stage(unit["stage"], cfg, data, device, folder, log=lambda line: print(line, flush=True),
                      stage1_weights=weights, report=lambda record: tune.report(_metrics(record)))
        except _DETERMINISTIC as err:
            record_failure(folder, err, epochs_done(folder))
        except Exception as err:
            record_failure(folder, err, epochs_done(folder))
            raise

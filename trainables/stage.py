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

from drolt.checkpoint import load_state
from drolt.training import TrainingDiverged
from drolt.unit import load_data, run_stage, unit_from_dict
from harness.storage import record_failure

# Per-class lists and radii stay in metrics.jsonl; Ray gets the scalars.
_SCALARS = ("epoch", "lr", "train_loss", "loss", "ce_loss", "robust_loss", "top1", "top5", "many", "medium",
            "few", "ncm_top1", "epoch_time")


def trial_device() -> torch.device:
    """Returns the GPU Ray assigned to this trial (Ray sets CUDA_VISIBLE_DEVICES), else the CPU."""
    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _metrics(record: dict) -> dict:
    return {k: record[k] for k in _SCALARS if k in record and not (isinstance(record[k], float)
                                                                    and math.isnan(record[k]))}


def train_unit(config: dict) -> None:
    """Runs the unit described by config["unit"] into <config["storage"]>/<unit id>/."""
    unit, storage = config["unit"], Path(config["storage"])
    folder = storage / unit["id"]
    settings = unit["settings"]
    cfg = unit_from_dict({"method": settings["method"], "data": settings["data"], "stage1": settings["stage1"],
                          "stage2": settings.get("stage2")}, where=f"unit {unit['id']}")
    device = trial_device()
    epochs = []
    try:
        data = load_data(cfg.data).to(device)
        weights = None
        if unit["stage"] == 2:
            weights = load_state(storage / unit["depends_on"] / f"model_{settings['handoff']}.pt")

        def report(record: dict) -> None:
            epochs.append(record["epoch"])
            tune.report(_metrics(record))

        run_stage(unit["stage"], cfg, data, device, folder, log=lambda line: print(line, flush=True),
                  stage1_weights=weights, report=report)
    except TrainingDiverged as err:
        # Deterministic: a retry would diverge again. Record it and end the trial normally.
        record_failure(folder, err, epochs[-1] + 1 if epochs else None)
    except Exception as err:
        record_failure(folder, err, epochs[-1] + 1 if epochs else None)
        raise

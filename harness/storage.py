"""The storage folder: one sub-folder per unit, and the state of a unit read from its files alone.

<storage>/<unit id>/
  unit.yaml       resolved settings (written before the unit starts)
  state.pt        resume point, rewritten atomically after every epoch
  metrics.jsonl   one record per finished epoch
  model_best.pt, model_last.pt, result.json, done     written at the end; `done` last
  error.json      why the last attempt failed (removed when a `drolt run` starts the unit again, and when Ray
                  retries its trial, unless the unit diverged)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
import yaml

from drolt.unit import epochs_done, read_result, recorded_failure, weights_loadable

from .grid import Unit


@dataclass
class UnitState:
    status: str                 # "done", "failed", "partial" (has a resume point) or "pending"
    epochs_done: int = 0
    detail: str = ""            # the error of a failed unit


def unit_dir(storage: Path, unit_id: str) -> Path:
    """Returns the folder of a unit."""
    return storage / unit_id


def is_done(storage: Path, unit_id: str) -> bool:
    """True when the unit's completion marker exists and its result.json is readable."""
    return read_result(unit_dir(storage, unit_id)) is not None


def read_state(storage: Path, unit: Unit) -> UnitState:
    """Returns what the unit's folder says about it."""
    folder = unit_dir(storage, unit.id)
    if read_result(folder) is not None:
        if weights_loadable(folder):
            return UnitState("done", epochs_done(folder))
        # Trusted, they would fail every stage-2 unit built on them, run after run: rebuilt instead.
        return UnitState("partial", epochs_done(folder), "its weights are damaged: rebuilt from the last state")
    if (folder / "done").exists():
        return UnitState("partial", epochs_done(folder), "result.json is damaged: rebuilt from the last state")
    if (folder / "error.json").exists():
        return UnitState("failed", epochs_done(folder), recorded_failure(folder) or "error.json is unreadable")
    if (folder / "state.pt").exists() or (folder / "state.pt.prev").exists():
        return UnitState("partial", epochs_done(folder))
    return UnitState("pending")


def prepare(storage: Path, unit: Unit) -> Path:
    """Creates the unit's folder with its settings and clears a previous failure; returns the folder."""
    folder = unit_dir(storage, unit.id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "error.json").unlink(missing_ok=True)
    (folder / "unit.yaml").write_text(yaml.safe_dump({"id": unit.id, "label": unit.label, **unit.settings},
                                                     sort_keys=False))
    return folder


def unit_result(storage: Path, unit_id: str) -> dict:
    """Returns a finished unit's result.json."""
    return json.loads((unit_dir(storage, unit_id) / "result.json").read_text())

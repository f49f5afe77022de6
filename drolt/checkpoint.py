"""Atomic files: a crash mid-write leaves the previous version in place, never a half-written file."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Calls write(file) on a temporary file beside `path`, flushes it to disk, then renames it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_state(state: dict, path: str | Path) -> None:
    """Writes a training state (tensors, numbers, lists, dicts) atomically."""
    atomic_write(path, lambda f: torch.save(state, f))


def save_state_keeping_previous(state: dict, path: str | Path) -> None:
    """Writes `state` atomically and keeps the file it replaces as <name>.prev (a fallback if it is damaged).

    The new state is complete on disk before anything is renamed, so a full disk or a crash leaves the
    previous state in place (under its own name or as .prev).
    """
    path = Path(path)
    new = path.with_name(path.name + ".new")
    save_state(state, new)
    if path.exists():
        os.replace(path, path.with_name(path.name + ".prev"))
    os.replace(new, path)


def load_state(path: str | Path) -> dict:
    """Reads a state written by save_state onto the CPU; weights_only=True runs no code from the file."""
    return torch.load(path, map_location="cpu", weights_only=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Writes `obj` as indented JSON atomically (NaN stays NaN, as Python's json reads it back)."""
    atomic_write(path, lambda f: json.dump(obj, f, indent=1), mode="w")


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    """Writes one JSON object per line atomically."""
    atomic_write(path, lambda f: f.writelines(json.dumps(r) + "\n" for r in records), mode="w")


def read_json(path: str | Path) -> Any:
    """Reads a JSON file."""
    with open(path) as f:
        return json.load(f)

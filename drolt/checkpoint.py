"""Atomic files: a crash mid-write leaves the previous version in place, never a half-written file."""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

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


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock: it is training into that folder."""

    def __init__(self, message: str, who: str):
        super().__init__(message)
        self.who = who  # what the holder wrote: "pid N on host", then ": what" if it said


def require_folder(path: Path, name: str) -> None:
    """Raises ValueError when `path`, given as `name` (a flag or key), exists and is no folder: making it, or
    a file in it, would fail later with an errno that does not say which path is wrong."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} {path} is a file, not a folder; give a folder (or one that does not exist yet)")


@contextmanager
def folder_lock(folder: str | Path, wait_s: float = 0.0, holder: str = "another drolt process",
                name: str = ".lock", what: str = "") -> Iterator[None]:
    """Holds the exclusive lock of `folder` (the file `name` in it, released when the process dies, even by
    SIGKILL); the file says who holds it while it is held ("pid N on host", then ": `what`" if given).

    Waits up to `wait_s` seconds for another holder (a worker orphaned by a killed driver outlives it by
    seconds), then raises FolderBusy.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "a+") as f:
        deadline = time.time() + wait_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.time() >= deadline:
                    f.seek(0)  # "a+" opens at the end
                    who = f.read().strip() or "another process"
                    # the holder's own words after its pid say what trains there; without them, `holder` guesses
                    guess = "" if ": " in who else f" (is {holder} training into it?)"
                    raise FolderBusy(f"{folder} is locked by {who}{guess}. Wait for it to finish, or use another "
                                     "folder", who) from None
                time.sleep(0.5)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {os.uname().nodename}{': ' + what if what else ''}\n")  # for people and tests
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()


def discard_partial_writes(folder: str | Path) -> list[Path]:
    """Removes what writes cut short by a crash left in `folder` (temporary files, a new state not yet renamed
    into place); returns the removed paths. Only under the folder's lock (no other process writes there)."""
    leftovers = [*Path(folder).glob(".*.tmp"), *Path(folder).glob("*.new")]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


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

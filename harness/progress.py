"""A concise live view of a grid run, in place of Ray's per-trial tables."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from ray.tune import Callback
from ray.tune.progress_reporter import TrialProgressCallback

from drolt.unit import diverged, epochs_done, recorded_failure

from .grid import Unit
from .storage import is_done


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class GridProgress(Callback):
    """Prints a line when a unit starts, finishes or fails, and a status line at most every `every` seconds."""

    def __init__(self, units: list[Unit], done_before: int, total: int, epochs_of: Callable[[Unit], int],
                 storage: Path, started: float, log: Callable[[str], None] = print, every: float = 30.0,
                 failed_before: int = 0):
        self.units = {u.id: u for u in units}
        self.storage = storage
        # the run's counts so far: a run's second wave (stage 2) goes on from its first's
        self.done, self.failed, self.total = done_before, failed_before, total
        self.epochs_of = epochs_of
        self.log, self.every = log, every
        # unit id -> epochs finished, from the folders: a unit resuming after epoch N starts at N
        self.epochs = {uid: epochs_done(storage / uid) for uid in self.units}
        self.running: set[str] = set()
        self.finished: set[str] = set()
        self.epoch_times: list[float] = []
        self.started = started
        self.last_line = 0.0

    def _units(self, trial) -> list[Unit]:
        """The units a trial trains: one, or a pack."""
        return [self.units[unit["id"]] for unit in trial.config["units"]]

    def on_trial_start(self, iteration, trials, trial, **info):
        units = self._units(trial)
        packed = f" (packed with {len(units) - 1} other unit(s))" if len(units) > 1 else ""
        for unit in units:
            if is_done(self.storage, unit.id) or diverged(self.storage / unit.id):  # a retried pack's finished seeds
                continue
            self.running.add(unit.id)
            self.log(f"[{_duration(time.time() - self.started)}] start  {unit.id} {unit.label}{packed}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        unit = self._units(trial)[int(result.get("unit", 0))]
        self.epochs[unit.id] = int(result.get("epoch", 0)) + 1
        if "epoch_time" in result:
            self.epoch_times.append(float(result["epoch_time"]))
        if time.time() - self.last_line >= self.every:
            self.status_line()

    def on_trial_complete(self, iteration, trials, trial, **info):
        # A trial that recorded a deterministic failure (NaN loss) ends normally: the folder says which.
        for unit in self._units(trial):
            self._finish(unit, ok=is_done(self.storage, unit.id))

    def on_trial_error(self, iteration, trials, trial, **info):
        for unit in self._units(trial):
            self._finish(unit, ok=is_done(self.storage, unit.id))  # a pack's others may have finished

    def on_trial_recover(self, iteration, trials, trial, **info):
        for unit in self._units(trial):
            if is_done(self.storage, unit.id) or diverged(self.storage / unit.id):  # its pack's process died after it
                self.running.discard(unit.id)
                continue
            why = recorded_failure(self.storage / unit.id) or "its process died"
            self.log(f"[{_duration(time.time() - self.started)}] retry  {unit.id} {unit.label} "
                     f"({why}; it resumes from its last epoch)")

    def _finish(self, unit: Unit, ok: bool) -> None:
        self.running.discard(unit.id)
        self.finished.add(unit.id)
        if ok:
            self.done += 1
        else:
            self.failed += 1
        word = "done  " if ok else "FAILED"
        self.log(f"[{_duration(time.time() - self.started)}] {word} {unit.id} {unit.label}  "
                 f"({self.done}/{self.total} units done, {self.failed} failed)")

    def status_line(self) -> None:
        """Prints units done of total, running units with their epoch, and an ETA from measured epoch times."""
        self.last_line = time.time()
        running = ", ".join(f"{uid[:6]} ep {self.epochs[uid]}/{self.epochs_of(self.units[uid])}"
                            for uid in sorted(self.running))
        eta = ""
        if self.epoch_times and self.running:
            left = sum(self.epochs_of(u) - self.epochs[uid] for uid, u in self.units.items()
                       if uid not in self.finished)
            per_epoch = sum(self.epoch_times[-20:]) / len(self.epoch_times[-20:])
            eta = f", this wave's ETA ~{_duration(left * per_epoch / max(1, len(self.running)))}"
        self.log(f"[{_duration(time.time() - self.started)}] {self.done}/{self.total} units done, "
                 f"{self.failed} failed, running: {running or 'none'}{eta}")


class SilentTrialProgress(TrialProgressCallback):
    """Stands in for the per-trial printer Ray Tune adds unless it is given one: Ray 2.60's prints "Trial ...
    completed. Last result:" for a trial that reported nothing, whatever the verbosity; GridProgress says it."""

    def _print(self, msg: str) -> None:
        pass

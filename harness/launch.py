"""Run a grid on Ray Tune: stage-1 units first, then the stage-2 units whose stage 1 is complete.

Units already done in storage are skipped; partial ones resume from their folder. Ray's `fit()` does not
raise when trials fail, so the outcome is read back from the unit folders, which are the truth.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional

from .grid import Grid, Unit
from .plan import Plan, make_plan, packs
from drolt.checkpoint import FolderBusy, folder_lock
from drolt.unit import epochs_done, record_failure

from .status import run_by
from .storage import prepare, read_state

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

Log = Callable[[str], None]

# Ray reads these when it is imported: its new console output and default loggers would bury our one-line
# progress view under per-trial tables. A user's own setting wins.
for _key, _value in {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
                     "RAY_USAGE_STATS_ENABLED": "0"}.items():
    os.environ.setdefault(_key, _value)


class LaunchError(RuntimeError):
    """The grid cannot run on this Ray cluster (resources, lock, connection); the message says what to do."""


@contextmanager
def storage_lock(storage: Path, grid_path: Optional[Path] = None) -> Iterator[None]:
    """Holds an exclusive lock on the storage folder, so two `drolt run`s never train the same unit; the lock
    file names the grid run (`run_by`), so that `drolt status` of another grid sharing the storage can tell."""
    with ExitStack() as held:
        try:
            held.enter_context(folder_lock(storage, holder="another `drolt run`", name=".drolt-run.lock",
                                           what=run_by(grid_path) if grid_path else ""))
        except FolderBusy as busy:
            raise LaunchError(f"storage {storage} is in use by another `drolt run` ({busy.who}); wait for it to "
                              "finish, or give this run another --storage") from None
        yield


def start_ray(address: Optional[str], log: Log) -> None:
    """Connects to the cluster at `address`, or starts a private local Ray instance."""
    # Ray 2.60 clusters (local or `ray start --head`) use token authentication by default; a driver must say
    # so before importing Ray. RAY_AUTH_MODE=disabled in the environment opts out.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if not address:
        # A private instance serves this process alone: its servers listen on loopback, not on every
        # interface. Ray 2.60 does so only with this single-machine setting, read when Ray is imported.
        if "ray" in sys.modules and os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
            log("warning: Ray was imported before drolt could keep its local instance on loopback, so its servers "
                "may listen on every interface; set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before importing Ray")
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)  # failures are summarised from the unit folders
    if ray.is_initialized():
        return
    kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise LaunchError(f"cannot connect to the Ray cluster at {address}: {err}. Start one with "
                              "`ray start --head` and pass the address it prints, or drop --address to run "
                              "locally. If the cluster uses another token (RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH) "
                              "or no authentication (RAY_AUTH_MODE=disabled), set the same here") from err
        log(f"connected to Ray cluster at {address}")
    else:
        node_ip = os.environ.get("DROLT_RAY_NODE_IP", "127.0.0.1")
        ray.init(address="local", _node_ip_address=node_ip, **kwargs)


def _check_reachable(address: str) -> None:
    """Raises LaunchError when nothing listens at a HOST:PORT address: ray.init would retry for minutes,
    printing only Ray's own connection warnings."""
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or "/" in address:
        return  # "auto", ray://...: Ray's own forms, left to it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as err:
        raise LaunchError(f"cannot connect to the Ray cluster at {address}: {err.strerror or err}. Is its head "
                          "node running (`ray start --head` prints the address to pass)? Or drop --address to "
                          "run locally") from None


def trial_resources(grid: Grid, log: Log) -> dict:
    """Returns the per-trial resources, checked against the cluster (Ray would leave impossible trials PENDING)."""
    import ray
    total = ray.cluster_resources()
    cpus, gpus = grid.cpus, grid.gpus
    if cpus > total.get("CPU", 0):
        raise LaunchError(f"resources.cpus = {cpus:g} per trial, but the Ray cluster has {total.get('CPU', 0):g} "
                          "CPUs in all; lower resources.cpus")
    if gpus > 0 and total.get("GPU", 0) == 0:
        if not grid.allow_cpu_fallback:
            raise LaunchError(f"the grid asks for {gpus:g} GPU per trial but the Ray cluster has no GPU; set "
                              "resources.gpus: 0, or allow_cpu_fallback: true to train on CPUs")
        log(f"no GPU in the Ray cluster: running on CPU (allow_cpu_fallback), {cpus:g} CPU per trial")
        gpus = 0.0
    elif gpus > total.get("GPU", 0):
        raise LaunchError(f"resources.gpus = {gpus:g} per trial, but the Ray cluster has {total.get('GPU', 0):g} "
                          "GPUs in all; use a fraction such as 0.25 or a bigger cluster")
    return {"cpu": cpus, "gpu": gpus}


def prepare_data(plan: Plan, log: Log) -> None:
    """Locates (downloads, or writes the synthetic stand-in for) every dataset once, on the driver.

    Trials then only read: no two trials download or write the same files at once.
    """
    from drolt.unit import load_data
    seen = set()
    for unit in plan.units.values():
        if plan.states[unit.id].status == "done":
            continue
        cfg = unit.config().data
        key = (cfg.dataset, cfg.synthetic, cfg.root)
        if key not in seen:
            seen.add(key)
            data = load_data(cfg)
            log(f"data: {cfg.dataset} from {cfg.root} ({data.source})")


def _epochs(unit: Unit) -> int:
    key = "stage1" if unit.stage == 1 else "stage2"
    return int(unit.settings[key]["epochs"])


def _trial_name(trial: "Trial") -> str:
    ids = [unit["id"] for unit in trial.config["units"]]
    return ids[0] + (f"+{len(ids) - 1}" if len(ids) > 1 else "")


def _fit_wave(plan: Plan, units: list[Unit], resources: dict, log: Log, every: float, started: float) -> None:
    from ray import tune

    from trainables.stage import train_units

    from .progress import GridProgress, SilentTrialProgress
    grid = plan.grid
    for unit in units:
        prepare(grid.storage, unit)
    wave = {u.id for u in units}
    failed = sum(1 for uid, state in plan.states.items() if state.status == "failed" and uid not in wave)
    progress = GridProgress(units, plan.count("done"), len(plan.units), _epochs, grid.storage, started, log, every,
                            failed)
    trials = packs(units, grid.pack_seeds)
    tuner = tune.Tuner(
        tune.with_resources(train_units, resources),
        param_space={"units": tune.grid_search([[{**dataclasses.asdict(u), "drolt": u.drolt_settings()} for u in pack]
                                                for pack in trials]),
                     "storage": str(grid.storage)},
        tune_config=tune.TuneConfig(trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            storage_path=str(grid.storage / "_ray"), name=f"{grid.name}-stage{units[0].stage}-{int(time.time())}",
            verbose=0, callbacks=[progress, SilentTrialProgress()],
            failure_config=tune.FailureConfig(max_failures=grid.max_failures)))
    results = tuner.fit()
    # A trial whose process died on every retry never wrote error.json: record Ray's word for it.
    errored = set()
    for result in (r for r in results if r.error is not None):
        for unit_id in (unit["id"] for unit in result.config["units"]):
            errored.add(unit_id)
            if read_state(grid.storage, plan.units[unit_id]).status not in ("failed", "done"):
                record_failure(grid.storage / unit_id, result.error, epochs_done(grid.storage / unit_id))
    # On Ctrl-C Ray Tune stops the trials and returns as if the wave had ended: a unit neither done nor failed
    # was stopped, and the next wave (stage 2 on the stage-1 units that did finish) must not start.
    stopped = [u for u in units if u.id not in errored and not (grid.storage / u.id / "error.json").exists()
               and read_state(grid.storage, u).status != "done"]
    if stopped:
        raise KeyboardInterrupt(f"{len(stopped)} unit(s) stopped before they finished")


def run_grid(grid: Grid, address: Optional[str] = None, log: Log = print, every: float = 30.0) -> Plan:
    """Runs every unit of the grid that is not done; returns the final plan (states read from storage)."""
    started = time.time()
    with storage_lock(grid.storage, grid.path):
        plan = make_plan(grid)
        log(plan.describe())
        if not plan.todo(1) and not plan.todo(2):
            return plan
        start_ray(address, log)
        resources = trial_resources(grid, log)
        prepare_data(plan, log)
        for stage in (1, 2):
            plan = make_plan(grid)
            todo = [u for u in plan.todo(stage) if u.depends_on is None or plan.states[u.depends_on].status == "done"]
            if todo:
                trials = len(packs(todo, grid.pack_seeds))
                per = ("each" if trials == len(todo)
                       else f"per trial ({trials} trial{'s' if trials > 1 else ''}, units packed)")
                log(f"stage {stage}: {len(todo)} unit(s), {resources['cpu']:g} CPU / {resources['gpu']:g} GPU {per}")
                _fit_wave(plan, todo, resources, log, every, started)
        return make_plan(grid)

"""Grids on a real Ray instance (loopback only): fractional-GPU packing, the no-GPU stop, re-runs that train
nothing, failures recorded while the others finish, resume after the driver is SIGKILLed, and an existing
cluster started with `ray start --head`.

Select with `pytest -m ray`. In-process tests share one private Ray instance; the driver-kill and cluster
tests run `drolt run` as subprocesses in their own sessions and end every process they leave by its pid.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import pytest
import torch
import yaml

from drolt.checkpoint import load_state, save_state
from drolt.config import DataConfig
from drolt.unit import epochs_done, load_data
from harness.cli import main
from harness.grid import expand, load_grid
from harness.launch import LaunchError, run_grid
from harness.storage import read_state

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
NODE_IP = "127.0.0.1"  # with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray binds to loopback only (conftest.py)
# No usage stats, Ray's cloud-metadata probes sent to a closed loopback port, and a token so Ray 2.60's
# default token authentication does not warn.
LOOPBACK = {"RAY_USAGE_STATS_ENABLED": "0", "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
            "no_proxy": "localhost,127.0.0.1,127.0.0.2", "DROLT_RAY_NODE_IP": NODE_IP, "RAY_AUTH_MODE": "token",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
TINY = {"name": "tiny", "storage": "runs", "datasets": ["cifar10"], "rhos": [10], "seeds": [0], "methods": ["ce"],
        "stage1": {"epochs": 2, "batch_size": 32, "warmup_epochs": 1},
        "stage2": {"epochs": 2, "classifier_epochs": 1, "batch_size": 64},
        "resources": {"cpus": 0.5}}


class LocalRay:
    """This module's private in-process Ray instance; restarted only when a test needs another GPU count."""

    def __init__(self, temp_dir: Path):
        self.temp_dir, self.num_gpus = temp_dir, None

    def start(self, num_gpus: int) -> None:
        import ray
        if ray.is_initialized() and self.num_gpus == num_gpus:
            return
        self.stop()
        ray.init(address="local", _node_ip_address=NODE_IP, num_cpus=2, num_gpus=num_gpus, include_dashboard=False,
                 log_to_driver=False, _temp_dir=str(self.temp_dir))
        self.num_gpus = num_gpus

    def stop(self) -> None:
        import ray
        if ray.is_initialized():
            ray.shutdown()
        self.num_gpus = None


@pytest.fixture(scope="module")
def loopback_env():
    with pytest.MonkeyPatch.context() as mp:
        for key, value in LOOPBACK.items():
            mp.setenv(key, value)
        mp.delenv("RAY_ADDRESS", raising=False)
        yield


@pytest.fixture(scope="module")
def ray_temp():
    """A short private folder for Ray's sessions (Unix socket paths must stay under ~107 characters)."""
    path = Path(tempfile.mkdtemp(prefix="drt", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def local_ray(loopback_env, ray_temp):
    ray_ = LocalRay(ray_temp / "ray")
    yield ray_
    ray_.stop()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """The synthetic set (20 images per class) written once, so concurrent trials only read it."""
    root = tmp_path_factory.mktemp("data")
    load_data(DataConfig(root=str(root), synthetic=20, rho=10))
    return root


def _grid(folder: Path, data_root: Path, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump({**TINY, "data": {"root": str(data_root), "synthetic": 20}, **changes}))
    return path


def _units(path: Path) -> dict:
    """Returns {unit label: unit} of the grid file."""
    return {u.label: u for u in expand(load_grid(path))[1].values()}


def _result(path: Path, unit) -> dict:
    return json.loads((load_grid(path).storage / unit.id / "result.json").read_text())


def _mtimes(folder: Path) -> dict:
    return {name: (folder / name).stat().st_mtime_ns for name in ("metrics.jsonl", "done", "result.json")}


# ---- processes: subprocess tests run in their own session, and everything left in it is ended by pid ----

def _session_pids(sid: int) -> list[int]:
    """Returns the live (not zombie) processes of session `sid`, read from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, _pgrp, session = stat[stat.rindex(")") + 2:].split()[:4]
        if int(session) == sid and state != "Z":
            pids.append(int(entry.name))
    return pids


def _end_session(sid: int, timeout: float = 30.0) -> None:
    """SIGKILLs every process left in session `sid`, by pid, until none is alive."""
    deadline = time.time() + timeout
    while pids := _session_pids(sid):
        if time.time() > deadline:
            raise AssertionError(f"processes {pids} of session {sid} survive SIGKILL")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def _subprocess_env(ray_temp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, **LOOPBACK, "RAY_TMPDIR": str(ray_temp), "PYTHONPATH": str(REPO)}


def _drolt(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", *args]


def _wait_for(condition, timeout: float, what: str, log: Optional[Path] = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}"
                         + (f"; output so far:\n{log.read_text()[-3000:]}" if log else ""))


# ---- in-process: one Ray instance for the module ----

@pytest.fixture(scope="module")
def packed(local_ray, data_root, tmp_path_factory):
    """Four stage-1 units at 1/4 of a logical GPU each, run on Ray with num_gpus=1; returns (grid file, log)."""
    local_ray.start(num_gpus=1)
    path = _grid(tmp_path_factory.mktemp("packed"), data_root, name="packed", seeds=[0, 1, 2, 3],
                 resources={"cpus": 0.5, "gpus": 0.25})
    lines = []
    run_grid(load_grid(path), log=lines.append, every=1)
    return path, lines


def test_four_quarter_gpu_trials_run_at_the_same_time_and_record_the_cpu(packed):
    path, lines = packed
    assert "stage 1: 4 unit(s), 0.5 CPU / 0.25 GPU each" in lines
    results = [_result(path, u) for u in _units(path).values()]
    assert len(results) == 4
    # Packed: every unit started before any finished (one at a time, they could not overlap at all).
    assert max(r["started_at"] for r in results) < min(r["finished_at"] for r in results), results
    # A logical GPU is no CUDA device: each trial fell back to the CPU and says so.
    assert all(r["provenance"]["device"].startswith("cpu") for r in results)


def test_rerun_of_a_completed_grid_trains_nothing(packed, capsys):
    path, _ = packed
    storage = load_grid(path).storage
    before = {u.id: _mtimes(storage / u.id) for u in _units(path).values()}
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "4 done (reused, not run)" in out and "to run" not in out
    assert "drolt run: 4/4 units done" in out and "start" not in out
    assert {uid: _mtimes(storage / uid) for uid in before} == before


def test_seeds_packed_into_one_trial_train_each_unit_into_its_folder_in_both_stages(
        local_ray, data_root, tmp_path):
    local_ray.start(num_gpus=1)
    path = _grid(tmp_path, data_root, name="seedpacks", seeds=[0, 1, 2], methods=["ce", "dro_lt"], pack_seeds=2)
    lines = []
    plan = run_grid(load_grid(path), log=lines.append, every=1)
    assert plan.count("done") == 6, lines  # 3 stage-1 units in 2 trials, then 3 stage-2 units
    assert "stage 1: 3 unit(s), 0.5 CPU / 0 GPU per trial (2 trials, units packed)" in lines
    units = _units(path)
    packed = {seed: _result(path, units[f"cifar10 rho10 s0 seed{seed} stage1 ce"])["packed_seeds"] for seed in (0, 1, 2)}
    assert sorted(packed.values()) == [1, 2, 2]
    stage1 = [json.loads(line) for line in
              (load_grid(path).storage / units["cifar10 rho10 s0 seed0 stage1 ce"].id / "metrics.jsonl").open()]
    assert [r["epoch"] for r in stage1] == [0, 1]
    assert sum("packed with 1 other unit(s)" in line for line in lines) == 4  # 2 in each stage
    stage2 = [_result(path, u) for u in units.values() if u.stage == 2]
    assert all(r["last"]["epoch"] == 1 for r in stage2) and sorted(r["packed_seeds"] for r in stage2) == [1, 2, 2]
    assert "stage 2: 3 unit(s), 0.5 CPU / 0 GPU per trial (2 trials, units packed)" in lines


@pytest.fixture(scope="module")
def with_failure(local_ray, data_root, tmp_path_factory):
    """A grid whose LDAM-DRW unit diverges (LR 1e30) while its CE unit trains normally; returns the grid file."""
    local_ray.start(num_gpus=1)
    return _grid(tmp_path_factory.mktemp("failing"), data_root, name="failing",
                 methods=["ce", {"name": "ldam_drw",
                                 "stage1": {"lr": 1.0e30, "warmup_epochs": 0, "drw_start_epoch": 1}}])


def test_diverging_unit_is_recorded_the_others_finish_and_run_exits_non_zero(with_failure, capsys):
    path = with_failure
    units = _units(path)
    ce, ldam = units["cifar10 rho10 s0 seed0 stage1 ce"], units["cifar10 rho10 s0 seed0 stage1 ldam_drw"]
    storage = load_grid(path).storage

    assert main(["run", str(path)]) == 1
    out, err = capsys.readouterr()
    assert (storage / ce.id / "done").exists()
    error = json.loads((storage / ldam.id / "error.json").read_text())
    assert error["type"] == "TrainingDiverged" and "nan" in error["message"]
    assert "epochs_done" in error and not (storage / ldam.id / "done").exists()
    assert "drolt run: 1/2 units done" in out
    assert f"not done: {ldam.id} {ldam.label}: failed TrainingDiverged" in out
    assert "1 unit(s) not done" in err

    assert main(["status", str(path)]) == 0
    status = capsys.readouterr().out
    line = next(line for line in status.splitlines() if ldam.id in line)
    assert line.split()[0] == "failed" and "TrainingDiverged" in line and "nan" in line
    assert next(line for line in status.splitlines() if ce.id in line).split()[0] == "done"


def test_rerun_after_a_failure_retries_only_the_failed_unit(with_failure, capsys):
    path = with_failure
    units = _units(path)
    ce, ldam = units["cifar10 rho10 s0 seed0 stage1 ce"], units["cifar10 rho10 s0 seed0 stage1 ldam_drw"]
    storage = load_grid(path).storage
    if not (storage / ce.id / "done").exists():  # run on its own: make the first, failing run here
        main(["run", str(path)])
        capsys.readouterr()
    before = _mtimes(storage / ce.id)
    failed_at = (storage / ldam.id / "error.json").stat().st_mtime_ns

    assert main(["run", str(path)]) == 1
    out = capsys.readouterr().out
    assert "1 done (reused, not run)" in out and "1 failed before (to retry)" in out
    assert f"start  {ldam.id}" in out and f"start  {ce.id}" not in out
    assert _mtimes(storage / ce.id) == before
    assert (storage / ldam.id / "error.json").stat().st_mtime_ns > failed_at  # it really ran again


def test_ctrl_c_stops_the_run_without_starting_the_next_wave(local_ray, data_root, tmp_path, capsys):
    # Ray Tune catches Ctrl-C, stops the trials and returns from fit() as if the wave had ended.
    local_ray.start(num_gpus=1)
    path = _grid(tmp_path, data_root, name="interrupted", methods=[{"name": "dro_lt", "mode": "faithful"}],
                 stage1={**TINY["stage1"], "epochs": 40})
    units = _units(path)
    stage1, stage2 = (next(u for u in units.values() if u.stage == s) for s in (1, 2))
    storage = load_grid(path).storage

    def interrupt_after_the_first_epoch():
        _wait_for(lambda: epochs_done(storage / stage1.id) >= 1, 120, "stage 1's first epoch")
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=interrupt_after_the_first_epoch, daemon=True).start()

    assert main(["run", str(path)]) == 130
    assert "interrupted; run the same command again to resume" in capsys.readouterr().err
    assert 1 <= epochs_done(storage / stage1.id) < 40
    assert not (storage / stage2.id).exists(), "stage 2 started after the interruption"


def test_missing_data_stops_the_run_before_any_unit_starts(local_ray, tmp_path, capsys):
    local_ray.start(num_gpus=1)
    broken = tmp_path / "broken-data"
    (broken / "synthetic-cifar10-20").mkdir(parents=True)
    (broken / "synthetic-cifar10-20" / "done").touch()  # marked written, but no files: loading raises
    path = _grid(tmp_path, broken, name="nodata", max_failures=0)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "synthetic-cifar10-20" in err  # the data is located once, by the driver
    assert not any(p.is_dir() and p.name != "_ray" for p in load_grid(path).storage.iterdir())


def test_unit_that_raises_is_recorded_with_its_exception(local_ray, data_root, tmp_path, capsys):
    local_ray.start(num_gpus=1)
    path = _grid(tmp_path, data_root, name="raising", max_failures=0,
                 methods=[{"name": "dro_lt", "mode": "clean"}])
    units = _units(path)
    stage1 = next(u for u in units.values() if u.stage == 1)
    stage2 = next(u for u in units.values() if u.stage == 2)
    folder = load_grid(path).storage / stage1.id
    folder.mkdir(parents=True)
    for name in ("model_best.pt", "model_last.pt"):  # files that load, but hold no ResNet: stage 2 raises
        save_state({"not_a_resnet": torch.zeros(1)}, folder / name)
    (folder / "result.json").write_text(json.dumps({"last": {}, "best": {}}))
    (folder / "done").touch()

    assert main(["run", str(path)]) == 1
    out = capsys.readouterr().out
    error = json.loads((load_grid(path).storage / stage2.id / "error.json").read_text())
    assert error["epochs_done"] == 0 and error["traceback"]
    assert "Error" in error["type"] and "RayTaskError" not in error["type"]  # the trainable's own, not Ray's
    assert f"not done: {stage2.id} {stage2.label}: failed {error['type']}" in out


def test_grid_asking_for_gpus_stops_on_a_cluster_without_one_unless_cpu_fallback(local_ray, data_root, tmp_path):
    local_ray.start(num_gpus=0)
    path = _grid(tmp_path / "strict", data_root, name="strict", resources={"cpus": 0.5, "gpus": 0.25})
    with pytest.raises(LaunchError) as err:
        run_grid(load_grid(path), log=lambda line: None)
    assert "no GPU" in str(err.value) and "allow_cpu_fallback" in str(err.value)
    assert not any(p.name != "_ray" and p.is_dir() for p in load_grid(path).storage.iterdir())  # nothing started

    path = _grid(tmp_path / "fallback", data_root, name="fallback", resources={"cpus": 0.5, "gpus": 0.25},
                 allow_cpu_fallback=True, stage1={**TINY["stage1"], "epochs": 1})
    lines = []
    plan = run_grid(load_grid(path), log=lines.append)
    assert plan.count("done") == 1
    assert any("running on CPU (allow_cpu_fallback)" in line for line in lines)
    assert "stage 1: 1 unit(s), 0.5 CPU / 0 GPU each" in lines
    (unit,) = _units(path).values()
    assert _result(path, unit)["provenance"]["device"].startswith("cpu")


def _descendants(pid: int) -> set[int]:
    """`pid` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        found.add(p := todo.pop())
        todo.extend(children.get(p, []))
    return found


def _listening_addresses(pids: set[int]) -> list[str]:
    """The local IP addresses of the TCP sockets these processes listen on (IPv4 and IPv6, from /proc)."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                hex_ip = fields[1].split(":")[0]
                # 32-bit words in host (little-endian) byte order: one for IPv4, four for IPv6
                raw = b"".join(bytes.fromhex(hex_ip[i:i + 8])[::-1] for i in range(0, len(hex_ip), 8))
                if raw.startswith(b"\0" * 10 + b"\xff\xff"):  # an IPv4-mapped IPv6 address
                    raw = raw[12:]
                addresses.append(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw))
    return addresses


def test_ray_listens_on_loopback_only(local_ray):
    local_ray.start(num_gpus=0)
    addresses = _listening_addresses(_descendants(os.getpid()))
    assert len(addresses) >= 4  # GCS, raylet (2), this driver's core worker: the check sees Ray's servers
    assert all(a.startswith("127.") for a in addresses), addresses


# ---- subprocesses: `drolt run` as a user runs it ----

def test_rerun_after_the_driver_is_killed_keeps_done_units_and_resumes_the_interrupted_one(
        local_ray, data_root, ray_temp, tmp_path):
    local_ray.stop()  # leave the two cores to the subprocesses
    path = _grid(tmp_path, data_root, name="killed",
                 methods=[{"name": "ce", "stage1": {"epochs": 1}},
                          {"name": "ldam_drw", "stage1": {"epochs": 8, "drw_start_epoch": 6}}])
    units = _units(path)
    short, long_ = units["cifar10 rho10 s0 seed0 stage1 ce"], units["cifar10 rho10 s0 seed0 stage1 ldam_drw"]
    storage = load_grid(path).storage
    # As a user runs it: without the loopback settings the tests export, which a local run must not need.
    env = {k: v for k, v in _subprocess_env(ray_temp).items()
           if k not in ("DROLT_RAY_NODE_IP", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(_drolt("run", str(path), "--progress-every", "1"), cwd=REPO, env=env,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: (storage / short.id / "done").exists() and (storage / long_.id / "state.pt").exists()
                  and not (storage / long_.id / "done").exists(), 120, "one unit done and one mid-way", log)
        addresses = _listening_addresses(_descendants(driver.pid))
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        # Ray's workers sit in process groups of their own and outlive the driver's group for a few seconds.
        _end_session(driver.pid)

    assert len(addresses) >= 4 and all(a.startswith("127.") for a in addresses), \
        f"a local `drolt run` must keep Ray's servers on loopback: {addresses}"
    assert read_state(storage, long_).status == "partial"
    lines_before = (storage / long_.id / "metrics.jsonl").read_text().splitlines()
    k = len(lines_before)
    # state.pt is written just before metrics.jsonl, so a kill between the two leaves it one epoch ahead.
    resume_point = load_state(storage / long_.id / "state.pt")["epoch"]
    assert 1 <= k <= resume_point < 8
    done_before = _mtimes(storage / short.id)

    second = subprocess.run(_drolt("run", str(path), "--progress-every", "1"), cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "1 done (reused, not run)" in second.stdout and "1 to resume" in second.stdout
    assert f"{long_.id}  {long_.label} after epoch {k}" in second.stdout
    assert f"start  {short.id}" not in second.stdout
    assert _mtimes(storage / short.id) == done_before
    lines_after = (storage / long_.id / "metrics.jsonl").read_text().splitlines()
    assert len(lines_after) == 8 and lines_after[:k] == lines_before  # epochs before the kill kept, not redone
    worker_logs = "".join(p.read_text(errors="replace") for p in ray_temp.glob("ray/session_*/logs/worker-*.out"))
    assert f"stage 1: resuming after epoch {resume_point} from {storage / long_.id}" in worker_logs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((NODE_IP, 0))
        return s.getsockname()[1]


def test_run_on_an_existing_cluster_started_with_ray_start_head(local_ray, data_root, ray_temp, tmp_path):
    local_ray.stop()
    port = _free_port()
    env = _subprocess_env(ray_temp)
    log = tmp_path / "head.log"
    with open(log, "w") as out:
        head = subprocess.Popen(
            ["ray", "start", "--head", "--block", f"--node-ip-address={NODE_IP}", f"--port={port}",
             "--include-dashboard=false", "--num-cpus=2", "--disable-usage-stats",
             f"--temp-dir={ray_temp / 'head'}"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: "Ray runtime started" in log.read_text(), 60, "the head node", log)
        path = _grid(tmp_path, data_root, name="cluster", stage1={**TINY["stage1"], "epochs": 1})
        # Ray 2.60 heads require a token; the README tells cluster users to export RAY_AUTH_MODE=token.
        run = subprocess.run(_drolt("run", str(path), "--address", f"{NODE_IP}:{port}"), cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert f"connected to Ray cluster at {NODE_IP}:{port}" in run.stdout
        (unit,) = _units(path).values()
        assert read_state(load_grid(path).storage, unit).status == "done"
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.time() + 20
        while _session_pids(head.pid) and time.time() < deadline:
            time.sleep(0.2)
        left = _session_pids(head.pid)
        _end_session(head.pid)
    assert head.returncode is not None, "the head node did not stop on SIGTERM"
    assert not left, f"processes {left} of the head node were still alive 20 s after it stopped"


def _kill_trainer_once_it_has_a_checkpoint(folder: Path, killed: list, timeout: float = 120.0) -> None:
    """Waits for the unit's first saved epoch, then SIGKILLs the worker process that holds its lock."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        lock = folder / ".lock"
        if (folder / "state.pt").exists() and lock.exists() and lock.read_text().startswith("pid "):
            pid = int(lock.read_text().split()[1])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.05)


@pytest.mark.parametrize("max_failures, outcome", [(1, "done"), (0, "failed")])
def test_worker_killed_by_the_os_is_retried_from_its_checkpoint_then_recorded_as_failed(
        local_ray, data_root, tmp_path, max_failures, outcome):
    local_ray.start(num_gpus=1)
    path = _grid(tmp_path, data_root, name=f"oskill{max_failures}", max_failures=max_failures,
                 stage1={**TINY["stage1"], "epochs": 6})
    (unit,) = _units(path).values()
    folder = load_grid(path).storage / unit.id
    killed: list = []
    killer = threading.Thread(target=_kill_trainer_once_it_has_a_checkpoint, args=(folder, killed))
    killer.start()
    lines: list = []
    plan = run_grid(load_grid(path), log=lines.append, every=1)
    killer.join()
    assert killed, "the trial finished before it could be killed"
    state = plan.states[unit.id]
    assert state.status == outcome
    if outcome == "done":
        assert any(line.split("] ", 1)[-1].startswith(f"retry  {unit.id}") for line in lines)
        epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert epochs == list(range(6))  # resumed after its checkpoint: no epoch lost or repeated
    else:
        error = json.loads((folder / "error.json").read_text())
        assert error["epochs_done"] >= 1 and "died" in (error["type"] + error["message"]).lower()


def _records(folder: Path) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("epoch_time", "train_images_per_s")}
            for line in lines]


KILL_SETTINGS = {"methods": [{"name": "dro_lt", "mode": "faithful"}], "stage1": {**TINY["stage1"], "epochs": 1},
                 "stage2": {**TINY["stage2"], "epochs": 4, "classifier_epochs": 1}}


@pytest.fixture(scope="module")
def straight_run(local_ray, data_root, ray_temp, tmp_path_factory):
    """The storage folder of the kill tests' grid run without interruption."""
    local_ray.stop()  # leave the two cores to the subprocesses
    straight = _grid(tmp_path_factory.mktemp("straight"), data_root, name="straight", **KILL_SETTINGS)
    run = subprocess.run(_drolt("run", str(straight)), cwd=REPO, env=_subprocess_env(ray_temp),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return load_grid(straight).storage


# Kill points: the stage-2 wave announced but its unit not started (between the stages), and the stage-2
# unit after its first saved epoch.
KILL_POINTS = {
    "between_stages": lambda log, unit_dir: "stage 2: 1 unit(s)" in log.read_text(),
    "during_stage2": lambda log, unit_dir: (unit_dir / "state.pt").exists(),
}


@pytest.mark.parametrize("kill_point", list(KILL_POINTS))
def test_driver_killed_in_or_before_stage2_resumes_to_the_records_of_an_uninterrupted_run(
        local_ray, data_root, ray_temp, tmp_path, straight_run, kill_point):
    local_ray.stop()
    env = _subprocess_env(ray_temp)
    killed = _grid(tmp_path / "killed", data_root, name="killed", **KILL_SETTINGS)
    stage1 = next(u for u in _units(killed).values() if u.stage == 1)
    stage2 = next(u for u in _units(killed).values() if u.stage == 2)
    storage = load_grid(killed).storage
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        driver = subprocess.Popen(_drolt("run", str(killed), "--progress-every", "1"), cwd=REPO, env=env,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: KILL_POINTS[kill_point](log, storage / stage2.id), 240, kill_point, log)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        _end_session(driver.pid)
    assert read_state(storage, stage1).status == "done"
    expected = "partial" if kill_point == "during_stage2" else "pending"
    assert read_state(storage, stage2).status == expected, log.read_text()[-3000:]
    stage1_files = _mtimes(storage / stage1.id)

    rerun = subprocess.run(_drolt("run", str(killed)), cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "1 done (reused, not run)" in rerun.stdout
    assert ("1 to resume" if kill_point == "during_stage2" else "1 to run") in rerun.stdout
    assert _mtimes(storage / stage1.id) == stage1_files  # the finished stage 1 is not re-run
    for unit in _units(killed).values():  # same settings, same ids in both storages
        assert _records(storage / unit.id) == _records(straight_run / unit.id)


def test_grid_asking_for_more_gpus_per_trial_than_the_cluster_has_stops_before_any_work(
        local_ray, data_root, tmp_path):
    local_ray.start(num_gpus=1)
    path = _grid(tmp_path, data_root, name="greedy", resources={"cpus": 0.5, "gpus": 2})
    with pytest.raises(LaunchError, match=r"resources.gpus = 2 per trial, but the Ray cluster has 1 GPUs"):
        run_grid(load_grid(path), log=lambda line: None)
    assert not any(p.is_dir() and p.name != "_ray" for p in load_grid(path).storage.iterdir())

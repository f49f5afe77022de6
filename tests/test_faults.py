"""Faults on disk and at the door: damaged checkpoints and records, a full disk, a second `drolt run`,
unsafe files. Each ends in a finished unit whose records equal an undisturbed run's, or a clear refusal."""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import drolt.checkpoint
import drolt.unit
from drolt.checkpoint import load_state
from harness.cli import main
from harness.grid import GridError, load_grid
from harness.launch import storage_lock

TINY = ["--method", "ce", "--dataset", "cifar10", "--rho", "10", "--synthetic", "20", "--stage1-epochs", "3",
        "--device", "cpu", "--set", "stage1.batch_size=32", "--set", "stage1.warmup_epochs=1"]


def _train(tmp_path, out):
    return main(["train", *TINY, "--data-root", str(tmp_path / "data"), "--out", str(out)])


def _history(out):
    lines = (out / "stage1" / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("epoch_time", "train_images_per_s")}
            for line in lines]


@pytest.fixture
def straight(tmp_path):
    assert _train(tmp_path, tmp_path / "straight") == 0
    return _history(tmp_path / "straight")


def _stop_after_epoch(monkeypatch, epoch):
    real = drolt.unit.format_record

    def interrupt(record, epochs):
        if record["epoch"] == epoch:
            raise KeyboardInterrupt
        return real(record, epochs)
    monkeypatch.setattr(drolt.unit, "format_record", interrupt)
    return lambda: monkeypatch.setattr(drolt.unit, "format_record", real)


def test_damaged_state_resumes_from_the_previous_one_with_a_warning(tmp_path, monkeypatch, capsys, straight):
    out = tmp_path / "run"
    undo = _stop_after_epoch(monkeypatch, 1)
    assert _train(tmp_path, out) == 130
    undo()
    state = out / "stage1" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])  # truncated, as by a crash of the storage
    capsys.readouterr()
    assert _train(tmp_path, out) == 0
    printed = capsys.readouterr().out
    assert "state.pt is damaged" in printed and "resuming after epoch 1" in printed
    assert _history(out) == straight


def test_no_good_state_restarts_the_stage_and_gives_the_same_records(tmp_path, monkeypatch, capsys, straight):
    out = tmp_path / "run"
    undo = _stop_after_epoch(monkeypatch, 1)
    _train(tmp_path, out)
    undo()
    for name in ("state.pt", "state.pt.prev"):
        (out / "stage1" / name).write_bytes(b"garbage")
    assert _train(tmp_path, out) == 0
    assert "resuming" not in capsys.readouterr().out
    assert _history(out) == straight


def test_damaged_result_of_a_finished_stage_is_rebuilt_not_trusted(tmp_path, capsys, straight):
    out = tmp_path / "run"
    _train(tmp_path, out)
    good = json.loads((out / "stage1" / "result.json").read_text())
    (out / "stage1" / "result.json").write_text('{"stage": 1, "la')
    capsys.readouterr()
    assert _train(tmp_path, out) == 0
    assert "damaged" in capsys.readouterr().out
    rebuilt = json.loads((out / "stage1" / "result.json").read_text())
    assert rebuilt["last"] == good["last"] and rebuilt["best"] == good["best"]
    assert _history(out) == straight


def test_damaged_finished_stage_without_any_state_says_it_trains_again_and_does(tmp_path, capsys, straight):
    out = tmp_path / "run"
    _train(tmp_path, out)
    (out / "stage1" / "model_last.pt").write_bytes(b"garbage")
    for name in ("state.pt", "state.pt.prev"):
        (out / "stage1" / name).unlink(missing_ok=True)
    capsys.readouterr()
    assert _train(tmp_path, out) == 0
    printed = capsys.readouterr().out
    assert "trains again from the start" in printed and "rebuilding" not in printed
    assert _history(out) == straight


def test_full_disk_fails_cleanly_keeps_the_last_checkpoint_and_the_rerun_continues(
        tmp_path, monkeypatch, capsys, straight):
    out = tmp_path / "run"
    real_save = drolt.checkpoint.save_state
    saves = []

    def full_disk_on_third_epoch(state, path):
        if "state.pt" in str(path):
            saves.append(state["epoch"])
            if state["epoch"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_save(state, path)
    monkeypatch.setattr(drolt.checkpoint, "save_state", full_disk_on_third_epoch)
    assert _train(tmp_path, out) == 1
    assert "No space left" in capsys.readouterr().err
    assert load_state(out / "stage1" / "state.pt")["epoch"] == 2  # the last good checkpoint is intact
    assert not (out / "stage1" / "done").exists()
    monkeypatch.setattr(drolt.checkpoint, "save_state", real_save)  # space is back
    assert _train(tmp_path, out) == 0
    assert "resuming after epoch 2" in capsys.readouterr().out
    assert _history(out) == straight


def test_second_drolt_run_on_the_same_storage_is_refused_while_the_first_holds_it(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: busy\nstorage: runs\ndata: {synthetic: 20}\ndatasets: [cifar10]\nrhos: [10]\n"
                    "seeds: [0]\nmethods: [ce]\n")
    with storage_lock(load_grid(grid).storage):
        assert main(["run", str(grid)]) == 2
    err = capsys.readouterr().err
    assert "in use by another `drolt run`" in err and "pid" in err
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [".drolt-run.lock"]  # nothing started


def test_checkpoints_are_loaded_without_running_code_from_them(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"epoch": 1, "payload": _Evil()}, path)
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_state(path)
    assert not (tmp_path / "pwned").exists()


class _Evil:
    def __reduce__(self):
        return (open, ("pwned", "w"))


def test_grid_files_are_read_with_a_safe_yaml_loader(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"name: !!python/object/apply:os.system ['touch {tmp_path}/pwned']\n")
    with pytest.raises(GridError, match="not valid YAML"):
        load_grid(grid)
    assert not (tmp_path / "pwned").exists()


def _epoch_lines(log):
    return log.read_text().count("stage 1 epoch ")


def _wait_for_new_epoch(proc, log, seen):
    """Wait until this attempt prints an epoch line, or ends: start-up time varies with the machine's load, so
    kills are timed from the attempt's own progress, not from its start."""
    while proc.poll() is None and _epoch_lines(log) <= seen:
        time.sleep(0.02)


def test_kills_at_arbitrary_moments_never_lose_or_change_a_finished_epoch(tmp_path):
    """SIGKILL `drolt train` again and again at seeded random moments after it starts training (mid-epoch,
    mid-checkpoint-write, between stages of writing the final files); each re-run continues, and the final
    records equal an undisturbed run's."""
    def command(out):
        return [sys.executable, "-m", "harness.cli", "train", *TINY, "--stage1-epochs", "10",
                "--data-root", str(tmp_path / "data"), "--out", str(out)]
    assert subprocess.run(command(tmp_path / "straight"), capture_output=True, timeout=300).returncode == 0
    out = tmp_path / "killed"
    cmd = command(out)
    rng = random.Random(0)
    kills = 0
    log_path = tmp_path / "attempts.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # epoch lines reach the log as they are printed
    with open(log_path, "w") as log:
        for _ in range(12):
            seen = _epoch_lines(log_path)
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.PIPE, env=env)
            _wait_for_new_epoch(proc, log_path, seen)
            try:  # an epoch takes about 0.5 s here: the kill lands in the next one or two, anywhere in them
                proc.wait(timeout=rng.uniform(0.0, 1.2))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
            assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
            break
        else:
            assert subprocess.run(cmd, stdout=log, timeout=300).returncode == 0
    assert kills >= 2, "no run was interrupted: the kills came too late to test anything"
    assert "resuming after epoch" in log_path.read_text()  # kills landed after saved epochs
    assert _history(out) == _history(tmp_path / "straight")


# Run in a child process: SIGKILL it at the chosen moment of the n-th write of a training state.
KILL_IN_WRITE = """
import os, signal, sys
from pathlib import Path
import drolt.checkpoint as checkpoint
point, nth = sys.argv[1], int(sys.argv[2])
writes = 0
real_write, real_replace = checkpoint.atomic_write, os.replace

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def atomic_write(path, write, mode="wb"):
    global writes
    if point == "mid_write" and Path(path).name.startswith("state.pt"):
        writes += 1
        if writes == nth:
            def partial(f):  # some bytes of the new state reach the temporary file, then the process dies
                f.write(b"PK\\x03\\x04 half a checkpoint")
                f.flush()
                die()
            return real_write(path, partial, mode)
    return real_write(path, write, mode)

def replace(src, dst):
    global writes
    real_replace(src, dst)
    if point == "between_renames" and str(dst).endswith("state.pt.prev"):
        writes += 1
        if writes == nth:  # the old state moved aside, the new one not yet renamed into place
            die()

checkpoint.atomic_write, os.replace = atomic_write, replace
from harness.cli import main
sys.exit(main(sys.argv[3:]))
"""


# Both kill the write of epoch 2's state (the first .prev rename is that write's).
@pytest.mark.parametrize("point, nth", [("mid_write", 2), ("between_renames", 1)])
def test_kill_while_a_checkpoint_is_written_resumes_from_the_last_complete_one(tmp_path, straight, point, nth):
    args = ["train", *TINY, "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "killed")]
    killed = subprocess.run([sys.executable, "-c", KILL_IN_WRITE, point, str(nth), *args], capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    stage = tmp_path / "killed" / "stage1"
    leftover = {"mid_write": ".state.pt.new.*.tmp", "between_renames": "state.pt.new"}[point]
    assert list(stage.glob(leftover))  # what the cut-short write left behind
    assert load_state(stage / ("state.pt" if point == "mid_write" else "state.pt.prev"))["epoch"] == 1

    rerun = subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming after epoch 1" in rerun.stdout + rerun.stderr  # from the complete checkpoint, not epoch 0
    assert _history(tmp_path / "killed") == straight
    assert not list(stage.glob(".*.tmp")) and not list(stage.glob("*.new"))  # leftovers cleared, never read


def test_second_drolt_train_into_the_same_folder_is_refused_while_the_first_trains(tmp_path, capsys):
    out = tmp_path / "unit"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert _train(tmp_path, out) == 2
        err = capsys.readouterr().err
        assert f"{out} is locked by pid {holder.pid}" in err and "another drolt train" in err
        assert not (out / "stage1").exists()  # nothing was written
    finally:
        holder.kill()
        holder.wait()
    assert _train(tmp_path, out) == 0  # the lock dies with its holder
    # a holder that says what it is (as a drolt run trial does) is named by its own words, not guessed at
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out), "a drolt run trial"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert _train(tmp_path, out) == 2
        err = capsys.readouterr().err
        assert f"{out} is locked by pid {holder.pid} on {os.uname().nodename}: a drolt run trial. Wait" in err
        assert "drolt train" not in err.split("error:")[-1]
    finally:
        holder.kill()
        holder.wait()


# Holds a unit folder's lock as a running `drolt train` would, until killed.
HOLD_LOCK = """
import sys, time
from drolt.checkpoint import folder_lock
with folder_lock(sys.argv[1], what=" ".join(sys.argv[2:])):
    print("locked", flush=True)
    time.sleep(600)
"""

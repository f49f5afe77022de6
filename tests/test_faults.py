"""Faults on disk and at the door: damaged checkpoints and records, a full disk, a second `drolt run`,
unsafe files. Each ends in a finished unit whose records equal an undisturbed run's, or a clear refusal."""
import errno
import json
import random
import signal
import subprocess
import sys

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


def test_kills_at_arbitrary_moments_never_lose_or_change_a_finished_epoch(tmp_path):
    """SIGKILL `drolt train` again and again at seeded random moments (mid-epoch, mid-checkpoint-write, between
    stages of writing the final files); each re-run continues, and the final records equal an undisturbed run's."""
    def command(out):
        return [sys.executable, "-m", "harness.cli", "train", *TINY, "--stage1-epochs", "10",
                "--data-root", str(tmp_path / "data"), "--out", str(out)]
    assert subprocess.run(command(tmp_path / "straight"), capture_output=True, timeout=300).returncode == 0
    out = tmp_path / "killed"
    cmd = command(out)
    rng = random.Random(0)
    kills = 0
    log = open(tmp_path / "attempts.log", "w")
    for _ in range(12):
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.PIPE)
        try:
            proc.wait(timeout=rng.uniform(1.5, 4.0))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
        break
    else:
        assert subprocess.run(cmd, stdout=log, timeout=300).returncode == 0
    log.close()
    assert kills >= 2, "no run was interrupted: the kills came too late to test anything"
    assert "resuming after epoch" in (tmp_path / "attempts.log").read_text()  # kills landed after saved epochs
    assert _history(out) == _history(tmp_path / "straight")

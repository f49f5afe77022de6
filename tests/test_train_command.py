"""`drolt train`: one unit in-process, its output folder, resume after an interruption, and bad input."""
import dataclasses
import hashlib
import json

import pytest
import torch
import yaml

import drolt.unit
from drolt.checkpoint import load_state
from drolt.config import Stage1Config
from harness.cli import main

TINY = ["--method", "dro_lt", "--dataset", "cifar10", "--rho", "10", "--synthetic", "20",
        "--stage1-epochs", "2", "--stage2-epochs", "2", "--classifier-epochs", "1", "--device", "cpu",
        "--set", "stage1.batch_size=32", "--set", "stage1.warmup_epochs=1", "--set", "stage2.batch_size=64"]


def _train(tmp_path, out, *extra):
    return main(["train", *TINY, "--data-root", str(tmp_path / "data"), "--out", str(out), *extra])


def _history(folder):
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("epoch_time", "train_images_per_s")}
            for line in lines]


def test_train_writes_both_stages_records_and_prints_a_line_per_epoch(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tmp_path, out, "--set", "stage2.precision=bf16") == 0
    printed = capsys.readouterr().out
    assert printed.count("stage 1 epoch") == 2 and printed.count("stage 2 ") >= 2
    # TINY shortens stage 1 to 2 epochs and keeps the reference's decay epochs: said, not silent
    assert "warning: stage1.lr_decay_epochs [160, 180] fall at or after the last of 2 epochs" in printed
    for stage in ("stage1", "stage2"):
        for name in ("metrics.jsonl", "result.json", "model_best.pt", "model_last.pt", "done", "state.pt"):
            assert (out / stage / name).exists(), f"{stage}/{name}"
    result = json.loads((out / "stage2" / "result.json").read_text())
    assert result["selected"] == "best" and {"last", "best", "reported", "config", "provenance"} <= result.keys()
    assert result["provenance"]["data_source"] == "synthetic"
    # each stage's record says the precision it computed in (the report's provenance column shows it)
    assert result["provenance"]["precision"] == "bf16"
    assert json.loads((out / "stage1" / "result.json").read_text())["provenance"]["precision"] == "fp32"
    assert "method: dro_lt" in (out / "unit.yaml").read_text()


def test_rerun_of_a_finished_unit_trains_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    _train(tmp_path, out)
    before = (out / "stage2" / "metrics.jsonl").stat().st_mtime_ns
    assert _train(tmp_path, out) == 0
    assert "already complete" in capsys.readouterr().out
    assert (out / "stage2" / "metrics.jsonl").stat().st_mtime_ns == before


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(tmp_path, monkeypatch, capsys):
    _train(tmp_path, tmp_path / "straight")
    real_format = drolt.unit.format_record

    def interrupt_in_stage2(record, epochs):
        if record["stage"] == 2:
            raise KeyboardInterrupt  # Ctrl-C right after stage 2's first epoch was saved
        return real_format(record, epochs)

    monkeypatch.setattr(drolt.unit, "format_record", interrupt_in_stage2)
    assert _train(tmp_path, tmp_path / "broken") == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    monkeypatch.setattr(drolt.unit, "format_record", real_format)
    assert _train(tmp_path, tmp_path / "broken") == 0
    assert "stage 2: resuming after epoch 1" in capsys.readouterr().out
    for stage in ("stage1", "stage2"):
        assert _history(tmp_path / "broken" / stage) == _history(tmp_path / "straight" / stage)


def test_the_best_epochs_ncm_filled_in_at_the_end_reaches_the_stored_records(tmp_path):
    out = tmp_path / "run"
    assert _train(tmp_path, out, "--method", "ce", "--stage1-epochs", "3", "--set", "stage1.ncm_every=5") == 0
    history = _history(out / "stage1")
    result = json.loads((out / "stage1" / "result.json").read_text())
    best = result["best"]["epoch"]
    assert [r["ncm_top1"] == r["ncm_top1"] for r in history] == [e in (best, 2) for e in range(3)]
    assert history[best]["ncm_top1"] == result["best"]["ncm_top1"] == result["reported"]["ncm_top1"]


def test_rerun_into_a_folder_of_other_settings_is_refused_naming_them(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tmp_path, out) == 0
    before = (out / "stage1" / "result.json").read_text()
    capsys.readouterr()
    assert _train(tmp_path, out, "--set", "stage1.lr=0.5") == 2
    err = capsys.readouterr().err
    assert "holds a unit trained with other settings (stage1.lr: 0.1 -> 0.5)" in err and "new folder" in err
    assert (out / "stage1" / "result.json").read_text() == before
    assert "lr: 0.1" in (out / "unit.yaml").read_text()  # the folder still says what it holds
    # Where the data is read from is not the work: the same unit, found done.
    moved = tmp_path / "moved"
    (tmp_path / "data").rename(moved)
    assert main(["train", *TINY, "--data-root", str(moved), "--out", str(out)]) == 0
    assert "already complete" in capsys.readouterr().out
    # A folder where nothing trained yet (a run that stopped before its first epoch) takes other settings.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "unit.yaml").write_text((out / "unit.yaml").read_text())
    assert main(["train", *TINY, "--data-root", str(moved), "--out", str(empty), "--method", "ce",
                 "--set", "stage1.lr=0.5"]) == 0


def test_a_folder_whose_run_stopped_between_its_files_still_refuses_other_settings(tmp_path, capsys):
    # A kill between an epoch's state.pt and its metrics.jsonl leaves a state alone; one during unit.yaml's
    # write left it empty: neither may let a run of other settings resume that state.
    out = tmp_path / "run"
    assert _train(tmp_path, out) == 0
    for name in ("metrics.jsonl", "result.json", "done", "model_best.pt", "model_last.pt"):
        for stage in ("stage1", "stage2"):
            (out / stage / name).unlink(missing_ok=True)
    capsys.readouterr()
    assert _train(tmp_path, out, "--set", "stage1.lr=0.5") == 2
    assert "other settings (stage1.lr: 0.1 -> 0.5)" in capsys.readouterr().err
    (out / "unit.yaml").write_text("")
    assert _train(tmp_path, out, "--set", "stage1.lr=0.5") == 2
    err = capsys.readouterr().err
    assert "unit.yaml" in err and "new folder" in err
    assert (out / "unit.yaml").read_text() == ""  # left as found


def test_a_config_file_giving_a_key_twice_or_invalid_yaml_is_a_clear_error(tmp_path, capsys):
    for text, words in (("stage1:\n  lr: 0.1\n  lr: 0.5\n", "'lr' is given twice"),
                        ("stage1: [unclosed\n", "not valid YAML")):
        config = tmp_path / "unit.yaml"
        config.write_text(text)
        assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert words in err and str(config) in err and "Traceback" not in err


def test_stage1_weights_must_be_a_stage_1_models_weights_and_stay_the_same_in_one_folder(tmp_path, capsys):
    first = tmp_path / "first"
    assert _train(tmp_path, first) == 0
    capsys.readouterr()
    for wrong, words in (("stage1/state.pt", "is a stage's resume state, not its weights"),
                         ("stage1/metrics.jsonl", "is not a checkpoint drolt wrote"),
                         ("stage1/missing.pt", "do not exist")):
        assert _train(tmp_path, tmp_path / "s2", "--stage1-weights", str(first / wrong)) == 2
        err = capsys.readouterr().err
        assert words in err and "stage1/model_best.pt or stage1/model_last.pt" in err and "Traceback" not in err
    assert _train(tmp_path, tmp_path / "s2", "--stage1-weights", str(first / "stage1/model_best.pt")) == 0
    assert "stages (2,)" in capsys.readouterr().out  # stage 1 is given, not trained
    # Other weights into the same folder would resume or reuse a stage 2 they did not start.
    assert (first / "stage1/model_best.pt").read_bytes() != (first / "stage1/model_last.pt").read_bytes()
    assert _train(tmp_path, tmp_path / "s2", "--stage1-weights", str(first / "stage1/model_last.pt")) == 2
    assert "stage1.weights_sha256" in capsys.readouterr().err


def test_a_clean_stage_2_starts_from_stage_1s_last_weights_whatever_stage_1s_mode(tmp_path, monkeypatch):
    started_from = []
    real = drolt.unit.run_stage

    def spy(stage, unit, data, device, folder, log, weights=None):
        if stage == 2:
            started_from.append(weights)
        return real(stage, unit, data, device, folder, log, weights)
    monkeypatch.setattr(drolt.unit, "run_stage", spy)
    out = tmp_path / "run"
    assert _train(tmp_path, out, "--set", "stage2.mode=clean") == 0  # stage 1 stays at its faithful default
    last, best = (load_state(out / "stage1" / name) for name in ("model_last.pt", "model_best.pt"))
    assert any(not torch.equal(last[k], best[k]) for k in last)
    assert all(torch.equal(started_from[0][k], last[k]) for k in last)


def test_adding_stage1_weights_to_a_folder_whose_stage_2_trained_without_them_is_refused(tmp_path, capsys):
    other, out = tmp_path / "other", tmp_path / "run"
    assert _train(tmp_path, other, "--seed", "7") == 0 and _train(tmp_path, out) == 0
    capsys.readouterr()
    assert _train(tmp_path, out, "--stage1-weights", str(other / "stage1/model_best.pt")) == 2
    err = capsys.readouterr().err
    assert "stage 1 and stage 2 were trained here without --stage1-weights" in err
    assert "drop --stage1-weights" in err
    assert "weights_sha256" not in (out / "unit.yaml").read_text()


def test_a_folder_started_from_stage1_weights_records_them_instead_of_stage_1_settings(tmp_path, capsys):
    first, out = tmp_path / "first", tmp_path / "s2"
    assert _train(tmp_path, first, "--method", "ce") == 0
    weights = first / "stage1/model_best.pt"
    assert _train(tmp_path, out, "--stage1-weights", str(weights)) == 0
    recorded = yaml.safe_load((out / "unit.yaml").read_text())
    assert recorded["stage1"] == {"weights": str(weights.resolve()),
                                  "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    # Stage-1 settings do not enter a folder whose stage 1 was given: it goes on under other ones.
    capsys.readouterr()
    assert _train(tmp_path, out, "--stage1-weights", str(weights), "--stage1-epochs", "3") == 0
    assert "stage 2: already complete" in capsys.readouterr().out
    # Without the weights, a stage 1 would train here while stage 2 already started from other weights.
    assert _train(tmp_path, out) == 2
    err = capsys.readouterr().err
    assert "started from --stage1-weights " + str(weights.resolve()) in err and "pass the same weights" in err
    # A folder drolt wrote before given weights replaced stage 1's settings (their hash beside them) goes on.
    recorded = yaml.safe_load((out / "unit.yaml").read_text())
    legacy = {**recorded, "stage1": dataclasses.asdict(Stage1Config()),
              "stage1_weights_sha256": recorded["stage1"]["weights_sha256"]}
    (out / "unit.yaml").write_text(yaml.safe_dump(legacy, sort_keys=False))
    assert _train(tmp_path, out, "--stage1-weights", str(weights)) == 0


def test_stage1_weights_trained_on_other_data_are_refused_and_weights_without_their_settings_warned_of(
        tmp_path, capsys):
    first = tmp_path / "first"
    assert _train(tmp_path, first, "--method", "ce") == 0  # rho 10
    weights = first / "stage1/model_best.pt"
    capsys.readouterr()
    assert _train(tmp_path, tmp_path / "s2", "--stage1-weights", str(weights), "--rho", "100") == 2
    err = capsys.readouterr().err
    assert "trained on other data than stage 2 is to train on (rho 10.0 there, 100.0 here" in err
    assert not (tmp_path / "s2" / "stage2").exists()
    loose = tmp_path / "loose.pt"  # copied away from the folder that says what it trained on
    loose.write_bytes(weights.read_bytes())
    assert _train(tmp_path, tmp_path / "s2", "--stage1-weights", str(loose)) == 0
    assert f"warning: no readable unit.yaml beside {loose.resolve()}" in capsys.readouterr().out


def test_a_file_given_as_out_is_named_before_any_work(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("kept")
    assert _train(tmp_path, tmp_path / "notes.txt") == 2
    err = capsys.readouterr().err
    assert f"--out {tmp_path / 'notes.txt'} is a file, not a folder" in err and "resume" not in err
    assert (tmp_path / "notes.txt").read_text() == "kept"


def test_a_diverging_run_names_the_epoch_as_the_progress_lines_count_it(tmp_path, capsys):
    out = tmp_path / "nan"
    assert _train(tmp_path, out, "--method", "ce", "--set", "stage1.lr=1e30", "--set", "stage1.warmup_epochs=0",
                  "--set", "stage1.lr_decay_epochs=[]") == 2
    err = capsys.readouterr().err
    saved = len(_history(out / "stage1")) if (out / "stage1" / "metrics.jsonl").exists() else 0
    assert f"stage 1 epoch {saved + 1}: training loss is nan" in err and "recorded as failed" not in err


def test_stage1_weights_into_a_folder_whose_stage_1_alone_trained_names_that_stage(tmp_path, monkeypatch, capsys):
    other, out = tmp_path / "other", tmp_path / "run"
    assert _train(tmp_path, other, "--seed", "7", "--method", "ce") == 0  # a stage 1's weights
    real = drolt.unit.format_record

    def stop_in_stage_1(record, epochs):
        if record.get("stage") == 1:
            raise KeyboardInterrupt
        return real(record, epochs)
    monkeypatch.setattr(drolt.unit, "format_record", stop_in_stage_1)
    assert _train(tmp_path, out) == 130
    monkeypatch.setattr(drolt.unit, "format_record", real)
    capsys.readouterr()
    assert _train(tmp_path, out, "--stage1-weights", str(other / "stage1/model_best.pt")) == 2
    err = capsys.readouterr().err
    assert "whose stage 1 was trained here without --stage1-weights" in err and "stage 2 starts from" in err


def test_a_stage_2_started_before_banks_drew_views_per_pass_resumes_with_a_warning(tmp_path, capsys):
    from drolt.checkpoint import load_state, save_state
    out = tmp_path / "run"
    assert _train(tmp_path, out) == 0
    for name in ("done", "result.json"):  # stage 2 stopped after its last epoch, its state from then
        (out / "stage2" / name).unlink()
    state = load_state(out / "stage2" / "state.pt")
    del state["bank_draws"]  # as an earlier version wrote it
    save_state(state, out / "stage2" / "state.pt")
    capsys.readouterr()
    assert _train(tmp_path, out) == 0
    assert "warning: an earlier drolt started this stage 2" in capsys.readouterr().out


def test_unknown_setting_is_rejected_naming_the_key(tmp_path, capsys):
    assert _train(tmp_path, tmp_path / "run", "--set", "stage2.temprature=0.5") == 2
    err = capsys.readouterr().err
    assert "'temprature' (did you mean 'temperature'?) in stage2 of the command line" in err
    assert not (tmp_path / "run" / "stage1").exists()
    # a top-level key: out and device are named among the allowed ones, as --help and the README give them
    assert _train(tmp_path, tmp_path / "run", "--set", "outt=elsewhere") == 2
    err = capsys.readouterr().err
    assert "unknown key(s) 'outt' (did you mean 'out'?) in the command line; allowed: method, data, stage1, " \
           "stage2, out, device" in err


def test_stage_2_settings_for_a_one_stage_method_are_named_as_having_no_effect(tmp_path, capsys):
    assert _train(tmp_path, tmp_path / "run", "--method", "ce", "--set", "stage2.temperature=0.5") == 0
    out = capsys.readouterr().out
    assert "warning: ce trains stage 1 only, so stage2 settings [" in out and "'temperature'] have no effect" in out


def test_missing_data_folder_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    code = main(["train", "--dataset", "cifar10", "--data-root", str(tmp_path / "nowhere"), "--no-download",
                 "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "download" in err and "Traceback" not in err


@pytest.mark.parametrize("flags, message", [
    (["--rho", "0.5"], "rho must be >= 1"),
    (["--mode", "faithful", "--set", "stage2.eps_nonneg=true"], "clean-mode deviation"),
    (["--set", "stage1.epochs=ten"], "must be int"),
    (["--subset-seed", "-1"], "subset_seed must be between 0 and 4294967295"),
    (["--seed", "-3"], "seed must be between 0 and 4294967295"),
    (["--method", "ce", "--stage1-weights", "model_best.pt"], "drop --stage1-weights, or use --method dro_lt"),
    (["--device", "gpu"], "device must be auto, cpu, cuda or cuda:N; got 'gpu'"),
    (["--set", "stage1.lr_decay_epochs=[1,2"], "--set 'stage1.lr_decay_epochs=[1,2': '[1,2' is not a YAML value"),
    (["--set", "stage1=5"], "stage1 in the command line must be a mapping of settings (key: value"),
    (["--set", "data=[cifar10]"], "data in the command line must be a mapping of settings"),
    (["--set", "stage1.epochs=0"], "stage1 of the command line: epochs must be > 0, got 0"),
    (["--set", "device=gpu"], "device must be auto, cpu, cuda or cuda:N; got 'gpu'"),
])
def test_impossible_values_stop_before_any_work(tmp_path, capsys, flags, message):
    assert main(["train", "--out", str(tmp_path / "run"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("text, message", [
    ("out:\n", "out must be a folder (a path); got None"),
    ("device: 0\n", "device must be auto, cpu, cuda or cuda:N; got 0"),
])
def test_impossible_out_or_device_in_a_config_file_stop_before_any_work(tmp_path, capsys, text, message):
    config = tmp_path / "unit.yaml"
    config.write_text(text)
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_config_files_paths_are_relative_to_it_and_flags_and_set_override_them(tmp_path, monkeypatch):
    from harness.cli import build_parser, train_settings
    (tmp_path / "configs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    config = tmp_path / "configs" / "unit.yaml"
    config.write_text("out: runs/u\ndevice: cpu\ndata: {root: data, synthetic: 20}\n")
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def settings(*extra):
        return train_settings(build_parser().parse_args(["train", "--config", str(config), *extra]))
    tree, out, device = settings()
    assert out == tmp_path / "configs" / "runs" / "u" and device == "cpu"
    assert tree["data"]["root"] == str(tmp_path / "configs" / "data")
    assert settings("--set", "out=~/x", "--set", "device=auto")[1:] == (tmp_path / "home" / "x", "auto")
    assert settings("--out", "o", "--data-root", "d")[1] == tmp_path / "elsewhere" / "o"  # flags: the working folder
    assert settings("--data-root", "d")[0]["data"]["root"] == "d"
    config.write_text("method: ce\n")  # the default output folder is the working folder's runs/train
    assert settings()[1] == tmp_path / "elsewhere" / "runs" / "train"


def test_a_config_section_that_is_no_mapping_is_a_clear_error(tmp_path, capsys):
    config = tmp_path / "unit.yaml"
    config.write_text("method: ce\nstage2: [1, 2]\n")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "stage2 in" in err and "must be a mapping of settings" in err and "Traceback" not in err

"""Grid files without Ray: validation before any work, unit identity and sharing, `drolt run --dry-run` and
`drolt status` read from a storage folder."""
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from drolt.checkpoint import save_state
from harness.cli import main
from harness.grid import GridError, expand, load_grid
from harness.launch import storage_lock

BASE = {"name": "t", "storage": "runs", "data": {"root": "data", "synthetic": 20}, "datasets": ["cifar10"],
        "rhos": [10], "seeds": [0], "methods": ["ce", {"name": "dro_lt", "mode": "faithful"}],
        "stage1": {"epochs": 2, "drw_start_epoch": 1}, "stage2": {"epochs": 2, "classifier_epochs": 1}}
DROP = object()  # a change that removes the key


def _write(path, change=None, base=BASE):
    """Writes BASE with the top-level keys of `change` replaced (DROP removes one); returns the path."""
    grid = {k: v for k, v in {**base, **(change or {})}.items() if v is not DROP}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def _units(grid):
    return expand(grid)[1]


def _by_label(grid):
    return {u.label: u for u in _units(grid).values()}


# (change to BASE, words the message must hold: the key, the bad value and/or what is allowed)
INVALID = {
    "unknown_top_level_key": ({"epochs": 10}, ["'epochs'", "allowed", "datasets", "stage1"]),
    "missing_required_key": ({"seeds": DROP}, ["missing", "seeds"]),
    "name_not_a_string": ({"name": 5}, ["name", "str", "5"]),
    "seeds_not_a_list": ({"seeds": 0}, ["seeds", "list"]),
    "seeds_empty": ({"seeds": []}, ["seeds", "non-empty", "[]"]),
    "seeds_bool": ({"seeds": [True]}, ["seeds", "True"]),
    "seeds_listed_twice": ({"seeds": [0, 0]}, ["seeds", "twice"]),
    "subset_seeds_empty": ({"subset_seeds": []}, ["subset_seeds", "non-empty"]),
    "rho_below_one": ({"rhos": [10, 0.5]}, ["rhos", ">= 1", "0.5"]),
    "rho_a_string": ({"rhos": ["10"]}, ["rhos", "'10'"]),
    "unknown_dataset": ({"datasets": ["cifar1000"]}, ["datasets", "cifar1000", "cifar10, cifar100"]),
    "unknown_profile": ({"profile": "linear"}, ["profile", "linear", "exp, step"]),
    "unknown_method": ({"methods": ["focal"]}, ["methods[0].name", "focal", "ce, ldam_drw, dro_lt"]),
    "mode_typo": ({"methods": [{"name": "dro_lt", "mode": "faithfull"}]},
                  ["methods[0].mode", "faithfull", "faithful, clean"]),
    "method_unknown_key": ({"methods": [{"name": "ce", "lr": 0.1}]}, ["methods[0]", "'lr'", "allowed", "stage1"]),
    "method_listed_twice": ({"methods": ["ce", "ce"]}, ["lists ce twice"]),
    # a baseline is its stage 1, the same work in either mode
    "ce_in_both_modes": ({"methods": ["ce", {"name": "ce", "mode": "clean"}]},
                         ["lists ce twice", "one for both modes"]),
    "dro_lt_listed_twice_once_by_default_mode": ({"methods": [{"name": "dro_lt"}, {"name": "dro_lt", "mode": "faithful"}]},
                                                 ["same method", "dro_lt_faithful"]),
    "stage2_settings_on_a_stage1_method": ({"methods": [{"name": "ce", "stage2": {"epochs": 3}}]},
                                           ["ce has no stage 2", "stage2"]),
    "stage2_override_typo": ({"stage2": {"temprature": 1}}, ["'temprature'", "stage2", "allowed", "temperature"]),
    "method_stage1_override_typo": ({"methods": [{"name": "ce", "stage1": {"epoch": 3}}]},
                                    ["'epoch'", "stage1", "allowed", "epochs"]),
    # named where it was written, with the closest setting: not "in methods[ce].stage1"
    "stage1_override_typo": ({"stage1": {"lr_decay_epoch": [5]}},
                             ["'lr_decay_epoch' (did you mean 'lr_decay_epochs'?) in stage1;", "allowed"]),
    "stage1_setting_wrong_type": ({"stage1": {"epochs": "ten"}}, ["'epochs'", "int", "ten"]),
    "stage1_key_not_a_word": ({"stage1": {1: 2}}, ["unknown setting(s) 1 in stage1", "allowed"]),  # YAML's `1:`
    "stage1_zero_epochs": ({"stage1": {"epochs": 0}}, ["stage1: epochs must be > 0, got 0"]),
    "stage2_zero_batch_size": ({"stage2": {"batch_size": 0}}, ["stage2: batch_size must be > 0, got 0"]),
    # named where it was written, not in the first method it reaches
    "stage1_setting_a_float": ({"stage1": {"batch_size": 32.5}}, ["'batch_size' in stage1 must be int, got 32.5"]),
    "lr_decay_epochs_negative": ({"stage1": {"lr_decay_epochs": [-3]}}, ["lr_decay_epochs", ">= 1", "[-3]"]),
    "stage2_classifier_epochs_over_epochs": ({"stage2": {"epochs": 2, "classifier_epochs": 3}},
                                             ["classifier_epochs", "3", "epochs"]),
    "seed_set_in_a_stage_override": ({"stage1": {"seed": 3}}, ["stage1.seed", "seeds"]),
    "mode_set_in_a_stage_override": ({"stage2": {"mode": "clean"}}, ["stage2.mode", "mode"]),
    "stage1_method_set_in_a_method_override": ({"methods": [{"name": "ce", "stage1": {"method": "ldam_drw"}}]},
                                               ["methods[0].stage1.method", "methods: name"]),
    "stage1_method_set_for_every_method": ({"stage1": {"method": "ldam_drw"}}, ["stage1.method", "methods: name"]),
    "negative_seed": ({"seeds": [-1]}, ["seed", "between 0", "-1"]),
    "ldam_drw_that_never_reweights": ({"methods": ["ldam_drw"], "stage1": {"epochs": 20}},
                                      ["drw_start_epoch (160)", "epochs (20)", "not be LDAM-DRW"]),
    "negative_subset_seed": ({"subset_seeds": [-2]}, ["subset_seed", "between 0", "-2"]),
    "resources_unknown_key": ({"resources": {"gpu": 1}}, ["resources", "cpus", "gpus", "'gpu'"]),
    "resources_zero_cpus": ({"resources": {"cpus": 0}}, ["resources.cpus", "> 0"]),
    "resources_negative_gpus": ({"resources": {"gpus": -1}}, ["resources.gpus", ">= 0", "-1"]),
    "resources_gpus_fraction_over_one": ({"resources": {"gpus": 1.5}}, ["resources.gpus", "1.5", "fraction"]),
    "resources_cpus_a_string": ({"resources": {"cpus": "2"}}, ["resources.cpus", "number", "'2'"]),
    "data_unknown_key": ({"data": {"rooot": "x"}}, ["'rooot'", "data", "allowed", "root"]),
    "data_axis_set_under_data": ({"data": {"rho": 10}}, ["data.rho", "rhos"]),
    "data_download_not_bool": ({"data": {"download": "yes"}}, ["download", "bool", "yes"]),
    "data_synthetic_negative": ({"data": {"synthetic": -1}}, ["synthetic", ">= 0", "-1"]),
    "allow_cpu_fallback_not_bool": ({"allow_cpu_fallback": "yes"}, ["allow_cpu_fallback", "bool", "yes"]),
    "max_failures_negative": ({"max_failures": -1}, ["max_failures", ">= 0", "-1"]),
    "pack_seeds_zero": ({"pack_seeds": 0}, ["pack_seeds", ">= 1", "0"]),
    "pack_seeds_not_an_int": ({"pack_seeds": 2.5}, ["pack_seeds", "int", "2.5"]),
    # the name is the results folder's: "." or ".." would write the report beside other grids' or above them
    "name_of_dots_only": ({"name": ".."}, ["name", "letter or digit", "'..'"]),
    "name_one_dot": ({"name": "."}, ["name", "letter or digit", "'.'"]),
    "resources_cpus_nan": ({"resources": {"cpus": float("nan")}}, ["resources.cpus", "nan"]),
    "resources_gpus_nan": ({"resources": {"gpus": float("nan")}}, ["resources.gpus", "nan"]),
    "resources_cpus_infinite": ({"resources": {"cpus": float("inf")}}, ["resources.cpus", "inf"]),
    "rho_infinite": ({"rhos": [float("inf")]}, ["rhos", "inf", ">= 1"]),
    "data_root_null": ({"data": {"root": None}}, ["data.root", "None"]),
}


@pytest.mark.parametrize("change,words", INVALID.values(), ids=INVALID.keys())
def test_invalid_grid_is_rejected_with_a_message_naming_the_key_and_what_is_allowed(tmp_path, change, words):
    with pytest.raises(GridError) as err:
        load_grid(_write(tmp_path / "grid.yaml", change))
    for word in words:
        assert word in str(err.value), f"{word!r} missing from: {err.value}"


def test_a_folder_given_as_the_grid_file_is_a_clear_error(tmp_path, capsys):
    _write(tmp_path / "grids" / "a.yaml")
    assert main(["status", str(tmp_path / "grids")]) == 2
    err = capsys.readouterr().err
    assert "is a folder; give a grid file (YAML), e.g. one of ['a.yaml']" in err and "Every finished epoch" not in err


def test_a_home_folder_in_a_grid_files_paths_is_the_users(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    grid = load_grid(_write(tmp_path / "grids" / "g.yaml", {"storage": "~/runs", "data": {"root": "~/data"}}))
    assert grid.storage == tmp_path / "home" / "runs" and grid.data.root == str(tmp_path / "home" / "data")


def test_errors_that_train_nothing_do_not_speak_of_resuming_and_a_closed_pipe_ends_quietly(
        tmp_path, capsys, monkeypatch):
    path = _write(tmp_path / "grid.yaml")
    (tmp_path / "a_file").write_text("")
    # an OSError of a command that trains nothing: a folder asked for inside a file
    assert main(["report", str(path), "--out", str(tmp_path / "a_file" / "report")]) == 1
    err = capsys.readouterr().err
    assert "a_file" in err and "resume" not in err

    def closed_pipe(grid):
        raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr("harness.status.status_table", closed_pipe)
    monkeypatch.setattr("sys.stdout", sys.stdout)  # main points it at /dev/null; put it back afterwards
    assert main(["status", str(path)]) == 141  # `drolt status grid.yaml | head`
    assert capsys.readouterr().err == ""


def test_a_ray_address_where_nothing_listens_stops_at_once_naming_it():
    import socket

    from harness.launch import LaunchError, _check_reachable
    with socket.socket() as server:  # a free port, closed again: nothing listens there
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
    with pytest.raises(LaunchError, match=f"cannot connect to the Ray cluster at 127.0.0.1:{port}: .*ray start --head"):
        _check_reachable(f"127.0.0.1:{port}")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        _check_reachable(f"127.0.0.1:{server.getsockname()[1]}")  # something listens: Ray's turn
    _check_reachable("auto")  # Ray's own forms are left to it


def test_stage2_typo_is_rejected_even_when_no_method_has_a_stage_2(tmp_path):
    # Otherwise the typo is silently ignored until someone adds dro_lt to the grid.
    path = _write(tmp_path / "grid.yaml", {"methods": ["ce"], "stage2": {"temprature": 1}})
    with pytest.raises(GridError, match="temprature"):
        load_grid(path)


def test_synthetic_set_too_small_for_rho_is_rejected_at_load(tmp_path):
    # 20 images per class at rho 100 leaves the tail classes empty: every trial would fail on Ray instead.
    path = _write(tmp_path / "grid.yaml", {"rhos": [100]})
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert "synthetic" in str(err.value) and "rho" in str(err.value)


def test_float_written_as_2e_4_is_read_as_a_number(tmp_path):
    # PyYAML reads `2e-4` (no dot) and `1.0e30` (unsigned exponent) as text; people write settings that way.
    path = tmp_path / "grid.yaml"
    path.write_text("name: t\ndatasets: [cifar10]\nrhos: [10]\nseeds: [0]\nmethods: [ce]\n"
                    "stage1: {weight_decay: 2e-4, lr: 1.0e-1}\n")
    (unit,) = _units(load_grid(path)).values()
    assert unit.settings["stage1"]["weight_decay"] == 2e-4 and unit.settings["stage1"]["lr"] == 0.1


def test_invalid_grid_stops_drolt_run_and_status_with_exit_code_2(tmp_path, capsys):
    path = _write(tmp_path / "grid.yaml", {"methods": [{"name": "dro_lt", "mode": "faithfull"}]})
    assert main(["run", str(path)]) == 2
    assert "faithfull" in capsys.readouterr().err
    assert main(["status", str(path)]) == 2
    assert "faithful, clean" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # rejected before any work


def test_the_same_unit_in_two_grid_files_sharing_storage_has_the_same_id(tmp_path):
    small = load_grid(_write(tmp_path / "a" / "small.yaml", {"name": "small", "storage": "../shared",
                                                               "methods": ["ce"]}))
    big = load_grid(_write(tmp_path / "b" / "big.yaml", {"name": "big", "storage": "../shared", "seeds": [0, 1],
                                                           "rhos": [10, 5], "methods": ["ldam_drw", "ce"]}))
    assert small.storage == big.storage
    (ce,) = _units(small).values()
    assert _by_label(big)[ce.label].id == ce.id
    assert ce.id in _units(big)


def test_unit_id_ignores_key_order_and_int_versus_float_rho(tmp_path):
    grid = load_grid(_write(tmp_path / "grid.yaml"))
    reordered = dict(reversed(list(BASE.items())))
    same = load_grid(_write(tmp_path / "other.yaml", {"rhos": [10.0], "stage1": {"drw_start_epoch": 1, "epochs": 2}},
                            base=reordered))
    assert set(_units(grid)) == set(_units(same))


def test_ce_and_both_dro_lt_modes_share_one_stage1_unit(tmp_path):
    grid = load_grid(_write(tmp_path / "grid.yaml", {"methods": ["ce", {"name": "dro_lt", "mode": "faithful"},
                                                                 {"name": "dro_lt", "mode": "clean"}, "ldam_drw"]}))
    runs, units = expand(grid)
    assert len(runs) == 4
    stage1 = [u for u in units.values() if u.stage == 1]
    stage2 = [u for u in units.values() if u.stage == 2]
    assert len(stage1) == 2 and len(stage2) == 2  # CE (shared) and LDAM-DRW; DRO-LT faithful and clean
    ce_run = next(r for r in runs if r.method == "ce")
    assert {u.depends_on for u in stage2} == {ce_run.unit_id}
    assert {u.settings["handoff"] for u in stage2} == {"best", "last"}
    ldam_run = next(r for r in runs if r.method == "ldam_drw")
    assert ldam_run.unit_id != ce_run.unit_id and units[ldam_run.unit_id].settings["method"] == "ldam_drw"


def test_stage2_unit_depends_on_its_own_stage1_unit(tmp_path):
    grid = load_grid(_write(tmp_path / "grid.yaml", {"seeds": [0, 1], "rhos": [10, 5],
                                                     "methods": [{"name": "dro_lt", "mode": "clean"}]}))
    units = _units(grid)
    for unit in units.values():
        if unit.stage == 2:
            parent = units[unit.depends_on]
            assert parent.stage == 1 and unit.settings["stage1_unit"] == parent.id
            assert parent.settings["data"] == unit.settings["data"]
            assert parent.settings["stage1"]["seed"] == unit.settings["stage2"]["seed"]
    assert len({u.depends_on for u in units.values() if u.stage == 2}) == 4  # one per rho x seed


def test_stage1_units_come_before_the_stage2_units_that_need_them(tmp_path):
    grid = load_grid(_write(tmp_path / "grid.yaml", {"seeds": [0, 1]}))
    order = list(_units(grid))
    for position, unit in enumerate(_units(grid).values()):
        if unit.depends_on:
            assert order.index(unit.depends_on) < position


@pytest.mark.parametrize("change,stage1_changes,stage2_changes", [
    ({"stage1": {"epochs": 3, "drw_start_epoch": 1}}, True, True),
    ({"stage1": {"epochs": 2, "drw_start_epoch": 1, "lr": 0.05}}, True, True),
    ({"stage2": {"epochs": 2, "classifier_epochs": 1, "temperature": 0.5}}, False, True),
    ({"data": {"root": "data", "synthetic": 30}}, True, True),
    ({"profile": "step"}, True, True),
    ({"subset_seeds": [1]}, True, True),
    ({"data": {"root": "/somewhere/else", "synthetic": 20, "download": True}}, False, False),
    ({"storage": "elsewhere", "resources": {"cpus": 2, "gpus": 0.5}, "max_failures": 0, "name": "renamed"},
     False, False),
], ids=["stage1_epochs", "stage1_lr", "stage2_temperature", "synthetic_size", "profile", "subset_seed",
        "data_root_and_download", "storage_resources_retries_name"])
def test_unit_id_changes_with_the_work_and_only_with_it(tmp_path, change, stage1_changes, stage2_changes):
    before = list(_units(load_grid(_write(tmp_path / "a.yaml"))).values())
    after = list(_units(load_grid(_write(tmp_path / "b.yaml", change))).values())
    assert len(before) == len(after)
    for old, new in zip(before, after):  # expand() lists units in a fixed order
        assert (new.id != old.id) == (stage1_changes if old.stage == 1 else stage2_changes), old.label


def test_method_override_changes_only_that_methods_units(tmp_path):
    before = _by_label(load_grid(_write(tmp_path / "a.yaml", {"methods": ["ce", "ldam_drw"]})))
    after = _by_label(load_grid(_write(tmp_path / "b.yaml", {"methods": ["ce", {"name": "ldam_drw",
                                                                                 "stage1": {"lr": 0.05}}]})))
    assert {label for label in before if after[label].id != before[label].id} == {
        label for label in before if "ldam_drw" in label}


def _fake(storage, unit_id, *, done=False, epochs=0, error=None, state=False):
    folder = storage / unit_id
    folder.mkdir(parents=True)
    if epochs:
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in range(epochs)))
    if state:
        (folder / "state.pt").write_bytes(b"fake")
    if error:
        (folder / "error.json").write_text(json.dumps({"type": error[0], "message": error[1], "epochs_done": epochs}))
    if done:  # a finished unit: a readable result, weights that load and the marker
        (folder / "result.json").write_text(json.dumps({"last": {}, "best": {}}))
        for name in ("model_best.pt", "model_last.pt"):
            save_state({"w": torch.zeros(1)}, folder / name)
        (folder / "done").touch()


def test_dry_run_prints_units_to_run_and_done_and_writes_nothing(tmp_path, capsys):
    path = _write(tmp_path / "grid.yaml", {"methods": ["ce", {"name": "dro_lt", "mode": "faithful"},
                                                        {"name": "dro_lt", "mode": "clean"}]})
    grid = load_grid(path)
    (stage1,) = [u for u in _units(grid).values() if u.stage == 1]
    _fake(grid.storage, stage1.id, done=True, epochs=2)

    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 runs backed by 3 units (1 stage-1, 2 stage-2)" in out
    assert "1 done (reused, not run)" in out and "2 to run" in out
    assert f"{stage1.id}  {stage1.label}" in out
    assert sorted(p.name for p in grid.storage.iterdir()) == [stage1.id]

    assert main(["run", str(path), "--dry-run", "--storage", str(tmp_path / "fresh")]) == 0
    out = capsys.readouterr().out
    assert "3 to run" in out and "done" not in out
    assert not (tmp_path / "fresh").exists()


def test_labelled_variants_of_one_method_share_stage_1_and_get_a_row_each(tmp_path):
    # "vary and compare": two temperatures of DRO-LT clean in one grid, beside the paper's settings
    variants = [{"name": "dro_lt", "mode": "clean"},
                {"name": "dro_lt", "mode": "clean", "label": "clean_t05", "stage2": {"temperature": 0.5}}]
    grid = load_grid(_write(tmp_path / "grid.yaml", {"methods": ["ce", *variants]}))
    runs, units = expand(grid)
    assert [r.method for r in runs] == ["ce", "dro_lt_clean", "clean_t05"]
    assert len({runs[1].unit_id, runs[2].unit_id}) == 2  # other stage-2 work ...
    assert units[runs[1].unit_id].depends_on == units[runs[2].unit_id].depends_on == runs[0].unit_id  # ... one stage 1
    assert units[runs[2].unit_id].label.endswith("stage2 dro_lt clean (clean_t05)")
    assert units[runs[0].unit_id].label.endswith("stage1 ce")  # the variant's stage 1 is CE's own
    lr = load_grid(_write(tmp_path / "lr.yaml", {"methods": ["ce", {"name": "ce", "label": "ce_lr05",
                                                                   "stage1": {"lr": 0.05}}]}))
    assert [u.label.split("stage1 ")[1] for u in expand(lr)[1].values()] == ["ce", "ce (ce_lr05)"]
    from harness.report import method_order
    assert method_order(["clean_t05", "dro_lt_clean", "ce"]) == ["ce", "dro_lt_clean", "clean_t05"]


@pytest.mark.parametrize("methods, words", [
    ([{"name": "dro_lt"}, {"name": "dro_lt", "label": "again"}], ["'dro_lt_faithful' and 'again' are the same work"]),
    ([{"name": "dro_lt", "label": "ce", "stage2": {"temperature": 0.5}}], ["label 'ce' names one of the published"]),
    # a table or figure would print two "CE" rows or colours
    (["ce", {"name": "ce", "label": "ce", "stage1": {"lr": 0.05}}], ["twice"]),
    (["ce", {"name": "ce", "label": "CE", "stage1": {"lr": 0.05}}], ["label 'CE' names one of the published"]),
    ([{"name": "dro_lt", "label": "t 0.5"}], ["label must be a word", "'t 0.5'"]),
    ([{"name": "dro_lt"}, {"name": "dro_lt", "stage2": {"temperature": 0.5}}], ["twice", "give variants", "label"]),
])
def test_method_variants_need_a_label_of_their_own_and_other_settings(tmp_path, methods, words):
    with pytest.raises(GridError) as err:
        load_grid(_write(tmp_path / "grid.yaml", {"methods": methods}))
    for word in words:
        assert word in str(err.value), f"{word!r} missing from: {err.value}"


def test_dry_run_warns_when_the_data_is_missing_and_no_download_is_asked_for(tmp_path, capsys):
    # otherwise the plan looks fine and the real run stops at its start
    path = _write(tmp_path / "grid.yaml", {"data": {"root": "nowhere"}})
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"warning: CIFAR-10 not found: looked in {tmp_path / 'nowhere'}" in out
    assert "data: {download: true} in a grid" in out
    _write(tmp_path / "grid.yaml", {"data": {"root": "nowhere", "download": True}})
    assert main(["run", str(path), "--dry-run"]) == 0
    assert "not found" not in capsys.readouterr().out


def test_dry_run_lists_interrupted_units_with_their_epoch_and_failed_ones_with_their_reason(tmp_path, capsys):
    path = _write(tmp_path / "grid.yaml", {"methods": ["ce", "ldam_drw"],
                                           "stage1": {"epochs": 5, "drw_start_epoch": 4}})
    grid = load_grid(path)
    units = _by_label(grid)
    ce, ldam = units["cifar10 rho10 s0 seed0 stage1 ce"], units["cifar10 rho10 s0 seed0 stage1 ldam_drw"]
    _fake(grid.storage, ce.id, epochs=3, state=True)
    _fake(grid.storage, ldam.id, epochs=1, error=("TrainingDiverged", "stage 1 epoch 1: training loss is nan"))
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 to resume" in out and f"{ce.id}  {ce.label} after epoch 3" in out
    assert "1 failed before (to retry)" in out
    assert f"{ldam.id}  {ldam.label}: TrainingDiverged: stage 1 epoch 1: training loss is nan" in out


def test_a_failure_of_several_lines_is_one_line_in_status(tmp_path, capsys):
    path = _write(tmp_path / "grid.yaml", {"methods": ["ce"]})
    (unit,) = _units(load_grid(path)).values()
    _fake(load_grid(path).storage, unit.id, epochs=2, error=(
        "ActorDiedError", "The actor died unexpectedly before finishing this task.\n\tclass_name: ImplicitFunc\n"
                          "\tpid: 5521\nThe actor is dead because its worker process has died."))
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3  # the header, the unit, the totals
    assert out[1].endswith("ActorDiedError: The actor died unexpectedly before finishing this task. "
                           "(more in error.json)")


def _status_grid(tmp_path):
    path = _write(tmp_path / "grid.yaml", {"seeds": [0, 1], "methods": ["ce", "ldam_drw", "dro_lt"],
                                           "stage1": {"epochs": 4, "drw_start_epoch": 3}})
    grid = load_grid(path)
    units = _by_label(grid)
    label = "cifar10 rho10 s0 seed{} {}"
    _fake(grid.storage, units[label.format(0, "stage1 ce")].id, done=True, epochs=4)
    _fake(grid.storage, units[label.format(0, "stage1 ldam_drw")].id, epochs=2,
          error=("TrainingDiverged", "stage 1 epoch 2: training loss is nan; lower the learning rate"))
    _fake(grid.storage, units[label.format(1, "stage1 ce")].id, epochs=1, state=True)
    return path, grid, units, label


def _status_lines(out, units):
    """Returns {unit label: its status line} from `drolt status` output."""
    return {label: next(line for line in out.splitlines() if unit.id in line) for label, unit in units.items()}


def test_status_shows_done_failed_with_reason_interrupted_waiting_and_pending(tmp_path, capsys):
    path, grid, units, label = _status_grid(tmp_path)
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    lines = _status_lines(out, units)
    assert "no run in progress" in out.splitlines()[0]
    assert lines[label.format(0, "stage1 ce")].split()[:2] == ["done", "4/4"]
    failed = lines[label.format(0, "stage1 ldam_drw")]
    assert failed.split()[:2] == ["failed", "2/4"]
    assert "TrainingDiverged: stage 1 epoch 2: training loss is nan" in failed
    assert lines[label.format(1, "stage1 ce")].split()[:2] == ["interrupted", "1/4"]
    assert lines[label.format(0, "stage2 dro_lt faithful")].split()[:2] == ["pending", "0/2"]   # stage 1 is done
    assert lines[label.format(1, "stage2 dro_lt faithful")].split()[:2] == ["waiting", "0/2"]   # stage 1 is not
    assert lines[label.format(1, "stage1 ldam_drw")].split()[0] == "pending"
    assert out.splitlines()[-1] == "total: 1 done, 1 failed, 1 interrupted, 2 pending, 1 waiting of 6 units"


def test_status_and_report_of_a_grid_with_nothing_in_its_storage_say_where_they_looked(tmp_path, capsys):
    # e.g. `drolt run --storage elsewhere` followed by `drolt status` without it
    path = _write(tmp_path / "grid.yaml")
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith(f"nothing of this grid is in {load_grid(path).storage} yet")
    assert main(["report", str(path), "--out", str(tmp_path / "report")]) == 0  # the published numbers alone
    assert "report: no run of this grid in" in capsys.readouterr().out
    # ... but an empty report does not replace one made from the storage the run used: refused, writing nothing
    (tmp_path / "report" / "report.md").write_text("an earlier report")
    before = {f.name: f.read_bytes() for f in (tmp_path / "report").iterdir()}
    assert main(["report", str(path), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert f"no run of this grid is in {load_grid(path).storage}" in err and "pass the --storage" in err
    assert {f.name: f.read_bytes() for f in (tmp_path / "report").iterdir()} == before
    # ... and not once something of it is there: a unit that failed, or a run that just started its trials
    (load_grid(path).storage / next(iter(expand(load_grid(path))[1]))).mkdir(parents=True)
    assert main(["status", str(path)]) == 0
    assert main(["report", str(path), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "nothing of this grid" not in out and "no run of this grid" not in out


def test_status_tells_running_from_queued_units_while_a_drolt_run_holds_the_storage(tmp_path, capsys):
    from drolt.checkpoint import folder_lock
    path, grid, units, label = _status_grid(tmp_path)
    interrupted = next(u for u in _units(grid).values() if u.label == label.format(1, "stage1 ce"))
    fresh = units[label.format(1, "stage1 ldam_drw")]  # started, in its first epoch: no state yet
    with storage_lock(grid.storage, grid.path):
        assert main(["status", str(path)]) == 0  # started before, waiting for a trial slot now
        with folder_lock(grid.storage / interrupted.id), folder_lock(grid.storage / fresh.id):  # what trials hold
            assert main(["status", str(path)]) == 0
    queued, running = capsys.readouterr().out.split("grid t, storage")[1:]
    assert f"a `drolt run` of this grid is in progress (pid {os.getpid()}" in running.splitlines()[0]
    assert _status_lines(queued, units)[interrupted.label].split()[:2] == ["queued", "1/4"]
    assert _status_lines(running, units)[interrupted.label].split()[:2] == ["running", "1/4"]
    assert _status_lines(queued, units)[fresh.label].split()[:2] == ["pending", "0/4"]
    assert _status_lines(running, units)[fresh.label].split()[:2] == ["running", "0/4"]


def test_status_of_a_grid_sharing_its_storage_with_another_grids_run_shows_its_own_units_interrupted(
        tmp_path, capsys):
    path, grid, units, label = _status_grid(tmp_path)
    other = _write(tmp_path / "other.yaml", {"name": "other"})
    with storage_lock(grid.storage, load_grid(other).path):  # nothing of this grid will train them
        assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"a `drolt run` of another grid uses this storage (pid {os.getpid()}" in out.splitlines()[0]
    assert str(other) in out.splitlines()[0]
    assert _status_lines(out, units)[label.format(1, "stage1 ce")].split()[:2] == ["interrupted", "1/4"]


def test_unit_ids_of_earlier_versions_stay_valid():
    # results/smoke/runs.csv was written before compile_mode, augment_batches, compile_loss and graph_augment
    # existed: a grid left at their defaults must find those storage folders again instead of training
    # everything anew.
    import pandas as pd
    repo = Path(__file__).resolve().parents[1]
    recorded = pd.read_csv(repo / "results" / "smoke" / "runs.csv")
    _, units = expand(load_grid(repo / "experiments" / "smoke.yaml"))
    assert set(units) == set(recorded.unit_id) | set(recorded.stage1_unit_id)


def test_the_paper_grid_is_valid_and_runs_the_published_grid():
    # experiments/paper_cifar_lt.yaml is the file a user runs to reproduce the paper: it must load, give the
    # paper's 18 cells x 3 seeds of 4 methods (36 stage-1 units, CE shared with both DRO-LT modes) and
    # train every unit with the measured speed settings on.
    repo = Path(__file__).resolve().parents[1]
    from harness.plan import packs
    grid = load_grid(repo / "experiments" / "paper_cifar_lt.yaml")
    runs, units = expand(grid)
    assert len(runs) == 72
    assert sorted(u.stage for u in units.values()) == [1] * 36 + [2] * 36
    for unit in units.values():
        config = unit.config()
        stage = config.stage1 if unit.stage == 1 else config.stage2
        assert stage.graph_step and stage.fused_sgd and stage.precision == "bf16"
    # Two trials per GPU (results/benchmarks/h100_grid_estimate.txt); a cell's 3 seeds of CE and of LDAM-DRW
    # are one stage-1 trial, its 3 seeds in both DRO-LT modes one stage-2 trial.
    assert (grid.cpus, grid.gpus) == (2, 0.5)
    trials = packs(list(units.values()), grid.pack_seeds)
    assert sorted((pack[0].stage, len(pack)) for pack in trials) == [(1, 6)] * 6 + [(2, 6)] * 6
    for pack in trials:
        stage = [u.config().stage1 if pack[0].stage == 1 else u.config().stage2 for u in pack]
        other = ("method", ("ce", "ldam_drw")) if pack[0].stage == 1 else ("mode", ("faithful", "clean"))
        assert {(s.seed, getattr(s, other[0])) for s in stage} == {(seed, o) for seed in (0, 1, 2) for o in other[1]}
        assert len({(u.config().data.dataset, u.config().data.rho) for u in pack}) == 1  # one cell


def test_progress_counts_a_resumed_unit_from_the_epochs_it_already_has(tmp_path):
    from types import SimpleNamespace

    from harness.grid import Unit
    from harness.progress import GridProgress
    resumed, fresh = (Unit(uid, 1, {"stage1": {"epochs": 8}}, label) for uid, label in
                      (("aaaaaa111111", "resumed"), ("bbbbbb222222", "fresh")))
    (tmp_path / resumed.id).mkdir()
    (tmp_path / resumed.id / "metrics.jsonl").write_text('{"epoch": 0}\n{"epoch": 1}\n')
    lines = []
    progress = GridProgress([resumed, fresh], 0, 2, lambda u: 8, tmp_path, 0.0, lines.append)
    for unit in (resumed, fresh):
        progress.on_trial_start(0, [], SimpleNamespace(config={"units": [{"id": unit.id}]}))
    progress.on_trial_result(0, [], SimpleNamespace(config={"units": [{"id": fresh.id}]}), {"epoch": 0, "epoch_time": 1.0})
    progress.status_line()
    assert "running: aaaaaa ep 2/8, bbbbbb ep 1/8" in lines[-1]
    assert "ETA ~0m06s" in lines[-1]  # 6 + 7 epochs left, 1 s each, 2 at a time


def test_progress_goes_on_counting_the_failures_of_the_runs_first_wave(tmp_path):
    from harness.grid import Unit
    from harness.progress import GridProgress
    unit = Unit("cccccc333333", 2, {"stage2": {"epochs": 4}}, "a stage-2 unit")
    lines = []
    progress = GridProgress([unit], 2, 6, lambda u: 4, tmp_path, 0.0, lines.append, failed_before=3)
    progress._finish(unit, ok=False)
    assert lines[-1].endswith("(2/6 units done, 4 failed)")


def test_ray_tunes_per_trial_lines_stay_silent(capsys):
    from ray.tune.progress_reporter import TrialProgressCallback

    from harness.progress import SilentTrialProgress

    class Trial:  # what the printers read of a trial that reported no epoch
        last_result: dict = {}

        def __str__(self):
            return "t1"
    TrialProgressCallback().on_trial_complete(0, [], Trial())
    assert "Trial t1 completed" in capsys.readouterr().out  # what Ray 2.60 prints, whatever the verbosity
    SilentTrialProgress().on_trial_complete(0, [], Trial())
    assert capsys.readouterr().out == ""


def test_seeds_pack_only_with_units_of_the_same_other_settings_and_in_even_packs(tmp_path):
    from harness.launch import packs
    spec = {"seeds": [0, 1, 2, 3, 4], "rhos": [10, 20], "pack_seeds": 3,
            "methods": ["ce", "ldam_drw", "dro_lt", {"name": "dro_lt", "mode": "clean"}]}
    grid = load_grid(_write(tmp_path / "g.yaml", spec))
    units = list(_units(grid).values())
    trials = packs(units, grid.pack_seeds)
    stage1 = [pack for pack in trials if pack[0].stage == 1]
    # 5 seeds of CE and of LDAM-DRW at each of 2 rhos: 10 units per rho, in packs of 3, 3, 2, 2
    assert sorted(len(pack) for pack in stage1) == [2, 2, 2, 2, 3, 3, 3, 3]
    for pack in stage1:
        own = ("seed", "method")
        shared = [{**u.settings, "method": None, "stage1": {k: v for k, v in u.settings["stage1"].items()
                                                            if k not in own}} for u in pack]
        settings = {json.dumps(setting, sort_keys=True) for setting in shared}
        assert len(settings) == 1 and len({tuple(u.settings["stage1"][k] for k in own) for u in pack}) == len(pack)
    assert any(len({u.settings["method"] for u in pack}) == 2 for pack in stage1)  # CE and LDAM-DRW side by side

    def unit_of(u):
        return u.settings["stage2"]["seed"], u.settings["stage2"]["mode"], u.settings["data"]["rho"]
    # stage 2: 5 seeds x faithful and clean x 2 rhos, whose class-aware passes are of one length: 20 units, in
    # the fewest packs of at most 3, runs of the grid's order
    stage2 = [pack for pack in trials if pack[0].stage == 2]
    assert [len(pack) for pack in stage2] == [3, 3, 3, 3, 3, 3, 2]
    assert [unit_of(u) for pack in stage2 for u in pack] == [unit_of(u) for u in units if u.stage == 2]
    assert any(len({u.settings["data"]["rho"] for u in pack}) == 2 for pack in stage2)
    assert sorted(u.id for pack in trials for u in pack) == sorted(u.id for u in units)
    assert all(len(pack) == 1 for pack in packs(units, 1))
    # a pack of a cell's size holds one cell: its seeds in both modes
    cells = [pack for pack in packs(units, 10) if pack[0].stage == 2]
    assert [sorted(unit_of(u) for u in pack) for pack in cells] == [
        sorted((seed, mode, rho) for seed in range(5) for mode in ("faithful", "clean")) for rho in (10, 20)]
    assert [len(pack) for pack in packs(units, 20) if pack[0].stage == 2] == [20]
    # a shuffled stage-2 pass is as long as the rho's data set: those units pack within their rho only
    shuffled = load_grid(_write(tmp_path / "s.yaml", {**spec, "stage2": {"sampler": "shuffle"}}))
    apart = [pack for pack in packs(list(_units(shuffled).values()), 20) if pack[0].stage == 2]
    assert sorted(len(pack) for pack in apart) == [10, 10]
    assert all(len({u.settings["data"]["rho"] for u in pack}) == 1 for pack in apart)


def test_a_finished_stage_1_whose_weights_are_damaged_is_rebuilt_not_trusted(tmp_path):
    # Trusted, the damaged weights would fail every stage-2 unit built on them, run after run.
    from harness.plan import make_plan
    grid = load_grid(_write(tmp_path / "grid.yaml"))
    stage1 = next(u for u in _units(grid).values() if u.stage == 1)
    _fake(grid.storage, stage1.id, done=True)
    folder = grid.storage / stage1.id
    assert make_plan(grid).states[stage1.id].status == "done"
    (folder / "model_best.pt").write_bytes((folder / "model_best.pt").read_bytes()[:100])
    plan = make_plan(grid)
    assert plan.states[stage1.id].status == "partial"
    assert f"{stage1.id}  {stage1.label} after epoch 0: its weights are damaged" in plan.describe()


def test_a_key_given_twice_in_a_grid_file_is_refused_naming_it_and_its_line(tmp_path):
    # PyYAML would keep the second silently: here a 3-seed grid quietly run with one seed.
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(BASE, sort_keys=False) + "seeds: [0]\n")
    with pytest.raises(GridError, match=r"(?s)'seeds' is given twice.*grid.yaml\", line"):
        load_grid(path)


def test_the_plan_warns_of_lr_decay_epochs_a_shortened_schedule_never_reaches(tmp_path, capsys):
    path = _write(tmp_path / "grid.yaml", {"stage1": {"epochs": 20, "drw_start_epoch": 1,
                                                      "lr_decay_epochs": [5, 30]}})
    assert main(["run", str(path), "--dry-run"]) == 0
    assert "warning: stage1.lr_decay_epochs [30] fall at or after the last of 20 epochs" in capsys.readouterr().out
    ok = {"stage1": {"epochs": 20, "drw_start_epoch": 1, "lr_decay_epochs": [5, 15]}}
    assert main(["run", str(_write(tmp_path / "ok.yaml", ok)), "--dry-run"]) == 0
    assert "warning" not in capsys.readouterr().out


def test_yaml_merge_keys_still_work_in_grid_files(tmp_path):
    # Keys beside a merge override the merged ones: not a key given twice.
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in BASE.items() if k != "methods"}, sort_keys=False)
                    + "methods:\n  - {name: ce, stage1: &short {epochs: 3, lr: 0.05}}\n"
                    + "  - {name: ldam_drw, stage1: {<<: *short, lr: 0.02, drw_start_epoch: 1}}\n")
    units = _by_label(load_grid(path))
    ldam = units["cifar10 rho10 s0 seed0 stage1 ldam_drw"].settings["stage1"]
    assert (ldam["epochs"], ldam["lr"]) == (3, 0.02)


def test_a_unit_that_failed_without_running_is_recorded_as_failed_not_as_a_ctrl_c(tmp_path, monkeypatch):
    # A trial that dies before run_stage clears a damaged unit's `done` marker (an out-of-memory error while
    # loading data) leaves the unit looking unfinished: Ray's error says it failed, not that it was stopped.
    from types import SimpleNamespace

    import ray.tune

    from harness.launch import _fit_wave
    from harness.plan import make_plan
    grid = load_grid(_write(tmp_path / "grid.yaml", {"methods": ["ce"]}))
    (unit,) = _units(grid).values()
    _fake(grid.storage, unit.id, done=True)
    (grid.storage / unit.id / "result.json").write_text("{damaged")

    class FailedWave:
        def __init__(self, *args, **kwargs):
            pass

        def fit(self):
            return [SimpleNamespace(config={"units": [{"id": unit.id}]}, error=RuntimeError("CUDA out of memory"))]
    monkeypatch.setattr(ray.tune, "Tuner", FailedWave)
    _fit_wave(make_plan(grid), [unit], {"cpu": 1, "gpu": 0}, lambda line: None, 30.0, 0.0)
    assert "CUDA out of memory" in (grid.storage / unit.id / "error.json").read_text()


def test_a_pack_that_fails_records_its_error_only_in_units_that_neither_finished_nor_diverged(tmp_path):
    from drolt.training import TrainingDiverged
    from drolt.unit import record_failure
    from trainables.stage import _record_unfinished
    finished, diverged, running = (tmp_path / name for name in ("finished", "diverged", "running"))
    for folder in (finished, diverged, running):
        folder.mkdir()
    (finished / "done").touch()
    record_failure(diverged, TrainingDiverged("stage 1 epoch 3 (seed 1, trained packed with others): loss is nan", 1))
    _record_unfinished([finished, diverged, running], RuntimeError("CUDA out of memory"))
    assert not (finished / "error.json").exists()
    assert json.loads((diverged / "error.json").read_text())["type"] == "TrainingDiverged"  # its own cause kept
    assert "CUDA out of memory" in json.loads((running / "error.json").read_text())["message"]


def test_a_stage2_pack_of_both_modes_trains_each_unit_and_one_whose_stage1_weights_fail_fails_alone(
        tmp_path, monkeypatch):
    import dataclasses

    from ray import tune

    from trainables.stage import train_units
    grid = load_grid(_write(tmp_path / "grid.yaml", {"seeds": [0, 1], "pack_seeds": 4,
                                                     "methods": ["dro_lt", {"name": "dro_lt", "mode": "clean"}]}))
    units = _units(grid)
    reports = []
    monkeypatch.setattr(tune, "report", reports.append)

    def train(stage):
        pack = [u for u in units.values() if u.stage == stage]
        train_units({"units": [{**dataclasses.asdict(u), "drolt": u.drolt_settings()} for u in pack],
                     "storage": str(grid.storage)})
        return pack
    train(1)
    pack = [u for u in units.values() if u.stage == 2]  # seeds 0 and 1, faithful and clean: one trial
    broken = next(u for u in pack if u.settings["stage2"]["seed"] == 0 and u.settings["handoff"] == "best")
    weights = grid.storage / broken.depends_on / "model_best.pt"
    weights.write_bytes(b"garbage")  # seed 0's stage-1 best weights damaged after it finished
    reports.clear()
    train(2)
    error = json.loads((grid.storage / broken.id / "error.json").read_text())
    assert str(weights) in error["message"] and "rebuilds them" in error["message"]
    trained = [u for u in pack if u is not broken]  # seed 0 clean (from model_last.pt) and both modes of seed 1
    for unit in trained:
        assert not (grid.storage / unit.id / "error.json").exists()
        result = json.loads((grid.storage / unit.id / "result.json").read_text())
        assert result["packed_seeds"] == 3 and result["config"]["mode"] == unit.settings["stage2"]["mode"]
        assert result["selected"] == ("best" if unit.settings["stage2"]["mode"] == "faithful" else "last")
    assert {pack[r["unit"]].id for r in reports} == {u.id for u in trained}  # records reported as their own


def test_a_stage2_trial_of_two_rhos_trains_each_unit_on_its_own_data_as_it_trains_alone(tmp_path, monkeypatch):
    import dataclasses
    import shutil

    from ray import tune

    from harness.plan import packs
    from trainables.stage import train_units
    monkeypatch.setattr(tune, "report", lambda metrics: None)
    # 30 images per class: at rho 10 some classes are few-shot (< 20 images), at rho 1.2 none, so that the
    # many/medium/few splits tell the rhos' class counts apart
    grid = load_grid(_write(tmp_path / "grid.yaml", {"rhos": [10, 1.2], "pack_seeds": 2, "methods": ["dro_lt"],
                                                     "data": {"root": "data", "synthetic": 30}}))
    units = _units(grid)

    def train(pack, storage):
        train_units({"units": [{**dataclasses.asdict(u), "drolt": u.drolt_settings()} for u in pack],
                     "storage": str(storage)})
    for pack in packs([u for u in units.values() if u.stage == 1], grid.pack_seeds):
        train(pack, grid.storage)
    [pack] = packs([u for u in units.values() if u.stage == 2], grid.pack_seeds)
    assert sorted(u.settings["data"]["rho"] for u in pack) == [1.2, 10]
    alone = tmp_path / "alone"
    shutil.copytree(grid.storage, alone)
    train(pack, grid.storage)
    for unit in pack:
        train([unit], alone)
        packed, single = (json.loads((storage / unit.id / "result.json").read_text())
                          for storage in (grid.storage, alone))
        assert (packed["packed_seeds"], single["packed_seeds"]) == (2, 1)
        # the same training up to float32 rounding (compared after the first epoch: on random images the
        # classifier epoch's large losses amplify it): its own rho's samples, class weights and shot splits
        first = [json.loads((storage / unit.id / "metrics.jsonl").read_text().splitlines()[0])
                 for storage in (grid.storage, alone)]
        for key in ("loss", "top1", "ncm_top1", "medium", "few"):
            assert first[0][key] == pytest.approx(first[1][key], rel=1e-3, abs=1e-3, nan_ok=True), key
        assert [packed["last"][f"{split}_n"] for split in ("medium", "few")] == \
            ([10, 0] if unit.settings["data"]["rho"] == 1.2 else [2, 8])


def test_a_stage2_trial_whose_storage_fails_for_a_moment_raises_for_ray_to_retry(tmp_path, monkeypatch):
    import dataclasses
    import errno

    import trainables.stage
    grid = load_grid(_write(tmp_path / "grid.yaml", {"methods": ["dro_lt"]}))
    unit = next(u for u in _units(grid).values() if u.stage == 2)

    def stale(path):
        raise OSError(errno.ESTALE, "Stale file handle", str(path))
    monkeypatch.setattr(trainables.stage, "load_state", stale)
    with pytest.raises(OSError, match="Stale file handle"):  # Ray retries a trial that raises
        trainables.stage.train_units({"units": [{**dataclasses.asdict(unit), "drolt": unit.drolt_settings()}],
                                      "storage": str(grid.storage)})
    assert json.loads((grid.storage / unit.id / "error.json").read_text())["type"] == "OSError"


def test_a_retried_trial_clears_its_earlier_attempts_error_so_the_unit_reads_unfinished_not_failed(
        tmp_path, monkeypatch):
    # While Ray retries the trial the unit is not failed: `drolt status` says so, and a Ctrl-C during the
    # retry must find it stopped (harness.launch stops the grid there) rather than failed (the next wave ran).
    import dataclasses
    import errno

    import trainables.stage
    from harness.storage import read_state
    grid = load_grid(_write(tmp_path / "grid.yaml", {"methods": ["dro_lt"]}))
    unit = next(u for u in _units(grid).values() if u.stage == 2)
    config = {"units": [{**dataclasses.asdict(unit), "drolt": unit.drolt_settings()}], "storage": str(grid.storage)}

    def stale(path):
        raise OSError(errno.ESTALE, "Stale file handle", str(path))
    monkeypatch.setattr(trainables.stage, "load_state", stale)
    with pytest.raises(OSError):
        trainables.stage.train_units(config)
    assert read_state(grid.storage, unit).status == "failed"

    seen = []

    def stopped_by_ray(*args, **kwargs):  # the retry, stopped by a Ctrl-C while it trains
        seen.append(read_state(grid.storage, unit).status)
        raise KeyboardInterrupt
    monkeypatch.setattr(trainables.stage, "load_state", lambda path: {})
    monkeypatch.setattr(trainables.stage, "run_pack", stopped_by_ray)
    with pytest.raises(KeyboardInterrupt):
        trainables.stage.train_units(config)
    assert seen == ["pending"] and read_state(grid.storage, unit).status == "pending"


def test_a_retried_trial_keeps_a_diverged_units_error(tmp_path, monkeypatch):
    import dataclasses

    import trainables.stage
    from drolt.training import TrainingDiverged
    from drolt.unit import record_failure
    monkeypatch.setattr(trainables.stage, "run_pack", lambda *args, **kwargs: None)
    grid = load_grid(_write(tmp_path / "grid.yaml", {"methods": ["ce"]}))
    unit = next(iter(_units(grid).values()))
    folder = grid.storage / unit.id
    folder.mkdir(parents=True)
    record_failure(folder, TrainingDiverged("stage 1 epoch 3: loss is nan", 3))
    trainables.stage.train_units({"units": [{**dataclasses.asdict(unit), "drolt": unit.drolt_settings()}],
                                  "storage": str(grid.storage)})
    assert json.loads((folder / "error.json").read_text())["type"] == "TrainingDiverged"


@pytest.mark.parametrize("flags", [["run", "--dry-run", "--storage"], ["status", "--storage"], ["report", "--out"],
                                   ["report", "--storage"]])
def test_a_file_given_as_a_folder_is_named_before_any_work(tmp_path, capsys, flags):
    path, afile = _write(tmp_path / "grid.yaml"), tmp_path / "notes.txt"
    afile.write_text("kept")
    assert main([flags[0], str(path), *flags[1:], str(afile)]) == 2
    err = capsys.readouterr().err
    assert f"{afile} is a file, not a folder" in err and "resume" not in err
    assert afile.read_text() == "kept"

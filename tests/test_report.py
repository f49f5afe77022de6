"""Tables and figures from run records: the tidy frame, mean/std/n cells, empty splits, the published
comparison, missing runs, the Markdown and LaTeX writers and every figure file.

The records are written by hand in the format drolt.unit.run_stage writes (result.json, metrics.jsonl, done),
for a CIFAR-100-LT grid (official data: 35/35/30 classes at rho 100, 69/31/0 at rho 10) with two seeds.
"""
import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest

from drolt.metrics import split_accuracies
from harness.figures import FIGURES, train_counts
from harness.grid import expand, load_grid
import harness.report
from harness.report import (build_frame, format_cell, paper_table, shot_table, summarize, to_latex, to_markdown,
                            write_report)

GRID = """\
name: tiny
storage: runs
datasets: [cifar100]
rhos: [100, 10]
seeds: [0, 1]
methods: [ce, {name: dro_lt, mode: faithful}, {name: dro_lt, mode: clean}]
stage1: {epochs: 3, warmup_epochs: 1, lr_decay_epochs: [2]}
stage2: {epochs: 3, classifier_epochs: 1}
"""
# Final-epoch top-1 at rho 100 for seed 0; seed 1 adds 2 (so std = sqrt(2) = 1.41), rho 10 adds 15.
TOP1 = {"ce": 40.0, "dro_lt_faithful": 47.0, "dro_lt_clean": 45.0}
SPLIT_OFFSET = {"many": 10.0, "medium": 0.0, "few": -10.0}


def _epoch(stage: int, epoch: int, top1: float, counts: list[int], phase: str = "") -> dict:
    # Per-class accuracy: the split's level around top-1, so the split means are known numbers.
    per_class = [top1 + SPLIT_OFFSET["many" if n > 100 else "medium" if n >= 20 else "few"] for n in counts]
    record = {"stage": stage, "epoch": epoch, "lr": 0.1, "train_loss": 1.0, "top1": top1, "top5": top1 + 20,
              "per_class": per_class, **split_accuracies(per_class, counts), "ncm_top1": top1 - 5,
              **{f"ncm_{s}": v - 5 for s, v in split_accuracies(per_class, counts).items() if "_n" not in s},
              "train_images_per_s": 1000.0, "epoch_time": 1.0}
    if stage == 2:
        record.update(phase=phase, radii=[1.0 - 0.01 * epoch * (c % 7) for c in range(len(counts))])
    return record


def _write_unit(storage, unit, top1: float, source: str = "official") -> None:
    data = unit.settings["data"]
    counts = train_counts(data["dataset"], data["rho"], data["profile"], data["synthetic"])
    phases = ["feature", "feature", "classifier"]
    # Best-on-test is the middle epoch (top-1 + 1); the final epoch has `top1`.
    history = [_epoch(unit.stage, e, t, counts, phases[e]) for e, t in enumerate((top1 - 1, top1 + 1, top1))]
    folder = storage / unit.id
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    result = {"stage": unit.stage, "selected": "best", "reported": history[1], "last": history[2],
              "best": history[1], "config": {}, "wall_time_s": 100.0 * unit.stage,
              "provenance": {"code_version": "abc123", "torch_version": "2.14.1", "device": "cpu (x86_64)",
                             "precision": "fp32", "data_source": source, "python": "3.11"}}
    (folder / "result.json").write_text(json.dumps(result))
    (folder / "done").touch()


@pytest.fixture
def grid(tmp_path):
    """The tiny grid with every unit finished."""
    return _finished_grid(tmp_path, GRID)


def _finished_grid(tmp_path, text: str):
    (tmp_path / "tiny.yaml").write_text(text)
    grid = load_grid(tmp_path / "tiny.yaml")
    runs, units = expand(grid)
    for run in runs:
        top1 = TOP1[run.method] + 2 * run.seed + (15 if run.rho == 10 else 0)
        if not (grid.storage / run.unit_id).exists():
            _write_unit(grid.storage, units[run.unit_id], top1)
        if units[run.unit_id].depends_on and not (grid.storage / units[run.unit_id].depends_on).exists():
            _write_unit(grid.storage, units[units[run.unit_id].depends_on], top1 - 5)
    return grid


def _unfinish(grid, **where) -> None:
    for run in expand(grid)[0]:
        if all(getattr(run, k) == v for k, v in where.items()):
            (grid.storage / run.unit_id / "done").unlink()


def test_frame_has_one_row_per_run_with_settings_metrics_wall_times_and_provenance(grid):
    frame = build_frame(grid)
    assert len(frame) == 12  # 2 rhos x 2 seeds x 3 methods
    row = frame[(frame.method == "dro_lt_faithful") & (frame.rho == 100) & (frame.seed == 1)].iloc[0]
    # epochs counted from 1
    assert (row.last_top1, row.best_top1, row.best_epoch, row.selected) == (49.0, 50.0, 2, "best")
    assert (row.last_many_n, row.last_medium_n, row.last_few_n) == (35, 35, 30)
    assert row.last_many == pytest.approx(59.0) and row.last_ncm_few == pytest.approx(34.0)
    assert (row.stage1_wall_time_s, row.stage2_wall_time_s) == (100.0, 200.0)  # stage 1 from its own unit
    assert row.stage1_epochs == 3 and row.stage2_classifier_epochs == 1 and row.stage1_lr_decay_epochs == "[2]"
    assert (row.code_version, row.device, row.data_source) == ("abc123", "cpu (x86_64)", "official")
    ce = frame[frame.method == "ce"].iloc[0]
    assert ce["mode"] == "faithful" and math.isnan(ce.stage2_wall_time_s) and ce.unit_id == ce.stage1_unit_id


def test_cells_show_mean_and_sample_std_over_seeds_with_n():
    assert format_cell(41.0, math.sqrt(2), 2) == "41.00 ± 1.41 (n=2)"
    assert format_cell(40.0, math.nan, 1) == "40.00 (n=1)"  # one seed: no spread to show
    assert format_cell(math.nan, math.nan, 0) == "–"


def test_table_aggregates_seeds_and_gives_delta_against_published_number(grid):
    table = paper_table(build_frame(grid))
    ce = table.loc["CE"]
    assert ce[("CIFAR-100-LT", "ρ=100", "ours")] == "41.00 ± 1.41 (n=2)"
    assert ce[("CIFAR-100-LT", "ρ=100", "paper")] == "38.32"
    assert ce[("CIFAR-100-LT", "ρ=100", "Δ")] == "+2.68"
    # Both DRO-LT modes compare against the one published DRO-LT number (47.31 at rho 100).
    assert table.loc["DRO-LT (clean)"][("CIFAR-100-LT", "ρ=100", "Δ")] == "-1.31"
    assert table.loc["DRO-LT (faithful)"][("CIFAR-100-LT", "ρ=10", "Δ")] == "-0.41"
    best = paper_table(build_frame(grid), selection="best")
    assert best.loc["CE"][("CIFAR-100-LT", "ρ=100", "ours")] == "42.00 ± 1.41 (n=2)"


def test_empty_shot_split_stays_missing_not_zero(grid):
    frame = build_frame(grid)
    stats = summarize(frame).set_index(["rho", "method", "selection", "metric", "split"])
    assert math.isnan(stats.loc[(10.0, "ce", "last", "top1", "few"), "mean"])  # 0 few-shot classes at rho 10
    assert stats.loc[(10.0, "ce", "last", "top1", "few"), "classes"] == 0
    assert stats.loc[(100.0, "ce", "last", "top1", "all"), "classes"] == 100
    table = shot_table(frame)
    assert table.loc[("few", "CE"), ("CIFAR-100-LT", "ρ=10", "ours")] == "–"
    # The split sizes are printed (SPEC 5), so "–" reads as an empty split, not as runs missing.
    assert table.loc[("few", "classes"), ("CIFAR-100-LT", "ρ=10", "ours")] == "0"
    assert [table.loc[(s, "classes"), ("CIFAR-100-LT", "ρ=100", "ours")] for s in ("many", "medium", "few")] \
        == ["35", "35", "30"]
    assert table.loc[("few", "CE"), ("CIFAR-100-LT", "ρ=100", "ours")] == "31.00 ± 1.41 (n=2)"
    # The published split numbers exist for DRO-LT at rho 100 only.
    assert table.loc[("many", "DRO-LT (faithful)"), ("CIFAR-100-LT", "ρ=100", "paper")] == "64.70"
    assert table.loc[("many", "CE"), ("CIFAR-100-LT", "ρ=100", "paper")] == "–"


def test_markdown_and_latex_of_a_small_table(grid):
    frame = build_frame(grid)
    table = paper_table(frame[frame.rho == 100], methods=["ce", "ldam_drw", "dro_lt_faithful"])
    assert to_markdown(table) == (
        "| method | CIFAR-100-LT ρ=100 | paper | Δ |\n"
        "| :-- | --: | --: | --: |\n"
        "| CE | 41.00 ± 1.41 (n=2) | 38.32 | +2.68 |\n"
        "| LDAM-DRW | – | 42.04 | – |\n"
        "| DRO-LT (faithful) | 48.00 ± 1.41 (n=2) | 47.31 | +0.69 |\n")
    assert to_latex(table, "top-1 (%), 100% test", "tab:t") == (
        "\\begin{table}[t]\n"
        "\\centering\n"
        "\\caption{top-1 (\\%), 100\\% test}\n"
        "\\label{tab:t}\n"
        "\\begin{tabular}{lrrr}\n"
        "\\toprule\n"
        " & \\multicolumn{3}{c}{CIFAR-100-LT, $\\rho$=100} \\\\\n"
        "\\cmidrule(lr){2-4}\n"
        "Method & ours & paper & $\\Delta$ \\\\\n"
        "\\midrule\n"
        "CE & 41.00 $\\pm$ 1.41 (n=2) & 38.32 & +2.68 \\\\\n"
        "LDAM-DRW & -- & 42.04 & -- \\\\\n"
        "DRO-LT (faithful) & 48.00 $\\pm$ 1.41 (n=2) & 47.31 & +0.69 \\\\\n"
        "\\bottomrule\n"
        "\\end{tabular}\n"
        "\\end{table}\n")


def test_report_writes_tables_frame_and_every_figure(grid, tmp_path):
    notes = []
    paths = write_report(grid, tmp_path / "out", log=notes.append)
    names = {p.name for p in paths}
    assert {"runs.csv", "summary.csv", "report.md", "top1_last.tex", "shots_best.csv"} <= names
    assert "missing.txt" not in names
    for name in FIGURES:
        png = (tmp_path / "out" / name).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000, name
    assert not any("skipped" in n for n in notes)
    runs = (tmp_path / "out" / "runs.csv").read_text().splitlines()
    assert len(runs) == 13 and "unit_id" in runs[0]
    assert "| CE | 41.00 ± 1.41 (n=2) | 38.32 | +2.68 |" in (tmp_path / "out" / "report.md").read_text()


def test_partial_grid_reports_what_exists_and_lists_what_is_missing(grid, tmp_path):
    _unfinish(grid, method="dro_lt_clean", rho=100.0)
    _unfinish(grid, method="dro_lt_clean", rho=10.0, seed=1)
    write_report(grid, tmp_path / "out", log=None)
    missing = (tmp_path / "out" / "missing.txt").read_text().splitlines()
    assert len(missing) == 3 and all("DRO-LT (clean)" in line for line in missing)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Missing: 3 run(s) not finished" in report
    assert "| DRO-LT (clean) | – | 47.31 | – | 60.00 (n=1) | 63.41 | -3.41 |" in report
    # Once the runs finish, a rebuilt report no longer claims anything is missing.
    for run in expand(grid)[0]:
        (grid.storage / run.unit_id / "done").touch()
    write_report(grid, tmp_path / "out", log=None)
    assert not (tmp_path / "out" / "missing.txt").exists()


def test_a_run_finishing_while_the_report_is_built_is_counted_once(grid, tmp_path, monkeypatch):
    _unfinish(grid, method="ce", rho=10.0, seed=1)
    real = harness.report.build_frame

    def finish_right_after(g):
        frame = real(g)
        for run in expand(g)[0]:
            (g.storage / run.unit_id / "done").touch()
        return frame
    monkeypatch.setattr(harness.report, "build_frame", finish_right_after)
    write_report(grid, tmp_path / "out", log=None)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "11 of 12 runs finished" in report and "\n\n**Missing: 1 run(s) not finished**" in report
    assert "seed1 CE" in (tmp_path / "out" / "missing.txt").read_text()


def test_delta_is_the_difference_of_the_numbers_printed_beside_it(tmp_path):
    grid = _finished_grid(tmp_path, GRID.replace("rhos: [100, 10]", "rhos: [100]")
                          .replace("methods: [ce, ", "methods: [ce]\n#"))
    for seed, top1 in ((0, 41.94), (1, 41.95)):  # mean 41.945, printed 41.95; paper 38.32
        run = next(r for r in expand(grid)[0] if r.seed == seed)
        result = json.loads((grid.storage / run.unit_id / "result.json").read_text())
        result["last"]["top1"] = top1
        (grid.storage / run.unit_id / "result.json").write_text(json.dumps(result))
    table = paper_table(build_frame(grid)).to_string()
    assert "41.95 ± 0.01 (n=2)" in table and "+3.63" in table and "+3.62" not in table


def test_wall_time_counts_finished_stage_1_units_whose_stage_2_has_not_finished(tmp_path):
    grid = _finished_grid(tmp_path, GRID.replace("rhos: [100, 10]", "rhos: [100]")
                          .replace("methods: [ce, ", "methods: [").replace(", {name: dro_lt, mode: clean}", ""))
    _unfinish(grid, seed=1)  # stage 2 of seed 1; its stage 1 (100 s) is done
    write_report(grid, tmp_path / "out", log=None)
    # 2 stage-1 units of 100 s and one stage 2 of 200 s: 400 s
    assert "wall time: 0.11 h over all finished units" in (tmp_path / "out" / "report.md").read_text()


def test_figures_without_data_are_skipped_and_named(grid, tmp_path):
    _unfinish(grid, method="dro_lt_faithful")
    _unfinish(grid, method="dro_lt_clean")
    notes = []
    paths = write_report(grid, tmp_path / "out", log=notes.append)
    assert "radii.png" not in {p.name for p in paths}
    assert any("radii.png: no finished DRO-LT run" in n for n in notes)
    assert "skipped: radii.png" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("other", [{"data_source": "synthetic"}, {"profile": "step"}])
def test_runs_on_synthetic_data_or_the_step_profile_get_no_published_comparison(grid, other):
    # The published numbers are for real CIFAR with the exponential profile.
    frame = build_frame(grid).assign(**other)
    table = paper_table(frame)
    assert [c[2] for c in table.columns] == ["ours", "ours"]
    assert summarize(frame)["delta"].isna().all()


@pytest.mark.parametrize("setting", ["data: {synthetic: 100}", "profile: step"])
def test_a_grid_the_published_numbers_do_not_describe_gets_no_comparison_before_its_runs_finish(
        tmp_path, setting):
    (tmp_path / "other.yaml").write_text(GRID.replace("name: tiny", f"name: other\n{setting}"))
    grid = load_grid(tmp_path / "other.yaml")
    assert not (grid.storage.exists() and any(grid.storage.iterdir()))  # no run finished: nothing to read
    write_report(grid, tmp_path / "out", log=lambda line: None)
    assert "paper" not in (tmp_path / "out" / "top1_last.csv").read_text().splitlines()[0]
    assert "38.32" not in (tmp_path / "out" / "report.md").read_text()  # CE's published rho-100 number


def test_every_published_number_the_report_prints_has_its_source_listed_also_before_runs_finish(tmp_path):
    # Paper columns are shown for every comparable cell of the grid, finished or not: their sources too.
    (tmp_path / "tiny.yaml").write_text(GRID)
    write_report(load_grid(tmp_path / "tiny.yaml"), tmp_path / "out", log=None)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "38.32" in report  # CE's published CIFAR-100-LT rho-100 top-1
    listed = next(line for line in report.splitlines() if line.startswith("Published numbers: "))
    assert "Table 2" in listed and "Awesome-Long-Tailed" in listed  # overall top-1, and DRO-LT's shot splits


def test_a_report_says_when_its_cells_pool_several_long_tailed_subsets(tmp_path):
    (tmp_path / "two.yaml").write_text(GRID.replace("name: tiny", "name: two\nsubset_seeds: [0, 1]"))
    write_report(load_grid(tmp_path / "two.yaml"), tmp_path / "out", log=lambda line: None)
    assert "training seeds and the 2 long-tailed subsets (subset_seeds), pooled" in (
        tmp_path / "out" / "report.md").read_text()


def test_ncm_accuracy_is_tabled_overall_and_per_split_without_published_numbers(grid, tmp_path):
    frame = build_frame(grid)
    table = shot_table(frame, metric="ncm")
    assert table.loc[("all", "CE"), ("CIFAR-100-LT", "ρ=100", "ours")] == "36.00 ± 1.41 (n=2)"  # top-1 - 5
    assert table.loc[("many", "CE"), ("CIFAR-100-LT", "ρ=100", "ours")] == "46.00 ± 1.41 (n=2)"
    assert table.loc[("few", "classes"), ("CIFAR-100-LT", "ρ=100", "ours")] == "30"
    assert {c[2] for c in table.columns} == {"ours"}  # the published numbers are top-1 only
    write_report(grid, tmp_path / "out", log=lambda line: None)
    assert "NCM) accuracy (%), overall and many / medium / few, final epoch" in (
        tmp_path / "out" / "report.md").read_text()
    assert (tmp_path / "out" / "ncm_best.tex").exists()


def test_top5_accuracy_is_tabled_and_summarised_without_published_numbers(grid, tmp_path):
    # SPEC 5 reports top-1 and top-5; the published numbers are top-1 only.
    table = paper_table(build_frame(grid), metric="top5")
    assert table.loc["CE", ("CIFAR-100-LT", "ρ=100", "ours")] == "61.00 ± 1.41 (n=2)"  # final top-1 + 20
    assert {c[2] for c in table.columns} == {"ours"}
    write_report(grid, tmp_path / "out", log=lambda line: None)
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    top5 = summary[(summary["metric"] == "top5") & (summary["selection"] == "last")]
    assert set(top5["split"]) == {"all"} and top5["published"].isna().all()
    assert "## Top-5 accuracy (%), final epoch" in (tmp_path / "out" / "report.md").read_text()


def test_a_report_says_when_runs_read_data_that_is_not_the_official_release(grid, tmp_path):
    # e.g. a re-encoded CIFAR copy: still compared with the paper, but the report must say so
    for unit_id in {run.unit_id for run in expand(grid)[0] if run.method == "ce"}:
        path = grid.storage / unit_id / "result.json"
        result = json.loads(path.read_text())
        result["provenance"]["data_source"] = "unofficial"
        path.write_text(json.dumps(result))
    write_report(grid, tmp_path / "out", log=lambda line: None)
    assert "**4 run(s) read data files that are not the official release**" in (
        tmp_path / "out" / "report.md").read_text()


def test_a_labelled_variant_gets_a_row_after_the_papers_methods_and_no_published_number(tmp_path):
    methods = "methods: [{name: dro_lt, mode: clean, label: clean_t05, stage2: {temperature: 0.5}}, ce]"
    (tmp_path / "v.yaml").write_text(GRID.replace(GRID.splitlines()[5], methods))
    grid = load_grid(tmp_path / "v.yaml")
    runs, units = expand(grid)
    for unit in units.values():
        _write_unit(grid.storage, unit, 50.0)
    table = paper_table(build_frame(grid))
    assert list(table.index) == ["CE", "clean_t05"]
    cell = ("CIFAR-100-LT", "ρ=100")
    assert table.loc["CE", (*cell, "paper")] == "38.32" and table.loc["clean_t05", (*cell, "paper")] == "–"
    assert table.loc["clean_t05", (*cell, "ours")] == "50.00 ± 0.00 (n=2)"


def test_a_setting_left_at_its_default_has_its_value_in_the_frame_beside_a_variant_that_changes_it(tmp_path):
    # Some settings enter a unit's id only when changed (harness.grid.ID_IF_CHANGED); the frame still says
    # what every run used, so that filtering runs.csv on a setting finds the runs at its default.
    methods = ("methods: [{name: dro_lt, mode: clean, label: ncm10, stage1: {ncm_every: 10}, "
               "stage2: {augment_batches: 4}}, {name: dro_lt, mode: clean}]")
    (tmp_path / "v.yaml").write_text(GRID.replace(GRID.splitlines()[5], methods))
    grid = load_grid(tmp_path / "v.yaml")
    for unit in expand(grid)[1].values():
        _write_unit(grid.storage, unit, 50.0)
    frame = build_frame(grid)
    by_label = {label: rows.iloc[0] for label, rows in frame.groupby("method")}
    assert (by_label["ncm10"].stage1_ncm_every, by_label["dro_lt_clean"].stage1_ncm_every) == (10, 1)
    assert (by_label["ncm10"].stage2_augment_batches, by_label["dro_lt_clean"].stage2_augment_batches) == (4, 8)
    assert by_label["dro_lt_clean"].stage2_graph_step == False  # noqa: E712 (a numpy bool)
    assert "stage2_ncm_every" not in frame  # a stage-1 setting only


def test_a_dro_lt_row_shows_the_provenance_of_the_stage_1_it_started_from(grid, tmp_path):
    # e.g. stage 1 trained by an older checkout, stage 2 by today's
    runs, units = expand(grid)
    dro = next(run for run in runs if run.method == "dro_lt_clean")
    path = grid.storage / units[dro.unit_id].depends_on / "result.json"
    result = json.loads(path.read_text())
    result["provenance"]["code_version"] = "old999"
    path.write_text(json.dumps(result))
    frame = build_frame(grid)
    row = frame[(frame["method"] == "dro_lt_clean") & (frame["unit_id"] == dro.unit_id)].iloc[0]
    assert row["code_version"] == "abc123" and row["stage1_code_version"] == "old999"
    write_report(grid, tmp_path / "out", log=lambda line: None)
    assert "- code version: abc123, old999" in (tmp_path / "out" / "report.md").read_text()


def test_report_names_the_storage_relative_to_where_it_was_built(grid, tmp_path, monkeypatch):
    # Reports get committed and shared: a storage below the working directory is named without this machine's path.
    monkeypatch.chdir(grid.storage.parent)
    write_report(grid, tmp_path / "out", log=lambda line: None)
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"Built from the records in `{grid.storage.name}`" in report and str(tmp_path) not in report


def test_the_wall_time_total_counts_the_time_of_seeds_trained_packed_once(grid, tmp_path):
    # 4 stage-1 units of 100 s (shared by all three methods) and 8 stage-2 units of 200 s: 2000 s unpacked
    write_report(grid, tmp_path / "alone", log=lambda line: None)
    assert "- wall time: 0.56 h" in (tmp_path / "alone" / "report.md").read_text()
    for unit in expand(grid)[1].values():  # both seeds of a rho and mode trained as one pack, in both stages
        path = grid.storage / unit.id / "result.json"
        result = json.loads(path.read_text())
        path.write_text(json.dumps({**result, "own_time_s": result["wall_time_s"] / 2}))
    frame = build_frame(grid)
    assert (frame["stage1_own_time_s"] == 50).all() and (frame["stage2_own_time_s"].dropna() == 100).all()
    write_report(grid, tmp_path / "packed", log=lambda line: None)
    assert "- wall time: 0.28 h" in (tmp_path / "packed" / "report.md").read_text()  # 200 + 800 s


def test_records_of_another_form_still_give_the_tables_and_name_the_figures_they_could_not_draw(grid, tmp_path):
    # a finished CE run written without its split sizes and wall time (by hand, or by another version)
    run = next(r for r in expand(grid)[0] if r.method == "ce" and r.rho == 100 and r.seed == 0)
    path = grid.storage / run.unit_id / "result.json"
    result = json.loads(path.read_text())
    for selection in ("last", "best"):
        for split in ("many_n", "medium_n", "few_n"):
            del result[selection][split]
    del result["wall_time_s"]
    path.write_text(json.dumps(result))
    notes = []
    paths = {p.name for p in write_report(grid, tmp_path / "out", log=notes.append)}
    assert {"report.md", "top1_last.csv", "curves.png"} <= paths
    assert any(n.startswith("report: skipped per_class_accuracy.png: could not be drawn (ValueError: run ")
               for n in notes)
    assert math.isnan(build_frame(grid).set_index("unit_id").loc[run.unit_id, "stage1_wall_time_s"])
    assert "12 of 12 runs finished" in (tmp_path / "out" / "report.md").read_text()


def test_report_files_are_utf8_whatever_the_locale(grid, tmp_path):
    # the tables hold ρ, ± and Δ: under an ASCII locale (Python's UTF-8 mode off) they must still be written,
    # and a grid file written in UTF-8 read
    grid_file = tmp_path / "tiny.yaml"
    grid_file.write_text("# ρ = n_max / n_min\n" + grid_file.read_text(), encoding="utf-8")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    code = "import sys; from harness.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "report", str(tmp_path / "tiny.yaml"), "--out",
                           str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "± 1.41" in (tmp_path / "out" / "report.md").read_text(encoding="utf-8")

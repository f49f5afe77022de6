"""Paper-style tables and figures from a grid's records alone: the tidy frame, the tables and their writers.

Output, under `results/<grid name>/`:
  runs.csv (+ runs.parquet)   the tidy frame: one row per finished run
  summary.csv                 mean / std / n per method, cell, split and selection, with the published number
  top1_last.*, shots_last.*   headline tables (final epoch) as .tex and .csv
  top5_last.*                 top-5 accuracy (final epoch; no published numbers)
  ncm_last.*                  nearest-centroid accuracy, overall and per split (final epoch)
  top1_best.*, shots_best.*,  the same tables for the best epoch on test (labelled as such)
  top5_best.*, ncm_best.*
  report.md                   every table in Markdown, what is missing, the figures, provenance
  missing.txt                 the runs not finished yet (only when some are)
  *.png                       the figures (see harness/figures.py)
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import pandas as pd

from drolt.checkpoint import require_folder
from drolt.config import DATA_LOCATION
from drolt.metrics import SPLITS

from .grid import DEFAULT_LABELS, METHOD_NAMES, Grid, Run, expand, stage_settings
from .published import published
from .storage import is_done, unit_result

METHOD_ORDER = DEFAULT_LABELS  # the paper's methods, in its order
DATASET_NAMES = {"cifar10": "CIFAR-10-LT", "cifar100": "CIFAR-100-LT"}
SELECTIONS = {"last": "final epoch", "best": "best epoch on test"}
# Test accuracy of the classifier (top-1, top-5) and of nearest-centroid prediction (NCM); top-5 has no
# many / medium / few values (the splits average per-class top-1).
ACCURACIES = ("top1", "top5", "ncm")
METRICS = ("top1", "top5", "many", "medium", "few", "many_n", "medium_n", "few_n",
           "ncm_top1", "ncm_many", "ncm_medium", "ncm_few")
PROVENANCE = ("code_version", "torch_version", "device", "precision", "data_source")
STAGE1_PROVENANCE = ("code_version", "torch_version", "device")  # precision: the stage1_precision setting
RUN_KEYS = ("dataset", "rho", "profile", "subset_seed", "seed", "method", "mode")
DASH = "–"
Log = Callable[[str], None]


# ----------------------------------------------------------------------------------------------- the frame

def build_frame(grid: Grid) -> pd.DataFrame:
    """Returns one row per finished run of the grid: settings, last/best metrics, wall times, provenance."""
    runs, units = expand(grid)
    rows = [_row(grid, run, units) for run in runs if is_done(grid.storage, run.unit_id)]
    if not rows:
        return pd.DataFrame(columns=[*RUN_KEYS, "unit_id"])
    # Column order of a DRO-LT row (it has every column): stage-2 settings beside stage 1's, not at the end.
    template = max(rows, key=len)
    frame = pd.DataFrame(rows, columns=list(dict.fromkeys([*template, *(k for row in rows for k in row)])))
    for column in frame.columns:
        # Settings only DRO-LT rows have would turn into floats (3.0 epochs) beside the baselines' NaN.
        values = [row[column] for row in rows if column in row]
        if len(values) < len(rows) and values and all(type(v) is int for v in values):
            frame[column] = frame[column].astype("Int64")
        elif len(values) < len(rows) and values and all(type(v) is bool for v in values):
            frame[column] = frame[column].astype("boolean")
    return frame


def _row(grid: Grid, run: Run, units: dict) -> dict:
    unit = units[run.unit_id]
    result = unit_result(grid.storage, unit.id)
    stage1 = result if unit.depends_on is None else _result_or_none(grid.storage, unit.depends_on)
    row: dict = {"dataset": run.dataset, "rho": run.rho, "profile": grid.profile, "subset_seed": run.subset_seed,
                 "seed": run.seed, "method": run.method, "mode": run.mode,
                 # Both stages pick by mode: faithful reports the best epoch on test, clean the last one.
                 "selected": "best" if run.mode == "faithful" else "last"}
    # Where the files were read from is left out, as it is of the unit id: it does not change the work.
    row.update({f"data_{k}": v for k, v in unit.settings["data"].items()
                if k not in ("dataset", "rho", "profile", "subset_seed", *DATA_LOCATION)})
    for stage in ("stage1", "stage2"):
        row.update({f"{stage}_{k}": _scalar(v) for k, v in stage_settings(unit, stage).items()})
    for selection in SELECTIONS:
        record = result[selection]
        row.update({f"{selection}_{m}": record.get(m, math.nan) for m in METRICS})
        row[f"{selection}_epoch"] = record["epoch"] + 1  # counted from 1, as drolt train and the curves count
    row["reported_top1"] = row[f"{row['selected']}_top1"]
    for stage, done in (("stage1", stage1), ("stage2", result if unit.stage == 2 else None)):
        wall = done.get("wall_time_s", math.nan) if done else math.nan  # a result written by hand may lack it
        row[f"{stage}_wall_time_s"] = wall
        # Seeds trained packed (pack_seeds) each record the pack's time; their own share divides it among them.
        row[f"{stage}_own_time_s"] = done.get("own_time_s", wall) if done else math.nan
    row["unit_id"] = unit.id
    row["stage1_unit_id"] = unit.depends_on or unit.id
    row.update({k: result.get("provenance", {}).get(k, "unknown") for k in PROVENANCE})
    # A DRO-LT row's own provenance is its stage 2's; the stage 1 it started from may come from other code
    # or another machine.
    row.update({f"stage1_{k}": (stage1 or {}).get("provenance", {}).get(k, "unknown") for k in STAGE1_PROVENANCE})
    return row


def _result_or_none(storage: Path, unit_id: str) -> Optional[dict]:
    return unit_result(storage, unit_id) if is_done(storage, unit_id) else None


def _scalar(value):
    # Lists (LR decay epochs) become JSON text so that CSV and Parquet columns hold one type.
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else value


# ---------------------------------------------------------------------------------------------- the tables

def summarize(frame: pd.DataFrame, compare: bool = True) -> pd.DataFrame:
    """Returns mean, std (ddof=1), n, published and delta per dataset, rho, method, selection, metric (test
    top-1, top-5 or NCM) and split, with the split's number of classes. `compare=False` leaves out the published
    numbers (a grid whose settings they do not describe); they are left out anyway for cells whose records
    say so (`_incomparable_cells`)."""
    rows = []
    if frame.empty:
        return pd.DataFrame(columns=["dataset", "rho", "method", "selection", "metric", "split", "classes", "mean",
                                     "std", "n", "published", "delta", "source"])
    incomparable = _incomparable_cells(frame)
    for (dataset, rho, method), group in frame.groupby(["dataset", "rho", "method"], sort=False):
        for selection in SELECTIONS:
            for metric in ACCURACIES:
                for split in _splits(metric):
                    values = group[_metric(selection, split, metric)].astype(float).dropna()
                    mean = values.mean() if len(values) else math.nan
                    pub = (published(dataset, rho, method, split)
                           if compare and metric == "top1" and (dataset, rho) not in incomparable else None)
                    rows.append({"dataset": dataset, "rho": rho, "method": method, "selection": selection,
                                 "metric": metric, "split": split, "classes": _classes(group, split),
                                 "mean": mean, "std": values.std(ddof=1) if len(values) > 1 else math.nan,
                                 "n": len(values), "published": pub.value if pub else math.nan,
                                 "delta": mean - pub.value if pub else math.nan,
                                 "source": pub.source if pub else ""})
    return pd.DataFrame(rows)


def _classes(rows: pd.DataFrame, split: str) -> Optional[int]:
    """Returns how many classes the split holds in these runs (of one cell), None without runs."""
    sizes = rows[[f"last_{s}_n" for s in SPLITS]].dropna()
    if sizes.empty:
        return None
    first = sizes.iloc[0]
    return int(first.sum()) if split == "all" else int(first[f"last_{split}_n"])


def _incomparable_cells(frame: pd.DataFrame) -> set[tuple[str, float]]:
    # The published numbers are for real CIFAR with the exponential profile. Runs on the generated stand-in
    # data measure the plumbing, not the method, and the step profile splits the classes otherwise: a delta
    # against a published number would be meaningless there, so such cells get no comparison.
    if frame.empty:
        return set()
    other = pd.Series(False, index=frame.index)
    if "data_source" in frame:
        other |= frame["data_source"] == "synthetic"
    if "profile" in frame:
        other |= frame["profile"] != "exp"
    return set(zip(frame.loc[other, "dataset"], frame.loc[other, "rho"]))


def _splits(metric: str) -> tuple[str, ...]:
    return ("all",) if metric == "top5" else ("all", *SPLITS)


def _metric(selection: str, split: str, metric: str = "top1") -> str:
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}; got {selection!r}")
    if metric not in ACCURACIES:
        raise ValueError(f"metric must be one of {', '.join(ACCURACIES)}; got {metric!r}")
    if split not in _splits(metric):
        raise ValueError(f"split must be one of {', '.join(_splits(metric))} for {metric}; got {split!r}")
    if metric == "top5":
        return f"{selection}_top5"
    prefix = "" if metric == "top1" else f"{metric}_"
    return f"{selection}_{prefix}{'top1' if split == 'all' else split}"


def paper_table(frame: pd.DataFrame, split: str = "all", selection: str = "last",
                methods: Optional[Sequence[str]] = None,
                cells: Optional[Sequence[tuple[str, float]]] = None, compare: bool = True,
                metric: str = "top1") -> pd.DataFrame:
    """Returns the methods x (dataset, rho) table of "mean ± std (n=k)" strings, with paper and Δ columns
    (top-1 only: the published numbers are top-1).

    `methods` and `cells` default to those in the frame; pass the grid's to show unfinished ones as "–".
    `compare=False` leaves the paper and Δ columns out (see `summarize`).
    """
    return _table(frame, [split], selection, methods, cells, metric, compare).droplevel("split")


def shot_table(frame: pd.DataFrame, selection: str = "last", methods: Optional[Sequence[str]] = None,
               cells: Optional[Sequence[tuple[str, float]]] = None, metric: str = "top1",
               compare: bool = True) -> pd.DataFrame:
    """Returns the many/medium/few table: per split a row of its number of classes in each cell, then the
    methods' rows; the columns of paper_table. `metric="ncm"` gives NCM accuracy, overall first."""
    splits = list(SPLITS) if metric == "top1" else ["all", *SPLITS]
    return _table(frame, splits, selection, methods, cells, metric, compare)


def _table(frame: pd.DataFrame, splits: list[str], selection: str, methods: Optional[Sequence[str]],
           cells: Optional[Sequence[tuple[str, float]]], metric: str = "top1",
           compare: bool = True) -> pd.DataFrame:
    for split in splits:
        _metric(selection, split, metric)
    methods = list(methods) if methods is not None else method_order(frame["method"])
    cells = list(cells) if cells is not None else _cells(frame)
    stats = summarize(frame, compare)
    stats = stats[(stats["selection"] == selection) & (stats["metric"] == metric)]
    stats = stats.set_index(["dataset", "rho", "method", "split"])
    columns, with_paper, incomparable = [], {}, _incomparable_cells(frame)
    for dataset, rho in cells:
        # A cell gets paper and Δ columns only when some method of the table has a published number there.
        with_paper[dataset, rho] = compare and metric == "top1" and (dataset, rho) not in incomparable and any(
            published(dataset, rho, m, s) for m in methods for s in splits)
        head = (DATASET_NAMES.get(dataset, dataset), f"ρ={rho:g}")
        columns += [(*head, "ours")] + ([(*head, "paper"), (*head, "Δ")] if with_paper[dataset, rho] else [])
    rows, index = [], []
    for split in splits:
        if split != "all":  # how many classes the split holds: an empty one reads "–" below, not missing runs
            row = []
            for cell in cells:
                sizes = [c for (d, r, _, sp), c in stats["classes"].items() if (d, r) == cell and sp == split
                         and pd.notna(c)]
                row += [str(int(sizes[0])) if sizes else DASH] + (["", ""] if with_paper[cell] else [])
            rows.append(row)
            index.append((split, "classes"))
        for method in methods:
            row = []
            for dataset, rho in cells:
                key = (dataset, rho, method, split)
                stat = stats.loc[key] if key in stats.index else None
                row.append(format_cell(stat["mean"], stat["std"], stat["n"]) if stat is not None else DASH)
                if with_paper[dataset, rho]:
                    pub = published(dataset, rho, method, split)
                    mean = stat["mean"] if stat is not None else math.nan
                    row += [f"{pub.value:.2f}" if pub else DASH,
                            _shown_delta(mean, pub.value) if pub and not math.isnan(mean) else DASH]
            rows.append(row)
            index.append((split, METHOD_NAMES.get(method, method)))
    return pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["split", "method"]),
                        columns=pd.MultiIndex.from_tuples(columns, names=["dataset", "rho", "value"]))


def _cells(frame: pd.DataFrame) -> list[tuple[str, float]]:
    # Paper order: datasets as listed, rho from the hardest (largest) down.
    pairs = set(zip(frame["dataset"], frame["rho"]))
    order = {d: i for i, d in enumerate(DATASET_NAMES)}
    return sorted(pairs, key=lambda p: (order.get(p[0], len(order)), p[0], -p[1]))


def method_order(labels: Iterable[str], known: Sequence[str] = METHOD_ORDER) -> list[str]:
    """Returns the method labels present (or names, with `known` the paper's methods' names), the paper's
    methods first in the paper's order, then the grid's own variants (methods with a `label`) in the order
    first seen."""
    present = list(dict.fromkeys(labels))
    return [m for m in known if m in present] + [m for m in present if m not in known]


def _shown_delta(mean: float, paper: float) -> str:
    """Returns ours − paper as the table prints both (to 2 decimals), so that the three columns add up; a
    difference within rounding is "+0.00", not "-0.00"."""
    return f"{round(float(f'{mean:.2f}') - paper, 2) + 0.0:+.2f}"  # numpy's round() can round otherwise


def format_cell(mean: float, std: float, n: int) -> str:
    """Returns "mean ± std (n=k)", "mean (n=1)" for one seed, or "–" when nothing was measured."""
    if n == 0 or math.isnan(mean):
        return DASH
    if n == 1 or math.isnan(std):
        return f"{mean:.2f} (n={n})"
    return f"{mean:.2f} ± {std:.2f} (n={n})"


# --------------------------------------------------------------------------------------------- the writers

def to_markdown(table: pd.DataFrame) -> str:
    """Returns the table as a GitHub Markdown table (row labels left, numbers right)."""
    names = [n for n in table.index.names]
    header = [*names, *(_flat_label(c) for c in table.columns)]
    align = [":--"] * len(names) + ["--:"] * len(table.columns)
    lines = [_md_row(header), _md_row(align)]
    for labels, values in zip(table.index, table.itertuples(index=False)):
        labels = labels if isinstance(labels, tuple) else (labels,)
        lines.append(_md_row([*labels, *values]))
    return "\n".join(lines) + "\n"


def _flat_label(column: tuple) -> str:
    dataset, rho, value = column
    return f"{dataset} {rho}" if value == "ours" else value


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def to_latex(table: pd.DataFrame, caption: str, label: str) -> str:
    """Returns the table as a booktabs LaTeX `table` float: one header row per cell group, one per value."""
    names = list(table.index.names)
    groups: list[tuple[str, int]] = []
    for dataset, rho, _ in table.columns:
        head = f"{dataset}, {rho}"
        if groups and groups[-1][0] == head:
            groups[-1] = (head, groups[-1][1] + 1)
        else:
            groups.append((head, 1))
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex(caption)}}}", rf"\label{{{label}}}",
             r"\begin{tabular}{" + "l" * len(names) + "r" * len(table.columns) + "}", r"\toprule"]
    top, rules, start = [""] * len(names), [], len(names) + 1
    for head, span in groups:
        top.append(rf"\multicolumn{{{span}}}{{c}}{{{_tex(head)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    lines += [" & ".join(top) + r" \\", " ".join(rules),
              " & ".join([*(_tex(n.capitalize()) for n in names), *(_tex(v) for *_, v in table.columns)]) + r" \\",
              r"\midrule"]
    previous = None
    for labels, values in zip(table.index, table.itertuples(index=False)):
        labels = labels if isinstance(labels, tuple) else (labels,)
        if len(labels) > 1 and previous is not None and labels[0] != previous:
            lines.append(r"\midrule")  # between the many / medium / few blocks
        previous = labels[0]
        lines.append(" & ".join(_tex(str(c)) for c in (*labels, *values)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "±": r"$\pm$", "–": "--", "Δ": r"$\Delta$", "ρ": r"$\rho$"}


def _tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def to_csv(table: pd.DataFrame) -> str:
    """Returns the table as CSV with one flat header row ("CIFAR-10-LT ρ=100 paper", ...)."""
    flat = table.copy()
    flat.columns = [" ".join(c) if c[2] != "ours" else f"{c[0]} {c[1]}" for c in table.columns]
    return flat.reset_index().to_csv(index=False)


# ---------------------------------------------------------------------------------------------- the report

_OPTIMISTIC = "best epoch on test (selected on the test set: optimistic)"
TABLES = {  # file stem: (what, selection, metric)
    "top1_last": ("top-1 accuracy (%), final epoch", "last", "top1"),
    "top5_last": ("top-5 accuracy (%), final epoch", "last", "top5"),
    "shots_last": ("many / medium / few-shot accuracy (%), final epoch", "last", "top1"),
    "ncm_last": ("nearest-centroid (NCM) accuracy (%), overall and many / medium / few, final epoch", "last",
                 "ncm"),
    "top1_best": (f"top-1 accuracy (%), {_OPTIMISTIC}", "best", "top1"),
    "top5_best": (f"top-5 accuracy (%), {_OPTIMISTIC}", "best", "top5"),
    "shots_best": (f"many / medium / few-shot accuracy (%), {_OPTIMISTIC}", "best", "top1"),
    "ncm_best": (f"nearest-centroid (NCM) accuracy (%), overall and many / medium / few, {_OPTIMISTIC}", "best",
                 "ncm"),
}


def write_report(grid: Grid, out_dir: Optional[str | Path] = None, log: Optional[Log] = print) -> list[Path]:
    """Rebuilds every table and figure of the grid from its records; returns the paths written."""
    from .figures import FIGURES, write_figures  # seaborn is imported only when a report is drawn

    log = log or (lambda line: None)
    runs, units = expand(grid)
    out = Path(out_dir).expanduser().resolve() if out_dir else grid.results
    require_folder(out, "--out")
    if not any((grid.storage / unit_id).exists() for unit_id in units):
        if (out / "report.md").exists():  # a wrong --storage must not empty a report made from the right one
            raise ValueError(f"no run of this grid is in {grid.storage}, and {out} holds a report that empty "
                             "tables would replace; pass the --storage that its `drolt run` used (or --out a new "
                             "folder for the tables with the published numbers alone)")
        log(f"report: no run of this grid in {grid.storage}, so the tables are empty; pass the --storage "
            "that its `drolt run` used")
    out.mkdir(parents=True, exist_ok=True)
    frame = build_frame(grid)
    # From the frame, not read again: a run finishing meanwhile (drolt report during a drolt run) must be in one.
    reported = set(frame["unit_id"])
    missing = [run for run in runs if run.unit_id not in reported]
    methods = method_order(run.method for run in runs)
    cells = [(d, r) for d in grid.datasets for r in sorted(grid.rhos, reverse=True)]
    written: list[Path] = []

    def write(name: str, text: str) -> None:
        (out / name).write_text(text, encoding="utf-8")  # the tables hold ρ, ± and Δ, whatever the locale
        written.append(out / name)

    write("runs.csv", frame.to_csv(index=False))
    if _has_pyarrow():
        frame.to_parquet(out / "runs.parquet", index=False)
        written.append(out / "runs.parquet")
    # The published numbers are for real CIFAR with the exponential profile: a grid on anything else gets
    # no comparison, also in cells none of whose runs has finished yet.
    compare = grid.profile == "exp" and not grid.data.synthetic
    write("summary.csv", summarize(frame, compare).round({"mean": 4, "std": 4, "delta": 4}).to_csv(index=False))
    tables = {}
    for stem, (what, selection, metric) in TABLES.items():
        if stem.startswith(("top1", "top5")):
            tables[stem] = paper_table(frame, selection=selection, methods=methods, cells=cells, compare=compare,
                                       metric=metric)
        else:
            tables[stem] = shot_table(frame, selection, methods, cells, metric, compare)
        write(f"{stem}.tex", to_latex(tables[stem], f"{grid.name}: {what}, mean ± std over seeds",
                                      f"tab:{grid.name}-{stem}".replace("_", "-")))
        write(f"{stem}.csv", to_csv(tables[stem]))
    if missing:
        write("missing.txt", "".join(f"{_run_label(r)}  unit {r.unit_id}\n" for r in missing))
    figures, skipped = write_figures(frame, grid.storage, out)
    written += figures
    for note in skipped:
        log(f"report: skipped {note}")
    sources = _sources_shown(frame, methods, cells, compare)
    wall = _finished_units_time(grid.storage, units)
    write("report.md", _markdown_report(grid, frame, tables, missing, figures, skipped, compare, sources, wall))
    _remove_stale(out, written, [*(f"{s}.{e}" for s in TABLES for e in ("tex", "csv")), "missing.txt",
                                 "runs.parquet", *FIGURES])
    log(f"report: {len(frame)} of {len(frame) + len(missing)} runs finished; {len(written)} files in {out}")
    return written


def _has_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def _remove_stale(out: Path, written: list[Path], names: list[str]) -> None:
    # A file an earlier report wrote but this one did not (a figure now without data, a list of runs that
    # have since finished) would describe records that no longer say so.
    for name in names:
        if out / name not in written:
            (out / name).unlink(missing_ok=True)


def _run_label(run: Run) -> str:
    return (f"{run.dataset} rho{run.rho:g} subset_seed{run.subset_seed} seed{run.seed} "
            f"{METHOD_NAMES.get(run.method, run.method)}")


def _sources_shown(frame: pd.DataFrame, methods: list[str], cells: list[tuple[str, float]], compare: bool
                   ) -> list[str]:
    """Returns the sources of the published numbers the tables print: every comparable cell of the grid, also
    one whose runs have not finished (its paper column is shown all the same)."""
    if not compare:
        return []
    incomparable = _incomparable_cells(frame)
    return sorted({pub.source for dataset, rho in cells if (dataset, rho) not in incomparable for method in methods
                   for split in ("all", *SPLITS) if (pub := published(dataset, rho, method, split))})


def _finished_units_time(storage: Path, units: dict) -> float:
    """Returns the training time (s) of the grid's finished units, also stage-1 units none of whose runs has
    finished; seeds trained packed count their share of the pack's time."""
    results = [_result_or_none(storage, unit_id) for unit_id in units]
    # A result without its times (written by hand, or by an early drolt) adds nothing rather than stop the report.
    return sum(r.get("own_time_s", r.get("wall_time_s", 0.0)) for r in results if r is not None)


def _markdown_report(grid: Grid, frame: pd.DataFrame, tables: dict, missing: list[Run], figures: list[Path],
                     skipped: list[str], compare: bool, sources: list[str], wall: float) -> str:
    total = len(frame) + len(missing)
    parts = [f"# Grid `{grid.name}`\n\n",
             f"Built from the records in `{_shown(grid.storage)}` for `{grid.path.name}` alone (no training). "
             f"{len(frame)} of {total} runs finished. Cells: mean ± std over {_pooled(grid)} (ddof=1) with the number "
             f"of runs n; \"{DASH}\" is a cell without a finished run or a shot split without classes (the "
             "\"classes\" rows give each split's size). \"paper\" is the published number and Δ = ours − paper"
             + (" (shown only for real CIFAR with the exponential profile, which the published numbers are for)"
                if not compare or _incomparable_cells(frame) else "")
             + ". The headline tables take every run's final epoch; faithful mode's own choice (the reference's) "
             "is the best epoch on test, shown in the tables labelled so.\n"]
    unofficial = int((frame["data_source"] == "unofficial").sum()) if "data_source" in frame else 0
    if unofficial:
        parts.append(f"\n**{unofficial} run(s) read data files that are not the official release** (their md5 "
                     "sums differ, e.g. a re-encoded copy): their accuracies can differ slightly from ones measured "
                     "on the official files, which the published numbers were.\n\n")
    if missing:
        parts.append(f"\n**Missing: {len(missing)} run(s) not finished**, listed in `missing.txt`:\n\n")
        parts.append("".join(f"- {_run_label(r)} (unit `{r.unit_id}`)\n" for r in missing))
    for stem, (what, *_) in TABLES.items():
        parts.append(f"\n## {what[0].upper()}{what[1:]}\n\n")
        parts.append(to_markdown(tables[stem]))
    if sources:
        parts.append("\nPublished numbers: " + "; ".join(sources) + ".\n")
    parts.append("\n## Figures\n\n")
    parts += [f"- `{p.name}`\n" for p in figures]
    parts += [f"- skipped: {note}\n" for note in skipped]
    if not frame.empty:
        parts.append("\n## Provenance\n\n")
        for key in PROVENANCE:
            # both stages' values: a DRO-LT row's stage 1 was trained by its own process
            values = set(frame[key]) | set(frame.get(f"stage1_{key}", []))
            parts.append(f"- {key.replace('_', ' ')}: {', '.join(sorted(map(str, values)))}\n")
        parts.append(f"- wall time: {wall / 3600:.2f} h over all finished units (a shared stage 1 counted once, "
                     "seeds trained packed their pack's time once)\n")
    return "".join(parts)


def _pooled(grid: Grid) -> str:
    """Names what a cell's runs vary in: training seeds, and subset seeds when the grid draws several subsets."""
    if len(grid.subset_seeds) < 2:
        return "training seeds"
    return (f"training seeds and the {len(grid.subset_seeds)} long-tailed subsets (subset_seeds), pooled: the "
            "spread includes which images form the subset")


def _shown(path: Path) -> str:
    """Returns `path` relative to the working directory when it lies below it (reports are committed and
    shared; an absolute path names one person's machine), else as it is."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)

"""Figures of a grid (seaborn, PNG, one per file), drawn from the tidy frame and each run's metrics.jsonl.

  per_class_accuracy.png  test accuracy per class against its training count (log x), per method
  shot_splits.png         many / medium / few accuracy per method, bars = mean, dots = seeds
  curves.png              test top-1 and NCM accuracy per epoch, mean and band (std) over seeds
  radii.png               DRO-LT's learned radius of each class per stage-2 epoch
  seed_spread.png         top-1 of every seed per method and cell, final and best-on-test epoch

Figures are drawn on plain matplotlib Figure objects (no pyplot), so no GUI backend or global state is touched.
"""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from drolt.data import long_tail_counts
from drolt.metrics import SPLITS, shot_split_of

from .report import DATASET_NAMES, METHOD_NAMES, METHOD_ORDER, method_order

FIGURES = ("per_class_accuracy.png", "shot_splits.png", "curves.png", "radii.png", "seed_spread.png")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
N_MAX = {"cifar10": 5000, "cifar100": 500}  # images per class in the official training sets
PANEL = (4.2, 3.4)  # inches per facet
DPI = 130


def write_figures(frame: pd.DataFrame, storage: Path, out: Path) -> tuple[list[Path], list[str]]:
    """Draws every figure that has data into `out`; returns (paths written, "name: why skipped" notes)."""
    if frame.empty:
        return [], [f"{name}: no finished runs" for name in FIGURES]
    frame = frame.assign(cell=[_cell_name(d, r) for d, r in zip(frame["dataset"], frame["rho"])],
                         method_name=[METHOD_NAMES.get(m, m) for m in frame["method"]])
    histories = {uid: _history(storage, uid) for uid in frame["unit_id"]}
    drawers: dict[str, Callable[[], Optional[Figure]]] = {
        "per_class_accuracy.png": lambda: per_class_figure(per_class_frame(frame, histories)),
        "shot_splits.png": lambda: shot_split_figure(frame),
        "curves.png": lambda: curves_figure(epoch_frame(frame, histories)),
        "radii.png": lambda: radii_figure(radii_frame(frame, histories)),
        "seed_spread.png": lambda: seed_spread_figure(frame),
    }
    written, skipped = [], []
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        for name, draw in drawers.items():
            try:
                fig = draw()
            except Exception as err:  # records of another form: said, while the tables and other figures are written
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                skipped.append(f"{name}: could not be drawn ({type(err).__name__}: {first})")
                continue
            if fig is None:
                skipped.append(f"{name}: {SKIP_REASONS[name]}")
                continue
            FigureCanvasAgg(fig).print_png(str(out / name))
            written.append(out / name)
    return written, skipped


SKIP_REASONS = {
    "per_class_accuracy.png": "no run has per-class accuracies in its metrics.jsonl",
    "shot_splits.png": "every shot split is empty or unmeasured",
    "curves.png": "no run has per-epoch records (metrics.jsonl)",
    "radii.png": "no finished DRO-LT run with learned radii",
    "seed_spread.png": "no finished run",
}


# ------------------------------------------------------------------------------------------------- the data

def _history(storage: Path, unit_id: str) -> list[dict]:
    path = storage / unit_id / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _cell_name(dataset: str, rho: float) -> str:
    return f"{DATASET_NAMES.get(dataset, dataset)} ρ={rho:g}"


def train_counts(dataset: str, rho: float, profile: str, synthetic: int = 0) -> list[int]:
    """Returns each class's training-image count in the long-tailed subset (class 0 first)."""
    # A synthetic stand-in has `synthetic` images per class where the official release has N_MAX.
    n_max = int(synthetic) if synthetic and not math.isnan(synthetic) else N_MAX[dataset]
    return long_tail_counts(NUM_CLASSES[dataset], n_max, 1 / rho, profile)


def _run_counts(row) -> list[int]:
    counts = train_counts(row.dataset, row.rho, row.profile, getattr(row, "data_synthetic", 0))
    sizes = {s: len(c) for s, c in shot_split_of(counts).items()}
    recorded = {s: getattr(row, f"last_{s}_n") for s in SPLITS}
    if sizes != recorded:
        raise ValueError(f"run {row.unit_id}: recomputed training counts give split sizes {sizes} but its record "
                         f"says {recorded}; the data settings in the frame do not match what was trained")
    return counts


def per_class_frame(frame: pd.DataFrame, histories: dict[str, list[dict]]) -> pd.DataFrame:
    """Returns one row per run and class: cell, method, seed, class, training count, last-epoch accuracy."""
    rows = []
    for row in frame.itertuples():
        history = histories.get(row.unit_id)
        if not history or "per_class" not in history[-1]:
            continue
        counts = _run_counts(row)
        for c, acc in enumerate(history[-1]["per_class"]):
            rows.append({"cell": row.cell, "method": row.method_name, "seed": row.seed, "class": c,
                         "count": counts[c], "accuracy": acc})
    return pd.DataFrame(rows)


def epoch_frame(frame: pd.DataFrame, histories: dict[str, list[dict]]) -> pd.DataFrame:
    """Returns one row per run, epoch and metric (test top-1 or NCM top-1) of the run's reporting stage."""
    rows = []
    for row in frame.itertuples():
        for record in histories.get(row.unit_id, []):
            for metric, name in (("top1", "test top-1"), ("ncm_top1", "test NCM top-1")):
                rows.append({"cell": row.cell, "method": row.method_name, "seed": row.seed, "subset_seed":
                             row.subset_seed, "epoch": record["epoch"] + 1, "metric": name,
                             "accuracy": record.get(metric, math.nan)})
    return pd.DataFrame(rows)


def radii_frame(frame: pd.DataFrame, histories: dict[str, list[dict]]) -> pd.DataFrame:
    """Returns one row per DRO-LT run, stage-2 epoch and class: the learned radius and the class's count."""
    rows = []
    for row in frame.itertuples():
        history = histories.get(row.unit_id, [])
        if not history or "radii" not in history[0]:
            continue
        counts = _run_counts(row)
        for record in history:
            for c, radius in enumerate(record["radii"]):
                rows.append({"cell": row.cell, "method": row.method_name, "seed": row.seed, "class": c,
                             "count": counts[c], "epoch": record["epoch"] + 1, "phase": record.get("phase", ""),
                             "radius": radius})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- the figures

def _order(names) -> list[str]:
    # the tables' order: the paper's methods, then the grid's variants as the grid lists them
    return method_order(names, known=[METHOD_NAMES[m] for m in METHOD_ORDER])


def _cells(names) -> list[str]:
    # Table order: CIFAR-10 before CIFAR-100, the largest rho first.
    def key(name: str):
        dataset, rho = name.rsplit(" ρ=", 1)
        return (dataset != "CIFAR-10-LT", dataset, -float(rho))
    return sorted(set(names), key=key)


def _grid(rows: int, cols: int, title: str) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(PANEL[0] * cols + 1.8, PANEL[1] * rows + 0.6), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey="row")  # [rows, cols]
    # Wrapped to the panels' width: a long title on a one- or two-panel figure would run off the canvas.
    fig.suptitle(textwrap.fill(title, width=int(9 * PANEL[0] * cols), break_on_hyphens=False))
    return fig, axes


def _one_legend(fig: Figure, axes: np.ndarray, title: str) -> None:
    # One legend for the whole figure, outside the panels, instead of one per panel covering the data.
    handles, labels = [], []
    for ax in axes.flat:
        legend = ax.get_legend()
        if legend is not None:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                if label not in labels:
                    handles.append(handle)
                    labels.append(label)
            legend.remove()
    if handles:
        fig.legend(handles, labels, title=title, loc="outside right upper", frameon=False)


def _palette(methods: list[str]) -> dict[str, tuple]:
    colors = sns.color_palette("colorblind", len(METHOD_ORDER))
    fixed = {METHOD_NAMES[m]: colors[i] for i, m in enumerate(METHOD_ORDER)}
    extra = sns.color_palette("dark", len(methods))
    return {m: fixed.get(m, extra[i]) for i, m in enumerate(methods)}


def per_class_figure(data: pd.DataFrame) -> Optional[Figure]:
    """Returns per-class test accuracy against training count (log x), a line per method; None without data."""
    if data.empty:
        return None
    cells, methods = _cells(data["cell"]), _order(data["method"])
    fig, axes = _grid(1, len(cells), "Per-class test accuracy at the final epoch (mean and std over seeds and "
                                     "classes of equal count)")
    for ax, cell in zip(axes[0], cells):
        sns.lineplot(data=data[data["cell"] == cell], x="count", y="accuracy", hue="method", hue_order=methods,
                     style="method", style_order=methods, palette=_palette(methods), markers=True, markersize=5,
                     errorbar="sd", err_style="bars", err_kws={"elinewidth": 0.8}, ax=ax)
        ax.set_xscale("log")
        # Ticks at 1-2-5 steps in plain numbers: a subset spans less than a decade at rho 10.
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(title=cell, xlabel="training images of the class (log scale)", ylabel="test accuracy (%)",
               ylim=(-3, 103))
    _one_legend(fig, axes, "method")
    return fig


def shot_split_figure(frame: pd.DataFrame) -> Optional[Figure]:
    """Returns many/medium/few accuracy bars (mean over seeds) with every seed as a dot; None without data."""
    data = frame.melt(id_vars=["cell", "method_name", "seed"], value_vars=[f"last_{s}" for s in SPLITS],
                      var_name="split", value_name="accuracy")
    data["split"] = data["split"].str.removeprefix("last_")
    if data["accuracy"].isna().all():
        return None
    cells, methods = _cells(data["cell"]), _order(data["method_name"])
    fig, axes = _grid(1, len(cells), "Shot-split test accuracy at the final epoch (bars: mean over seeds, "
                                     "dots: seeds)")
    palette = _palette(methods)
    for ax, cell in zip(axes[0], cells):
        here = data[data["cell"] == cell]
        sns.barplot(data=here, x="split", y="accuracy", hue="method_name", order=list(SPLITS), hue_order=methods,
                    palette=palette, errorbar=None, alpha=0.8, ax=ax)
        sns.stripplot(data=here, x="split", y="accuracy", hue="method_name", order=list(SPLITS),
                      hue_order=methods, palette=palette, dodge=True, color="black", edgecolor="black",
                      linewidth=0.8, size=4, legend=False, ax=ax)
        sizes = frame[frame["cell"] == cell].iloc[0]
        ax.set_xticks(range(len(SPLITS)),
                      [f"{s}\n({int(sizes[f'last_{s}_n'])} classes)" for s in SPLITS])
        for i, split in enumerate(SPLITS):
            if here.loc[here["split"] == split, "accuracy"].isna().all():
                ax.text(i, 2, "empty split", ha="center", va="bottom", fontsize=8, color="dimgray")
        ax.set(title=cell, xlabel="shot split (by training count)", ylabel="test accuracy (%)", ylim=(0, 103))
    _one_legend(fig, axes, "method")
    return fig


def curves_figure(data: pd.DataFrame) -> Optional[Figure]:
    """Returns test top-1 and NCM accuracy per epoch (rows) per cell (columns); None without data."""
    if data.empty:
        return None
    cells, methods = _cells(data["cell"]), _order(data["method"])
    metrics = ["test top-1", "test NCM top-1"]
    fig, axes = _grid(len(metrics), len(cells), "Test accuracy per epoch of the reported stage (stage 1 for "
                                                "CE / LDAM-DRW, stage 2 for DRO-LT); mean and std band over seeds")
    for r, metric in enumerate(metrics):
        for ax, cell in zip(axes[r], cells):
            here = data[(data["cell"] == cell) & (data["metric"] == metric)]
            sns.lineplot(data=here, x="epoch", y="accuracy", hue="method", hue_order=methods, style="method",
                         style_order=methods, palette=_palette(methods), errorbar="sd", markers=True,
                         markersize=5, ax=ax)
            ax.set(title=f"{cell}: {metric}", ylabel=f"{metric} (%)", ylim=(-3, 103), xlabel="epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _one_legend(fig, axes, "method")
    return fig


def radii_figure(data: pd.DataFrame) -> Optional[Figure]:
    """Returns each class's learned radius per stage-2 epoch, coloured by training count; None without DRO-LT."""
    if data.empty:
        return None
    cells, methods = _cells(data["cell"]), _order(data["method"])
    fig, axes = _grid(len(methods), len(cells), "DRO-LT learned radius ε per class (mean over seeds); "
                                                "shaded: classifier re-training epochs")
    norm = LogNorm(vmin=max(1, data["count"].min()), vmax=max(2, data["count"].max()))
    cmap = colormaps["viridis"]
    for r, method in enumerate(methods):
        for ax, cell in zip(axes[r], cells):
            here = data[(data["cell"] == cell) & (data["method"] == method)]
            ax.set(title=f"{cell}: {method}", xlabel="stage-2 epoch", ylabel="radius ε")
            if here.empty:
                ax.text(0.5, 0.5, "no finished run", ha="center", va="center", transform=ax.transAxes)
                continue
            mean = here.groupby(["class", "count", "epoch"], as_index=False)["radius"].mean()
            for (c, count), curve in mean.groupby(["class", "count"]):
                ax.plot(curve["epoch"], curve["radius"], color=cmap(norm(max(count, 1))), linewidth=1.2)
            classifier = sorted(here.loc[here["phase"] == "classifier", "epoch"].unique())
            if classifier:
                ax.axvspan(classifier[0] - 0.5, classifier[-1] + 0.5, color="gray", alpha=0.15, linewidth=0)
            ax.set_xlim(0.5, here["epoch"].max() + 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(),
                       label="training images of the class (log scale)")
    bar.ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    bar.ax.yaxis.set_minor_formatter(NullFormatter())
    return fig


def seed_spread_figure(frame: pd.DataFrame) -> Optional[Figure]:
    """Returns every seed's top-1 per method and cell, final and best-on-test epoch side by side."""
    data = frame.melt(id_vars=["cell", "method_name", "seed"], value_vars=["last_top1", "best_top1"],
                      var_name="epoch", value_name="top1")
    data["epoch"] = data["epoch"].map({"last_top1": "final epoch", "best_top1": "best epoch on test"})
    data = data.dropna(subset=["top1"])
    if data.empty:
        return None
    cells, methods = _cells(data["cell"]), _order(data["method_name"])
    fig, axes = _grid(1, len(cells), "Test top-1 of every run (one dot per seed)")
    for ax, cell in zip(axes[0], cells):
        sns.stripplot(data=data[data["cell"] == cell], x="method_name", y="top1", hue="epoch",
                      order=methods, hue_order=["final epoch", "best epoch on test"], palette=["#0173b2", "#de8f05"],
                      dodge=True, jitter=0.15, size=6, ax=ax)
        ax.set(title=cell, xlabel="method", ylabel="test top-1 (%)")
        ax.tick_params(axis="x", labelrotation=20)
    _one_legend(fig, axes, "epoch reported")
    return fig

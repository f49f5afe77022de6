"""Grid files: load and validate them, and expand a grid into units of work with stable ids.

A grid is datasets x imbalance factors x subset seeds x seeds x methods. Each cell is a *run* (what a table
row reports). Runs are backed by *units*: a stage-1 unit (keyed by data, seeds and stage-1 settings) and, for
DRO-LT, a stage-2 unit on top of it. A unit's id is a hash of its resolved settings, so the same work in two
grids sharing a storage folder is the same unit, and stage 1 is trained once however many runs use it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from drolt.checkpoint import require_folder
from drolt.config import (DATA_LOCATION, DATASETS, MODES, PROFILES, DataConfig, Stage1Config, Stage2Config,
                          from_dict, load_yaml)
from drolt.data import long_tail_counts
from drolt.unit import METHODS, UnitConfig, unit_from_dict

GRID_KEYS = {
    "name": "a short name for the grid (results go to results/<name>/)",
    "storage": "folder holding one sub-folder per unit (relative to the grid file)",
    "results": "folder for tables and figures; they go to <results>/<name>/ (relative to the grid file)",
    "data": "root (folder of the CIFAR files, relative to the grid file), download (bool), synthetic (int)",
    "datasets": f"list of {', '.join(DATASETS)}",
    "profile": f"one of {', '.join(PROFILES)}",
    "rhos": "list of imbalance ratios >= 1, e.g. [100, 50, 10]",
    "subset_seeds": "list of ints: which images form the long-tailed subset",
    "seeds": "list of ints: training seeds",
    "methods": "list of {name: ce|ldam_drw|dro_lt, mode: faithful|clean, stage1: {...}, stage2: {...}, label: "
               "word naming a variant}",
    "stage1": "stage-1 settings for every method (see drolt/config.py)",
    "stage2": "stage-2 settings for every DRO-LT method",
    "resources": "per trial: {cpus: number > 0, gpus: number in [0, 1] or a whole number}",
    "allow_cpu_fallback": "bool: run on CPU when the grid asks for GPUs and the cluster has none",
    "max_failures": "int >= 0: retries of a trial whose process dies",
    "pack_seeds": "int >= 1: units of a stage that differ only in their seed (stage 1: or method; stage 2: or "
                  "DRO-LT mode, or with the class-aware sampler rho) train up to this many per trial, packed into "
                  "one model (wider GPU kernels; 1: each alone)",
}
METHOD_KEYS = ("name", "mode", "stage1", "stage2", "label")
# The labels methods get by default, which stand for the published numbers, and the names tables print.
DEFAULT_LABELS = ("ce", "ldam_drw", "dro_lt_faithful", "dro_lt_clean")
METHOD_NAMES = {"ce": "CE", "ldam_drw": "LDAM-DRW", "dro_lt_faithful": "DRO-LT (faithful)",
                "dro_lt_clean": "DRO-LT (clean)"}
_RESERVED_LABELS = {name.casefold() for name in (*DEFAULT_LABELS, *METHOD_NAMES.values())}  # any case
# Set by the grid's axes, not by stage overrides (stage 1's method follows the method's name).
RUN_LEVEL = {"mode": "methods: mode", "seed": "seeds:", "method": "methods: name"}


class GridError(ValueError):
    """A grid file is invalid; the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class Unit:
    """One stage of work: trained once into <storage>/<id>/."""
    id: str
    stage: int
    settings: dict              # resolved: {"method", "data", "stage1"[, "stage2", "stage1_unit", "handoff"]}
    label: str                  # for people: "cifar10 rho100 s0 ce seed0"
    depends_on: Optional[str] = None

    def drolt_settings(self) -> dict:
        """Returns the settings drolt.unit.unit_from_dict takes (method, data, stage1[, stage2])."""
        return {k: self.settings[k] for k in ("method", "data", "stage1", "stage2") if k in self.settings}

    def config(self) -> UnitConfig:
        """Returns the drolt settings this unit trains with."""
        return unit_from_dict(self.drolt_settings(), where=f"unit {self.id}")


@dataclass(frozen=True)
class Run:
    """One cell of the grid and the unit whose result it reports."""
    dataset: str
    rho: float
    subset_seed: int
    seed: int
    method: str
    mode: str
    unit_id: str


@dataclass
class Grid:
    name: str
    path: Path
    storage: Path
    data: DataConfig            # dataset/rho/subset_seed filled in per unit
    datasets: list[str]
    profile: str
    rhos: list[float]
    subset_seeds: list[int]
    seeds: list[int]
    methods: list[dict]
    stage1: dict = field(default_factory=dict)
    stage2: dict = field(default_factory=dict)
    cpus: float = 1.0
    gpus: float = 0.0
    allow_cpu_fallback: bool = False
    max_failures: int = 2
    pack_seeds: int = 1             # units per trial when they differ only in their seed (stage 1: or method;
                                    # stage 2: or mode, rho)
                                    # (harness.plan.packs says which)
    results: Path = Path("results")   # tables and figures of this grid: <results folder>/<name>/


def load_grid(path: str | Path, storage: Optional[str | Path] = None) -> Grid:
    """Reads and validates a grid file; raises GridError naming the first problem."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise GridError(f"grid file {path} does not exist")
    if path.is_dir():
        grids = sorted(p.name for p in path.glob("*.yaml"))
        raise GridError(f"{path} is a folder; give a grid file (YAML)" + (f", e.g. one of {grids}" if grids else ""))
    try:
        raw = load_yaml(path)
    except ValueError as err:
        raise GridError(str(err)) from None
    if not isinstance(raw, dict):
        raise GridError(f"{path} must hold a mapping with keys {', '.join(GRID_KEYS)}")
    unknown = sorted(set(raw) - set(GRID_KEYS))
    if unknown:
        raise GridError(f"{path.name}: unknown key(s) {unknown}; allowed: {', '.join(GRID_KEYS)}")
    missing = [k for k in ("name", "datasets", "rhos", "seeds", "methods") if k not in raw]
    if missing:
        raise GridError(f"{path.name}: missing key(s) {missing} ({'; '.join(f'{k}: {GRID_KEYS[k]}' for k in missing)})")
    here = path.parent

    name = _typed(raw, "name", str)
    # it names the results folder: a name of dots alone ("..") would put the report above or among others
    if not all(c.isalnum() or c in "-_." for c in name) or not any(c.isalnum() for c in name):
        raise GridError(f"name must be a word of letters, digits, '-', '_' or '.' with at least one letter or digit "
                        f"(it names the grid's results folder); got {name!r}")
    data_raw = dict(_typed(raw, "data", dict, {}))
    root = data_raw.get("root", "data")
    if not isinstance(root, str) or not root:
        raise GridError(f"data.root must be a folder (a path, relative to the grid file); got {root!r}")
    data_raw["root"] = str((here / Path(root).expanduser()).resolve())
    for key in ("dataset", "rho", "subset_seed", "profile"):
        if key in data_raw:
            raise GridError(f"data.{key} is set by the grid's axes (datasets, rhos, subset_seeds, profile), "
                            "not under data")
    data = _checked(DataConfig, data_raw, "data")
    datasets = _list(raw, "datasets", str, allowed=DATASETS)
    profile = _typed(raw, "profile", str, "exp")
    if profile not in PROFILES:
        raise GridError(f"profile must be one of {', '.join(PROFILES)}; got {profile!r}")
    rhos = [float(r) for r in _list(raw, "rhos", (int, float))]
    if any(not (1 <= r < math.inf) for r in rhos):
        raise GridError(f"rhos must all be finite numbers >= 1 (n_max / n_min, e.g. [100, 50, 10]); got {rhos}")
    grid = Grid(name=name, path=path,
                storage=Path(storage).expanduser().resolve() if storage
                else (here / Path(_typed(raw, "storage", str, "../runs")).expanduser()).resolve(),
                data=data, datasets=datasets, profile=profile, rhos=rhos,
                subset_seeds=_list(raw, "subset_seeds", int, default=[0]), seeds=_list(raw, "seeds", int),
                methods=_methods(raw.get("methods")),
                stage1=_overrides(raw, "stage1"), stage2=_overrides(raw, "stage2"),
                allow_cpu_fallback=_typed(raw, "allow_cpu_fallback", bool, False),
                max_failures=_typed(raw, "max_failures", int, 2), pack_seeds=_typed(raw, "pack_seeds", int, 1),
                results=(here / _typed(raw, "results", str, "../results")).resolve() / name)
    require_folder(grid.storage, "storage (the grid file's, or --storage)")
    require_folder(grid.results, "results")
    if grid.max_failures < 0:
        raise GridError(f"max_failures must be >= 0; got {grid.max_failures}")
    if grid.pack_seeds < 1:
        raise GridError(f"pack_seeds must be >= 1 (1: each unit trains alone); got {grid.pack_seeds}")
    # Checked here too, so a typo under stage2 is caught even when no method has a stage 2, and one under
    # stage1 is named where it was written, not in the first method it reaches.
    _checked(Stage2Config, {**grid.stage2, "mode": "faithful"}, "stage2")
    _checked(Stage1Config, {**grid.stage1, "method": "ce"}, "stage1")  # ce: drw_start_epoch may suit LDAM-DRW only
    _check_class_sizes(grid)
    grid.cpus, grid.gpus = _resources(raw.get("resources", {}))
    expand(grid)  # resolves every unit's settings, so bad stage overrides stop here, before any work
    return grid


def _check_class_sizes(grid: Grid) -> None:
    """Rejects an imbalance factor that would leave a class without a single training image."""
    for dataset in grid.datasets:
        num_classes = 10 if dataset == "cifar10" else 100
        n_max = grid.data.synthetic or 50000 // num_classes
        for rho in grid.rhos:
            if min(long_tail_counts(num_classes, n_max, 1 / rho, grid.profile)) < 1:
                what = f"data.synthetic: {n_max} images per class" if grid.data.synthetic else f"{dataset}"
                raise GridError(f"rhos: {rho:g} leaves a class of {dataset} without training images with "
                                f"{what}; use rhos <= {n_max} or more images per class")


def _typed(raw: dict, key: str, kind: type, default: Any = ...) -> Any:
    if key not in raw:
        return default
    value = raw[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        article = "an" if kind.__name__[0] in "aeiou" else "a"
        raise GridError(f"{key} must be {article} {kind.__name__}; got {value!r} ({GRID_KEYS.get(key, '')})")
    return value


def _list(raw: dict, key: str, kind: Any, allowed: tuple = (), default: Any = ...) -> list:
    if key not in raw and default is not ...:
        return default
    values = raw.get(key)
    if not isinstance(values, list) or not values:
        raise GridError(f"{key} must be a non-empty list ({GRID_KEYS[key]}); got {values!r}")
    for v in values:
        if not isinstance(v, kind) or isinstance(v, bool):
            raise GridError(f"{key}: {v!r} is not a valid entry ({GRID_KEYS[key]})")
        if allowed and v not in allowed:
            raise GridError(f"{key}: unknown value {v!r}; allowed: {', '.join(allowed)}")
    if len(set(values)) != len(values):
        raise GridError(f"{key} lists a value twice: {values}")
    return list(values)


def _overrides(raw: dict, key: str) -> dict:
    value = _typed(raw, key, dict, {})
    for bad in RUN_LEVEL:
        if bad in value:
            raise GridError(f"{key}.{bad} is set per run (by {RUN_LEVEL[bad]}), not under {key}")
    return dict(value)


def _methods(raw: Any) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise GridError(f"methods must be a non-empty list ({GRID_KEYS['methods']}); got {raw!r}")
    methods = []
    for i, m in enumerate(raw):
        m = {"name": m} if isinstance(m, str) else m
        if not isinstance(m, dict):
            raise GridError(f"methods[{i}] must be a method name or a mapping; got {m!r}")
        unknown = sorted(set(m) - set(METHOD_KEYS))
        if unknown:
            raise GridError(f"methods[{i}]: unknown key(s) {unknown}; allowed: {', '.join(METHOD_KEYS)}")
        if m.get("name") not in METHODS:
            raise GridError(f"methods[{i}].name must be one of {', '.join(METHODS)}; got {m.get('name')!r}")
        mode = m.get("mode", "faithful")
        if mode not in MODES:
            raise GridError(f"methods[{i}].mode must be one of {', '.join(MODES)}; got {mode!r}")
        for section in ("stage1", "stage2"):
            if not isinstance(m.get(section, {}), dict):
                raise GridError(f"methods[{i}].{section} must be a mapping of settings; got {m[section]!r}")
            for bad in RUN_LEVEL:
                if bad in m.get(section, {}):
                    raise GridError(f"methods[{i}].{section}.{bad} is set per run (by {RUN_LEVEL[bad]}), not here")
        if "stage2" in m and m["name"] != "dro_lt":
            raise GridError(f"methods[{i}]: {m['name']} has no stage 2; remove its stage2 settings")
        default = _default_label(m["name"], mode)
        label = m.get("label", default)
        if not isinstance(label, str) or not label or not all(c.isalnum() or c in "-_." for c in label):
            raise GridError(f"methods[{i}].label must be a word of letters, digits, '-', '_' or '.'; got {label!r}")
        if label != default and label.casefold() in _RESERVED_LABELS:
            raise GridError(f"methods[{i}].label {label!r} names one of the published methods in the tables "
                            f"({', '.join(METHOD_NAMES.values())}); choose another")
        methods.append({"name": m["name"], "mode": mode, "stage1": dict(m.get("stage1", {})),
                        "stage2": dict(m.get("stage2", {})), "label": label})
    labels = [m["label"] for m in methods]
    baselines = [m["name"] for m in methods if m["name"] != "dro_lt" and m["label"] == m["name"]]
    twice = sorted({name for name in baselines if baselines.count(name) > 1})
    if twice:
        raise GridError(f"methods lists {', '.join(twice)} twice: a baseline's runs are its stage 1, one for both "
                        "modes (the tables show every run's final and best-on-test epoch); list it once, or give a "
                        "variant with other settings a label")
    if len(set(labels)) != len(labels):
        raise GridError(f"methods lists the same method and mode twice: {labels}; give variants of one method a "
                        "label each (e.g. {name: dro_lt, mode: clean, label: clean_t05, stage2: {temperature: 0.5}})")
    return methods


def _resources(raw: Any) -> tuple[float, float]:
    if not isinstance(raw, dict) or set(raw) - {"cpus", "gpus"}:
        raise GridError(f"resources must be a mapping with keys cpus and gpus; got {raw!r}")
    cpus, gpus = raw.get("cpus", 1), raw.get("gpus", 0)
    for key, value in (("cpus", cpus), ("gpus", gpus)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise GridError(f"resources.{key} must be a finite number >= 0; got {value!r}")
    if cpus <= 0:
        raise GridError(f"resources.cpus must be > 0 (fractions allowed); got {cpus}")
    if gpus > 1 and gpus != int(gpus):
        raise GridError(f"resources.gpus must be a fraction <= 1 (e.g. 0.25: four trials share a GPU) or a whole "
                        f"number; got {gpus}")
    return float(cpus), float(gpus)


def _checked(cls: type, values: dict, where: str) -> Any:
    try:
        return from_dict(cls, values, where)
    except ValueError as err:
        raise GridError(str(err)) from err


def _default_label(name: str, mode: str) -> str:
    return name if name != "dro_lt" else f"dro_lt_{mode}"


# Stage settings that enter a unit's id only away from their default: they came after storage folders were
# written whose ids must stay valid (and augment_batches and graph_augment give the same images either way).
ID_IF_CHANGED = {"augment_batches": 8, "compile_mode": "default", "compile_loss": False, "graph_augment": False,
                 "graph_step": False, "compile_step": False, "fused_sgd": False, "ncm_every": 1}


def _identity(config: Any) -> dict:
    """Returns a stage config's settings as they enter a unit's id."""
    return {k: v for k, v in dataclasses.asdict(config).items() if ID_IF_CHANGED.get(k, object()) != v}


def stage_settings(unit: Unit, stage: str) -> dict:
    """Returns a unit's "stage1" or "stage2" settings with the defaults its id leaves out (ID_IF_CHANGED) put
    back, the settings the stage ran with; {} for a stage the unit has not."""
    if stage not in unit.settings:
        return {}
    names = {f.name for f in dataclasses.fields(Stage1Config if stage == "stage1" else Stage2Config)}
    left_out = {k: v for k, v in ID_IF_CHANGED.items() if k in names and k not in unit.settings[stage]}
    return {**unit.settings[stage], **left_out}


def unit_id(settings: dict) -> str:
    """Returns a 12-hex-digit hash of resolved settings (key order does not matter)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def expand(grid: Grid) -> tuple[list[Run], dict[str, Unit]]:
    """Returns the grid's runs and the units behind them (stage 1 before stage 2, each once)."""
    runs, units = [], {}
    for dataset in grid.datasets:
        for rho in grid.rhos:
            for subset_seed in grid.subset_seeds:
                for seed in grid.seeds:
                    label_of: dict[str, str] = {}  # a unit's method label in this cell
                    for m in grid.methods:
                        run_unit = _units_of(grid, dataset, rho, subset_seed, seed, m, units)
                        if run_unit in label_of:
                            raise GridError(f"methods {label_of[run_unit]!r} and {m['label']!r} are the same work "
                                            "(their settings resolve to one unit; a baseline's mode does not "
                                            "change its training); drop one, or give it other settings")
                        label_of[run_unit] = m["label"]
                        runs.append(Run(dataset, rho, subset_seed, seed, m["label"], m["mode"], run_unit))
    return runs, units


def _units_of(grid: Grid, dataset: str, rho: float, subset_seed: int, seed: int, m: dict,
              units: dict[str, Unit]) -> str:
    data = _checked(DataConfig, {**dataclasses.asdict(grid.data), "dataset": dataset, "rho": rho,
                                 "profile": grid.profile, "subset_seed": subset_seed}, "subset_seeds")
    # Where the files are and whether to download them do not change the work: keep them out of the id.
    data_key = {k: v for k, v in dataclasses.asdict(data).items() if k not in DATA_LOCATION}
    where = f"methods[{m['label']}]"
    stage1_method = "ldam_drw" if m["name"] == "ldam_drw" else "ce"
    # Stage 1 keeps the best-on-test and the last weights, so faithful and clean share one stage-1 unit.
    s1 = _checked(Stage1Config, {**grid.stage1, **m["stage1"], "method": stage1_method, "seed": seed,
                                 "mode": "faithful"}, f"{where}.stage1")
    s1_settings = {"method": stage1_method, "data": data_key,
                   "stage1": {k: v for k, v in _identity(s1).items() if k != "mode"}}
    s1_id = unit_id(s1_settings)
    label = f"{dataset} rho{rho:g} s{subset_seed} seed{seed}"
    variant = "" if m["label"] == _default_label(m["name"], m["mode"]) else f" ({m['label']})"
    units.setdefault(s1_id, Unit(s1_id, 1, {**s1_settings, "data": dataclasses.asdict(data)},
                                 f"{label} stage1 {stage1_method}{variant if m['stage1'] else ''}"))
    if m["name"] != "dro_lt":
        return s1_id
    s2 = _checked(Stage2Config, {**grid.stage2, **m["stage2"], "seed": seed, "mode": m["mode"]}, f"{where}.stage2")
    handoff = "best" if m["mode"] == "faithful" else "last"
    s2_settings = {"method": "dro_lt", "stage1_unit": s1_id, "handoff": handoff,
                   "stage2": _identity(s2)}
    s2_id = unit_id(s2_settings)
    units.setdefault(s2_id, Unit(s2_id, 2, {**s2_settings, "data": dataclasses.asdict(data),
                                            "stage1": units[s1_id].settings["stage1"]},
                                 f"{label} stage2 dro_lt {m['mode']}{variant}", depends_on=s1_id))
    return s2_id

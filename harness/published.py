"""Published top-1 numbers (ResNet-32) for the comparison columns, read from the CSV shipped in this package.

Each row of `published_results.csv` names its source; the file is a copy of the project's
`paper_results.csv` so that an installed package carries it.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple, Optional

import pandas as pd

PUBLISHED_CSV = Path(__file__).with_name("published_results.csv")
# The CSV's names for our datasets and methods; both DRO-LT modes compare against the one published DRO-LT.
DATASET_KEYS = {"cifar10": "cifar10_lt", "cifar100": "cifar100_lt"}
METHOD_KEYS = {"ce": "CE", "ldam_drw": "LDAM-DRW", "dro_lt_faithful": "DRO-LT", "dro_lt_clean": "DRO-LT"}


class Published(NamedTuple):
    value: float                # top-1 %, of the whole test set or of a shot split
    source: str


@lru_cache(maxsize=4)
def load_published(path: Path = PUBLISHED_CSV) -> pd.DataFrame:
    """Returns the published numbers: dataset, imbalance_ratio (NaN where none), method, split, top1, source."""
    if not path.exists():
        raise FileNotFoundError(f"published numbers file {path} is missing; it ships with the harness package "
                                "(reinstall it, or copy paper_results.csv there)")
    return pd.read_csv(path)


def published(dataset: str, rho: float, method: str, split: str = "all",
              table: Optional[pd.DataFrame] = None) -> Optional[Published]:
    """Returns the published number for one cell (split: all, many, medium or few), or None when none exists."""
    table = load_published() if table is None else table
    if dataset not in DATASET_KEYS or method not in METHOD_KEYS:
        return None
    hits = table[(table["dataset"] == DATASET_KEYS[dataset]) & (table["method"] == METHOD_KEYS[method])
                 & (table["split"] == split)]
    hits = hits[[not math.isnan(r) and math.isclose(r, rho) for r in hits["imbalance_ratio"]]]
    if hits.empty:
        return None
    row = hits.iloc[0]
    return Published(float(row["top1"]), str(row["source"]))

"""CIFAR-10/100 releases on disk, their long-tailed subsets (SPEC 1) and synthetic stand-ins for tests."""

from .cifar import CifarSplits, DataError, UnofficialDataWarning, load_cifar, missing_data
from .longtail import LongTailData, load_long_tail, long_tail_counts, long_tail_indices, share_test_sets
from .synthetic import write_synthetic_cifar

__all__ = [
    "CifarSplits", "DataError", "LongTailData", "UnofficialDataWarning", "load_cifar", "load_long_tail",
    "long_tail_counts", "long_tail_indices", "missing_data", "share_test_sets", "write_synthetic_cifar",
]

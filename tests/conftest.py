"""Shared fixtures: small synthetic CIFAR folders in the real on-disk layout, and CUDA graphs stood in for on
a CPU."""

import os
from pathlib import Path

# Ray in tests stays on this machine: no usage stats, cloud-metadata probes sent to a closed loopback port,
# and every Ray server bound to 127.0.0.1. Ray binds its gRPC servers to 0.0.0.0 unless the node address is
# 127.0.0.1 and RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (its single-machine mode, read when Ray is imported;
# test_grid_ray checks the bind). Token authentication, Ray 2.60's default for the clusters it starts, is
# also read at import: a module importing Ray (harness.progress) before test_grid_ray sets it would leave
# Ray unable to start its own servers. Set before any test module imports Ray.
os.environ.update({"RAY_USAGE_STATS_ENABLED": "0", "http_proxy": "http://127.0.0.1:9",
                   "https_proxy": "http://127.0.0.1:9", "no_proxy": "localhost,127.0.0.1,127.0.0.2",
                   "DROLT_RAY_NODE_IP": "127.0.0.1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                   "RAY_AUTH_MODE": "token"})

import warnings
from typing import Callable

import pytest

from drolt import speed
from drolt.data import LongTailData, UnofficialDataWarning, load_long_tail, write_synthetic_cifar


@pytest.fixture(scope="session")
def synthetic_cifar_root(tmp_path_factory) -> Path:
    """A read-only folder holding cifar-10-batches-py/ and cifar-100-python/, 100 train images per class.

    100 per class is the least that leaves every class at least one image at rho = 100. Tests that damage
    files must write their own copy.
    """
    root = tmp_path_factory.mktemp("cifar")
    write_synthetic_cifar(root, "cifar10", train_per_class=100, test_per_class=10, seed=0)
    write_synthetic_cifar(root, "cifar100", train_per_class=100, test_per_class=2, seed=0)
    return root


@pytest.fixture(scope="session")
def small_long_tail(tmp_path_factory) -> Callable[[int, int, float], LongTailData]:
    """Returns make(train_per_class, test_per_class, rho): a synthetic CIFAR-10 folder written anew and its
    long-tailed subset loaded (the stand-in's md5 warning silenced)."""
    def make(train_per_class: int, test_per_class: int, rho: float) -> LongTailData:
        root = tmp_path_factory.mktemp("small")
        write_synthetic_cifar(root, "cifar10", train_per_class=train_per_class, test_per_class=test_per_class,
                              seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnofficialDataWarning)
            return load_long_tail("cifar10", root, rho=rho)
    return make


class FakeGraph:
    """Stands in for a CUDA graph on a CPU: a replay reruns the recorded function on the input buffers into
    the recorded output, as a real replay does."""

    def __init__(self, fn: Callable, inputs: list, output):
        self.fn, self.inputs, self.output, self.replays = fn, inputs, output, 0

    def replay(self) -> None:
        self.replays += 1
        self.output.copy_(self.fn(*self.inputs))


@pytest.fixture
def fake_cuda_graphs(monkeypatch) -> list[FakeGraph]:
    """Makes `speed.graphed` record and replay on the CPU with stand-in graphs; returns the recordings made,
    so that a test runs everything around a CUDA graph (the keys, the copies in and out) without a GPU."""
    recordings = []

    def record(fn, args):  # as record_graph: fn runs once, in the warm-up; the "recording" runs nothing
        inputs = [None if a is None else a.clone() for a in args]
        first = fn(*inputs)
        recordings.append(FakeGraph(fn, inputs, first.clone()))
        return inputs, recordings[-1].output, recordings[-1], first

    monkeypatch.setattr(speed, "GRAPH_DEVICES", ("cpu",))
    monkeypatch.setattr(speed, "record_graph", record)
    return recordings

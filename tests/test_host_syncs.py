"""The training loops never make the host wait for a GPU once per batch (speed issue, item 1).

On a GPU the calls counted here (a tensor read on the host, a data-dependent output size, a tensor made
from host data on the device) block until the device has finished its queue, so one per batch would stall
every step. On a CPU they cost nothing, but they are the same calls: counting them over an epoch with
different batch sizes shows which ones scale with the batches. Not seen: a host tensor moved with
`.to(device)`, which on a CPU is the same call as a no-op move.
"""
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch.overrides import TorchFunctionMode

from drolt.augment import apply_draws, draw
from drolt.config import Stage1Config, Stage2Config
from drolt.stage1 import train_stage1_seeds
from drolt.stage2 import train_stage2_seeds

CPU = torch.device("cpu")
# Tensor reads on the host, and ops whose output size depends on the data (CUDA reads that size back).
SYNCING = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "__format__", "__repr__",
           "__contains__", "__array__", "cpu", "numpy", "equal", "allclose", "is_nonzero", "nonzero", "argwhere",
           "masked_select", "unique", "unique_consecutive", "bincount", "repeat_interleave"}
INDEXING = {"__getitem__", "__setitem__", "index_put", "index_put_"}  # sync when indexed by a bool mask
FROM_HOST = {"tensor", "as_tensor"}  # with device=: a copy from host memory
DROLT = str(Path(__file__).resolve().parents[1] / "drolt")


class HostSyncs(TorchFunctionMode):
    """Counts, per calling line in drolt/, the torch calls that would wait for a GPU's queue."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if (name in SYNCING or (name in INDEXING and any(_is_mask(a) for a in _flat(args[1:2])))
                or (name == "where" and len(args) == 1) or (name in FROM_HOST and "device" in kwargs)):
            self.calls[f"{name} at {_drolt_caller()}"] += 1
        return func(*args, **kwargs)


def _flat(args: tuple) -> list:
    out = []
    for a in args:
        out.extend(_flat(a) if isinstance(a, (tuple, list)) else [a])
    return out


def _is_mask(a: Any) -> bool:
    return isinstance(a, torch.Tensor) and a.dtype == torch.bool


def _drolt_caller() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):  # not this function, not __torch_function__
        if frame.filename.startswith(DROLT):
            return f"{Path(frame.filename).name}:{frame.lineno}"
    return "outside drolt"


def _syncs(run: Callable[[], Any]) -> Counter:
    with HostSyncs() as counter:
        run()
    return counter.calls


@pytest.fixture(scope="module")
def data(small_long_tail):
    return small_long_tail(40, 4, 5)


@pytest.mark.parametrize("method", ["ce", "ldam_drw"])
@pytest.mark.parametrize("seeds", [1, 2], ids=["alone", "packed"])
def test_a_stage_1_epoch_syncs_as_often_with_twice_the_batches(data, method, seeds):
    def epoch(batch_size):
        cfgs = [Stage1Config(epochs=1, method=method, batch_size=batch_size, lr=0.01, warmup_epochs=1,
                             eval_batch_size=2 * batch_size, drw_start_epoch=0, seed=seed) for seed in range(seeds)]
        return _syncs(lambda: train_stage1_seeds(cfgs, data, CPU))

    assert len(data.train_labels) // 16 > len(data.train_labels) // 32 >= 2
    few, many = epoch(32), epoch(16)  # twice the training batches and evaluation chunks
    # (a one-off, e.g. a cached table made on first use, is counted in the first run only)
    assert not many - few, f"syncs that grow with the batches: {many - few}"


@pytest.fixture(scope="module")
def stage1_state(data):
    cfg = Stage1Config(epochs=1, batch_size=32, lr=0.01, warmup_epochs=1)
    return train_stage1_seeds([cfg], data, CPU)[0].last_state


def _stage2_syncs(data, stage1_state, batch_size, augment_batches, seeds=1):
    cfgs = [Stage2Config(epochs=2, classifier_epochs=1, batch_size=batch_size, augment_batches=augment_batches,
                         eval_batch_size=64, seed=seed) for seed in range(seeds)]
    return _syncs(lambda: train_stage2_seeds(cfgs, data, [stage1_state] * seeds, CPU))


@pytest.mark.parametrize("seeds", [1, 2], ids=["alone", "packed"])
def test_stage_2_syncs_grow_with_augmentation_chunks_not_batches(data, stage1_state, seeds):
    # The same 64-image augmentation chunks, cut into batches of 32 or of 16: only AutoAugment's grouping
    # reads back per chunk; nothing else reads per batch, in the feature or the classifier epoch.
    few, many = _stage2_syncs(data, stage1_state, 32, 2, seeds), _stage2_syncs(data, stage1_state, 16, 4, seeds)
    assert not many - few, f"syncs that grow with the batches: {many - few}"
    per_chunk = _stage2_syncs(data, stage1_state, 16, 2, seeds) - few  # half the chunk: twice the chunks
    assert per_chunk and all("autoaugment.py" in where for where in per_chunk), per_chunk


def test_the_sync_free_augmentation_that_graph_augment_records_reads_nothing_back(data):
    # A CUDA graph can record only work that never waits for the host: graph_augment records this call.
    x = data.train_images[:64]
    draws = draw(64, torch.Generator().manual_seed(0), CPU, autoaugment=True, use_cutout=True)
    assert _syncs(lambda: apply_draws(x, draws)), "the grouped path syncs: the counter must see it"
    apply_draws(x, draws, sync_free=True)  # the warm-up before a recording makes the cached tables
    assert not _syncs(lambda: apply_draws(x, draws, sync_free=True))


@pytest.mark.parametrize("seeds", [1, 2], ids=["alone", "packed"])
@pytest.mark.parametrize("stage", [1, 2])
def test_the_training_step_graph_step_records_reads_nothing_back(data, stage1_state, fake_cuda_graphs, monkeypatch,
                                                                  stage, seeds):
    # graph_step records the whole training step as a CUDA graph, and a recording cannot wait for the host:
    # one read-back in the step (any seed's loss, the radii's clamp, the optimizer) would fail it on a GPU.
    from conftest import FakeGraph
    in_replays: Counter = Counter()
    replay = FakeGraph.replay

    def counted(graph: FakeGraph) -> None:  # a replay reruns exactly what the recording holds
        with HostSyncs() as counter:
            replay(graph)
        in_replays.update(counter.calls)
    monkeypatch.setattr(FakeGraph, "replay", counted)
    if stage == 1:
        cfgs = [Stage1Config(epochs=1, batch_size=16, lr=0.01, warmup_epochs=1, graph_step=True, seed=seed)
                for seed in range(seeds)]
        train_stage1_seeds(cfgs, data, CPU)
    else:
        cfgs = [Stage2Config(epochs=2, classifier_epochs=1, batch_size=16, eval_batch_size=64, graph_step=True,
                             seed=seed) for seed in range(seeds)]
        train_stage2_seeds(cfgs, data, [stage1_state] * seeds, CPU)
    assert fake_cuda_graphs and all(graph.replays for graph in fake_cuda_graphs)
    assert not in_replays, f"host reads in the recorded step: {in_replays}"

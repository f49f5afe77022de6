"""Index streams for training: plain shuffled epochs and the class-aware "resample,k" stream (SPEC §4.1).

Both produce one whole pass of indices as a tensor, so the training loop never touches single samples in
Python. They draw from their own CPU generator and expose `state_dict`/`load_state_dict`, so a resumed run
continues exactly the stream an uninterrupted run would have produced.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .seeds import stream_seed


class ShuffledEpochs:
    """Every pass is a fresh random permutation of the dataset (stage 1)."""

    def __init__(self, num_samples: int, seed: int):
        if num_samples < 1:
            raise ValueError(f"cannot sample from an empty dataset (num_samples={num_samples})")
        self.num_samples = num_samples
        self.gen = torch.Generator().manual_seed(stream_seed(seed, "sampler"))

    def __len__(self) -> int:
        """The number of indices in a pass."""
        return self.num_samples

    def next_pass(self) -> Tensor:
        """Returns the indices of one epoch, int64 [num_samples]."""
        return torch.randperm(self.num_samples, generator=self.gen)

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])


class _CyclingPermutation:
    """An endless walk over `items` in random order, re-shuffled each time it wraps around."""

    def __init__(self, items: Tensor, gen: torch.Generator):
        self.items = items
        self.gen = gen
        self.order = items[torch.randperm(len(items), generator=gen)]
        self.pos = 0

    def take(self, count: int) -> Tensor:
        """Returns the next `count` items, wrapping (and re-shuffling) as often as needed."""
        chunks = []
        while count > 0:
            if self.pos == len(self.order):
                self.order = self.items[torch.randperm(len(self.items), generator=self.gen)]
                self.pos = 0
            chunk = self.order[self.pos:self.pos + count]
            self.pos += len(chunk)
            count -= len(chunk)
            chunks.append(chunk)
        return torch.cat(chunks) if chunks else self.items[:0]

    def state_dict(self) -> dict:
        return {"order": self.order.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.order, self.pos = state["order"].clone(), int(state["pos"])


class ClassAwareSampler:
    """The "resample,k" stream: draw a class from a cycling class order, emit k samples of it, repeat.

    A pass has `max_c n_c * C` samples. Each class keeps its own cycling iterator over its images and the
    class order cycles too; all of them keep their position across passes, as the reference's do.
    """

    def __init__(self, labels: Tensor, num_classes: int, samples_per_class: int, seed: int):
        if samples_per_class < 1:
            raise ValueError(f"samples_per_class must be >= 1, got {samples_per_class}")
        labels = labels.cpu()
        counts = torch.bincount(labels, minlength=num_classes)
        if (counts == 0).any():
            empty = torch.nonzero(counts == 0).flatten().tolist()
            raise ValueError(f"class-aware sampling needs every class in the training set; classes {empty} "
                             "have no sample (check the imbalance factor and dataset)")
        self.k = samples_per_class
        self.num_classes = num_classes
        self.pass_length = int(counts.max()) * num_classes
        self.gen = torch.Generator().manual_seed(stream_seed(seed, "sampler"))
        self.class_cycle = _CyclingPermutation(torch.arange(num_classes), self.gen)
        by_class = torch.argsort(labels, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        self.sample_cycles = [_CyclingPermutation(by_class[s:s + n], self.gen)
                              for s, n in zip(starts.tolist(), counts.tolist())]

    def __len__(self) -> int:
        """The number of indices in a pass."""
        return self.pass_length

    def next_pass(self) -> Tensor:
        """Returns the indices of one pass, int64 [max n_c * C], in blocks of k same-class samples."""
        num_blocks = -(-self.pass_length // self.k)
        block_class = self.class_cycle.take(num_blocks)                   # [num_blocks]
        blocks_per_class = torch.bincount(block_class, minlength=self.num_classes)
        # Each class hands out k samples per block it owns, in the order its blocks appear.
        streams = [cycle.take(int(b) * self.k) for cycle, b in zip(self.sample_cycles, blocks_per_class)]
        flat = torch.cat(streams)
        class_offset = torch.cumsum(blocks_per_class, 0) - blocks_per_class   # in blocks
        order = torch.argsort(block_class, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(num_blocks) - class_offset[block_class[order]]
        first = (class_offset[block_class] + rank) * self.k                   # [num_blocks]
        idx = first[:, None] + torch.arange(self.k)                           # [num_blocks, k]
        return flat[idx].flatten()[:self.pass_length]

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "class_cycle": self.class_cycle.state_dict(),
                "sample_cycles": [c.state_dict() for c in self.sample_cycles]}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.class_cycle.load_state_dict(state["class_cycle"])
        for cycle, s in zip(self.sample_cycles, state["sample_cycles"]):
            cycle.load_state_dict(s)


def batches(indices: Tensor, batch_size: int) -> list[Tensor]:
    """Splits one pass into consecutive batches, the last one short (no drop_last)."""
    return list(torch.split(indices, batch_size))


def parse_sampler(spec: str) -> tuple[str, int]:
    """Parses a sampler name: "shuffle" or "resample,k" -> (kind, k)."""
    if spec == "shuffle":
        return "shuffle", 1
    kind, _, k = spec.partition(",")
    if kind == "resample" and k.isdigit() and int(k) >= 1:
        return "resample", int(k)
    raise ValueError(f"unknown sampler {spec!r}: use 'shuffle' or 'resample,K' with K >= 1 (reference: 'resample,4')")


def make_sampler(spec: str, labels: Tensor, num_classes: int, seed: int) -> ShuffledEpochs | ClassAwareSampler:
    """Returns the sampler named by `spec` over a dataset with these labels."""
    kind, k = parse_sampler(spec)
    if kind == "shuffle":
        return ShuffledEpochs(len(labels), seed)
    return ClassAwareSampler(labels, num_classes, k, seed)


"""The seeds of a unit's random streams: its model's initialisation, its sampling order and its augmentation.

Each stream has a generator of its own. Generators seeded alike draw the same numbers, and on a CPU all three
are the same algorithm: seeded with the unit's seed alike, a unit's shuffle order would repeat the numbers of
its initial weights and of its augmentation draws. The model keeps the unit's seed; the other streams take a
32-bit hash of it and their name (the CPU's Mersenne Twister reads only the low 32 bits of a seed, so seeds
set apart by adding 2**32 would still draw alike).
"""
from __future__ import annotations

import hashlib

STREAMS = ("init", "sampler", "augment")


def stream_seed(seed: int, stream: str) -> int:
    """Returns the seed of the unit's `stream` ("init": the unit's seed, "sampler" or "augment")."""
    if stream not in STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; one of {', '.join(STREAMS)}")
    if stream == "init":
        return seed
    return int.from_bytes(hashlib.sha256(f"drolt {stream} seed {seed}".encode()).digest()[:4], "little")

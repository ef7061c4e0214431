"""Deterministic, nested subsets chosen by hashing each example's stable key (the paper's JFT subset study).

Held-out splits are carved by a salted hash of the key: `carve` takes the round(f·n) lowest hashes. The training
fraction uses each training example's `subset_rank`, its place in the hash order of the training split divided
by the split's size (uniform in [0, 1)); fraction f is the examples with `subset_rank < f`. `mixer data convert`
stores that rank in a Parquet column, so a streamed run selects its subset with a filter pushed down to the
reader, and an in-memory run computes the same ranks from the keys. Either way the 3% set lies inside the 10%
set, and the choice depends only on the keys, whatever order the shards are read in. Different salts ("test",
"val", "fraction") give independent rankings, so carving validation never biases the subset.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np


def key_hashes(keys: Sequence[str], salt: str) -> np.ndarray:
    """A uint64 per key: the first 8 bytes of blake2b(salt/key), identical on every platform."""
    salt_bytes = salt.encode() + b"/"
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(salt_bytes + key.encode(), digest_size=8).digest(), "big") for key in keys),
        dtype=np.uint64,
        count=len(keys),
    )


def carved_count(count: int, fraction: float) -> int:
    """How many of `count` examples `carve` chooses: round(fraction·count)."""
    return min(count, round(fraction * count))


def carve(keys: Sequence[str], fraction: float, salt: str) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..n-1 into (chosen, rest), both sorted; chosen holds the `carved_count` lowest hashes."""
    size = carved_count(len(keys), fraction)
    ranking = np.argsort(key_hashes(keys, salt), kind="stable")
    return np.sort(ranking[:size]), np.sort(ranking[size:])


def subset_ranks(keys: Sequence[str]) -> np.ndarray:
    """Each training key's place in the "fraction" hash order divided by the count: float64 in [0, 1)."""
    ranks = np.empty(len(keys), dtype=np.float64)
    ranks[np.argsort(key_hashes(keys, "fraction"), kind="stable")] = np.arange(len(keys)) / max(len(keys), 1)
    return ranks


def fraction_count(count: int, fraction: float) -> int:
    """How many of `count` training examples have `subset_rank < fraction` (at least one for any fraction > 0)."""
    chosen = min(count, math.ceil(fraction * count))
    # ceil's float product can be off by one either way; the rule itself is the float comparison rank/count < f
    while chosen > 0 and (chosen - 1) / count >= fraction:
        chosen -= 1
    while chosen < count and chosen / count < fraction:
        chosen += 1
    return chosen

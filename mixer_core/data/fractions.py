"""Deterministic, nested subsets chosen by hashing each example's stable key (the paper's JFT subset study).

Examples are ranked by a salted hash of their key and a fraction f takes the first round(f·n) of that ranking,
so the 3% set is a prefix of the 10% set (nested), the size is exact, and the choice depends only on the keys:
every machine and every worker picks the same examples, whatever order the shards were read in. Different
salts ("test", "val", "fraction") give independent rankings, so carving validation never biases the subset.
"""

from __future__ import annotations

import hashlib
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


def carved_count(count: int, fraction: float, *, at_least_one: bool = False) -> int:
    """How many of `count` examples `carve` chooses: round(fraction·count), at least one with `at_least_one`."""
    return min(count, max(int(at_least_one and count > 0), round(fraction * count)))


def carve(keys: Sequence[str], fraction: float, salt: str, *, at_least_one: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..n-1 into (chosen, rest), both sorted; chosen holds the `carved_count` lowest hashes.

    `at_least_one` keeps a tiny training fraction from selecting nothing.
    """
    size = carved_count(len(keys), fraction, at_least_one=at_least_one)
    ranking = np.argsort(key_hashes(keys, salt), kind="stable")
    return np.sort(ranking[:size]), np.sort(ranking[size:])

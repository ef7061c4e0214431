"""Which examples a run trains and evaluates on: the held-out splits and the nested training fraction, and their
sizes (the paper's JFT subset study). Every selection rule of the data layer lives here; the in-memory path
(`splits.py`), the converter (`convert.py`), the Parquet reader (`parquet.py`), the sizes known before loading
(`facts.py`) and the Ray Data stream (`sweeps.stream`) all use these functions.

Held-out splits are carved by a salted hash of each example's stable key: `carve` takes the round(f·n) lowest
hashes, test first (when the source has no test split), then validation (when it has no validation split). The
training fraction uses each training example's `subset_rank`, its place in the hash order of the training split
divided by the split's size (uniform in [0, 1)); fraction f is the examples with `subset_rank < f` (`in_fraction`).
`mixer data convert` stores that rank in a Parquet column, so a streamed run selects its subset with a filter
pushed down to the reader, and an in-memory run computes the same ranks from the keys. Either way the 3% set lies
inside the 10% set, and the choice depends only on the keys, whatever order the shards are read in. Different
salts ("test", "val", "fraction") give independent rankings, so carving validation never biases the subset.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from mixer_core.config import DataConfig
from mixer_core.data.errors import DataError

SUBSET_RANK = "subset_rank"  # the Parquet column holding each training example's subset rank
Rank = TypeVar("Rank")  # a float, a numpy array, or a pyarrow / Ray Data column expression


def in_fraction(subset_rank: Rank, fraction: float) -> Rank:
    """Whether an example of rank `subset_rank` is in training fraction `fraction`: `subset_rank < fraction`.

    The one statement of the rule. It returns what `<` gives for `subset_rank`: a bool for a float, a boolean
    mask for a numpy array, a row filter for `pyarrow.compute.field(SUBSET_RANK)` or Ray Data's `col(SUBSET_RANK)`.
    """
    return subset_rank < fraction


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
    """How many of `count` training examples are `in_fraction` (at least one for any fraction > 0).

    The ranks of `count` examples are 0/count, 1/count, ...; this counts those in the fraction without making them.
    """
    chosen = min(count, math.ceil(fraction * count))
    # ceil's float product can be off by one either way; the rule itself is the float comparison
    while chosen > 0 and not in_fraction((chosen - 1) / count, fraction):
        chosen -= 1
    while chosen < count and in_fraction(chosen / count, fraction):
        chosen += 1
    return chosen


def held_out_carves(has_test_split: bool, has_val_split: bool, cfg: DataConfig) -> list[tuple[str, float]]:
    """The held-out sets carved from a source's training split, in carving order, as (split name, fraction):
    test (`cfg.test_fraction`) when the source has no test split, then validation (`cfg.val_fraction`) when it has
    no validation split. The split name salts the carve's hashes."""
    carves = [] if has_test_split else [("test", cfg.test_fraction)]
    return carves + ([] if has_val_split else [("val", cfg.val_fraction)])


@dataclass(frozen=True)
class HeldOut:
    """Positions in a source's training split: the carved test set (None when the source has its own), the
    validation set (empty when the source has its own), and the training pool the fraction is taken from; all
    sorted."""

    test: np.ndarray | None
    val: np.ndarray
    train: np.ndarray


def carve_held_out(keys: list[str], has_test_split: bool, has_val_split: bool, cfg: DataConfig) -> HeldOut:
    """The `HeldOut` positions of a training split with these `keys`: every `held_out_carves` set, by key hash."""
    pool, carved = np.arange(len(keys)), {}
    for split, fraction in held_out_carves(has_test_split, has_val_split, cfg):
        chosen, rest = carve([keys[p] for p in pool], fraction, salt=split)
        carved[split], pool = pool[chosen], pool[rest]
    return HeldOut(carved.get("test"), carved.get("val", np.array([], dtype=np.int64)), pool)


def training_positions(keys: list[str], pool: np.ndarray, fraction: float) -> np.ndarray:
    """The positions of `pool` (positions in `keys`, a `HeldOut.train`) that are `in_fraction`."""
    return pool[in_fraction(subset_ranks([keys[p] for p in pool]), fraction)]


def train_split_size(source_train_size: int, has_test_split: bool, has_val_split: bool, cfg: DataConfig) -> int:
    """How many examples `carve_held_out` then `training_positions` leave of a training split of
    `source_train_size` examples, without its keys."""
    pool = source_train_size
    for _, fraction in held_out_carves(has_test_split, has_val_split, cfg):
        pool -= carved_count(pool, fraction)
    return fraction_count(pool, cfg.fraction)


def check_enough_examples(train_size: int, steps_per_epoch: int, cfg: DataConfig) -> None:
    """Return when the selected training split gives at least one step per epoch, else raise `DataError`.

    The one check of how much data the fraction leaves: an in-memory split needs one example (a split smaller
    than a batch trains on one short batch per epoch), a stream one full global batch (it drops the ragged end).
    """
    if steps_per_epoch == 0:
        raise DataError(
            f"data.fraction={cfg.fraction} leaves {train_size} training examples of {cfg.path or cfg.name}, too few "
            f"for one step of data.batch_size {cfg.batch_size} per epoch; raise data.fraction or lower data.batch_size"
        )

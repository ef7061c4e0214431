"""Datasets listed, not decoded: every example's key, label and where its encoded image lies, so an evaluation
can choose what it reads (few-shot shots per class, a capped test set) and decode only that.

An image folder lists its files (`sources.list_image_folder`); a Parquet shard set (`mixer data convert` output)
reads only its `key` and `label` columns, and remembers each row's shard and place in it. The test split is the
source's own (an image folder's `test/` or `val/`; `test-*` shards, else `val-*`), else carved from the training
split by key hash as `build_splits` carves it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mixer_core.config import DataConfig
from mixer_core.data.errors import DataError
from mixer_core.data.fractions import carve_held_out
from mixer_core.data.parquet import ShardSets, class_names, find_shards
from mixer_core.data.sources import list_image_folder

LISTED_SOURCES = ("imagefolder", "parquet")


@dataclass(frozen=True)
class Listing:
    """One split, listed: example i is `keys[i]` with `labels[i]`, its encoded image in `files[i]` (an image
    folder) or in row `row_index[i]` of shard `shards[shard_index[i]]` (Parquet, on `shard_sets`' filesystem)."""

    keys: list[str]
    labels: np.ndarray  # int64 (N,)
    files: list[str] | None = None
    shard_sets: ShardSets | None = None
    shards: list[str] | None = None
    shard_index: np.ndarray | None = None
    row_index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, positions: np.ndarray) -> Listing:
        """The examples at `positions`, in that order."""
        return Listing(
            [self.keys[p] for p in positions],
            self.labels[positions],
            None if self.files is None else [self.files[p] for p in positions],
            self.shard_sets,
            self.shards,
            None if self.shard_index is None else self.shard_index[positions],
            None if self.row_index is None else self.row_index[positions],
        )

    def wheres(self) -> list[str]:
        """Where each example's image lies, for messages: its file, or `shard: row key`."""
        if self.files is not None:
            return list(self.files)
        return [f"{self.shards[shard]}: row {key}" for shard, key in zip(self.shard_index, self.keys)]

    def encoded(self) -> list[bytes]:
        """Every listed example's encoded image, in listing order; reads only the row groups that hold them."""
        if self.files is not None:
            return [_read_file(file) for file in self.files]
        images: list[bytes | None] = [None] * len(self)
        for shard_number in np.unique(self.shard_index):
            wanted = np.flatnonzero(self.shard_index == shard_number)
            shard = self.shards[shard_number]
            for place, image in zip(wanted, _read_rows(self.shard_sets, shard, self.row_index[wanted])):
                images[place] = image
        return images


@dataclass(frozen=True)
class ListedDataset:
    """A dataset's classes, channels as decoded, and its listed training and test splits."""

    name: str  # for messages: data.path
    class_names: list[str]
    channels: int
    train: Listing
    test: Listing


def list_dataset(cfg: DataConfig) -> ListedDataset:
    """`cfg`'s image folder or Parquet shard set as listings, without decoding an image."""
    if cfg.name == "imagefolder":
        folder = list_image_folder(cfg)
        train = Listing(folder.train.keys, folder.train.labels.numpy(), files=folder.train.files)
        test = folder.test and Listing(folder.test.keys, folder.test.labels.numpy(), files=folder.test.files)
        classes, channels = folder.classes, 3  # decoded as RGB, as big_vision decodes ImageNet
    elif cfg.name == "parquet":
        sets = find_shards(cfg.path)
        test_split = next((split for split in ("test", "val") if sets.shards[split]), None)
        train, test = _list_shards(sets, "train", cfg.path), test_split and _list_shards(sets, test_split, cfg.path)
        classes, channels = class_names(sets, cfg.path), sets.channels
    else:
        raise DataError(f"data.name {cfg.name}: only {' and '.join(LISTED_SOURCES)} are listed without decoding")
    if test is None:  # carved from the training split, by key hash, as build_splits carves it
        held_out = carve_held_out(train.keys, False, True, cfg)
        train, test = train.take(held_out.train), train.take(held_out.test)
    return ListedDataset(str(cfg.path), classes, channels, train, test)


def _read_file(file: str) -> bytes:
    try:
        with open(file, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise DataError(f"{file}: not readable ({error})") from None


def _list_shards(sets: ShardSets, split: str, path: str) -> Listing:
    """A split's keys and labels from its shards' `key` and `label` columns, with each row's shard and place."""
    keys, labels, shard_index, row_index = [], [], [], []
    for number, shard in enumerate(sets.shards[split]):
        rows = 0
        for batch in sets.read(shard, ["key", "label"]):
            if pa.types.is_list(batch["label"].type):
                raise DataError(f"{path}: few-shot evaluation needs single-label data; {shard} holds label lists")
            keys += batch["key"].to_pylist()
            labels.append(batch["label"].to_numpy(zero_copy_only=False))
            rows += batch.num_rows
        shard_index.append(np.full(rows, number))
        row_index.append(np.arange(rows))
    return Listing(keys, _concatenated(labels), shard_sets=sets, shards=sets.shards[split],
                   shard_index=_concatenated(shard_index), row_index=_concatenated(row_index))


def _concatenated(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def _read_rows(sets: ShardSets, shard: str, rows: np.ndarray) -> list[bytes]:
    """The `image` of `rows` (places in the shard), reading only the row groups that hold them."""
    try:
        file = pq.ParquetFile(shard, filesystem=sets.filesystem)
        starts = np.cumsum([0] + [file.metadata.row_group(g).num_rows for g in range(file.num_row_groups)])
        groups = np.searchsorted(starts, rows, side="right") - 1
        images = {}
        for group in np.unique(groups):
            column = file.read_row_group(int(group), columns=["image"])["image"]
            for row in rows[groups == group]:
                images[int(row)] = column[int(row - starts[group])].as_py()
        return [images[int(row)] for row in rows]
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{shard}: not a readable Parquet shard ({error})") from None

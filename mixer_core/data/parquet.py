"""Sharded image Parquet (`mixer-parquet/2`): the encoded images as they came, for streaming at any scale.

A dataset is three shard sets, `train-*`, `val-*` and `test-*.parquet` (`mixer data convert` carves validation,
and test when the source has none, once), plus `manifest.json`. Every shard has the columns

- `key` (string): the example's stable id; held-out carving and fractions hash it (`fractions.py`);
- `label` (int64), or lists of int64 for a multi-label dataset (JFT): its labels are (N, L) class lists
  padded with `NO_LABEL`, trained with `train.loss: sigmoid`;
- `image` (binary): the original encoded file (JPEG, PNG, ... at any size; never resized or re-encoded);
- `subset_rank` (float64, training shards): uniform in [0, 1); data.fraction f is the rows `in_fraction`
  (`fractions.py`), a filter the reader applies to each row group (3% ⊂ 10% ⊂ 30% ⊂ 100% by construction).

Shards are read with pyarrow from a local path or any fsspec URL (s3://, gs://, memory://). A glob names
shards directly; its `val-*` and `test-*` files are those splits and every other file is training data.
"""

from __future__ import annotations

import itertools
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from mixer_core.data.decode import decode_resized
from mixer_core.data.errors import DataError
from mixer_core.data.examples import Examples, Source, as_uint8_images, check_labels, padded_class_lists
from mixer_core.data.fractions import SUBSET_RANK, in_fraction
from mixer_core.data.manifest import read_manifest

SPLITS = ("train", "val", "test")
COLUMNS = ("key", "label", "image", SUBSET_RANK)
READ_BATCH_ROWS = 256  # rows per pyarrow batch: bounds the memory of reading held-out splits


def shard_name(split: str, index: int, count: int) -> str:
    """`train-00003-of-00016.parquet`."""
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


def shard_table(keys: list[str], labels: np.ndarray, images: list[bytes], subset_rank: np.ndarray) -> pa.Table:
    """One shard's rows in the format's schema."""
    return pa.table({
        "key": pa.array(keys, pa.string()),
        "label": pa.array(labels, pa.int64()),
        "image": pa.array(images, pa.binary()),
        SUBSET_RANK: pa.array(subset_rank, pa.float64()),
    })


def subset_filter(fraction: float) -> pc.Expression:
    """The row filter choosing data.fraction of the training shards (`fractions.in_fraction`)."""
    return in_fraction(pc.field(SUBSET_RANK), fraction)


@dataclass(frozen=True)
class ShardSets:
    """A Parquet dataset's shards by split, on `filesystem`, and its manifest ({} when it has none)."""

    filesystem: fsspec.AbstractFileSystem
    shards: dict[str, list[str]]
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str] | None:
        return self.manifest.get("classes")

    @property
    def channels(self) -> int:
        return int(self.manifest.get("channels", 3))

    def read(self, shard: str, columns: list[str], filter: pc.Expression | None = None) -> Iterator[pa.RecordBatch]:
        """The rows of one shard in batches of `READ_BATCH_ROWS`; `DataError` naming the shard if unreadable."""
        try:
            file = pq.ParquetFile(shard, filesystem=self.filesystem)
            missing = [column for column in columns if column not in file.schema_arrow.names]
            if missing:
                raise DataError(f"{shard}: missing column(s) {missing}; a shard needs {list(COLUMNS)}")
            for batch in file.iter_batches(batch_size=READ_BATCH_ROWS, columns=columns):
                yield batch.filter(filter) if filter is not None else batch
        except (pa.ArrowException, OSError) as error:
            raise DataError(f"{shard}: not a readable Parquet shard ({error})") from None


def _flat(column: pa.Array) -> pa.Array:
    """A label column's classes: the column itself, or every list's values for a multi-label one."""
    return pc.list_flatten(column) if pa.types.is_list(column.type) else column


def _labels(column: pa.Array) -> torch.Tensor:
    """Integer labels (N,), or integer lists as (N, longest list) padded with NO_LABEL."""
    if not pa.types.is_list(column.type):
        return torch.from_numpy(column.to_numpy(zero_copy_only=False).astype(np.int64))
    lengths = pc.list_value_length(column).fill_null(0).to_numpy()
    return torch.from_numpy(padded_class_lists(lengths, pc.list_flatten(column).to_numpy()))


def find_shards(path: str) -> ShardSets:
    """The shard sets of a folder/URL of shards (with `manifest.json`) or of a glob of shards."""
    filesystem, root = fsspec.core.url_to_fs(path)
    is_glob = any(char in root for char in "*?[")
    if not is_glob and not filesystem.isdir(root):
        raise DataError(f"{path}: no such Parquet folder")
    shards = sorted(filesystem.glob(root if is_glob else posixpath.join(root, "*.parquet")))
    if not shards:
        raise DataError(f"{path}: no Parquet shards found")
    by_split: dict[str, list[str]] = {split: [] for split in SPLITS}
    for shard in shards:
        prefix = posixpath.basename(shard).split("-")[0]
        by_split[prefix if prefix in ("val", "test") else "train"].append(shard)
    if not by_split["train"]:
        raise DataError(f"{path}: only held-out shards found; training shards are the ones not named val-* or test-*")
    manifest = read_manifest(filesystem, posixpath.dirname(root) if is_glob else root) or {}
    return ShardSets(filesystem, by_split, manifest)


def row_count(sets: ShardSets, split: str) -> int:
    """Rows in a split's shards, from their footers."""
    try:
        return sum(pq.ParquetFile(shard, filesystem=sets.filesystem).metadata.num_rows for shard in sets.shards[split])
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{sets.shards[split]}: not readable Parquet shards ({error})") from None


def count_selected(sets: ShardSets, fraction: float) -> int:
    """Training rows in `fraction` (`subset_filter`), reading only the subset rank column of every shard."""
    return sum(
        batch.num_rows
        for shard in sets.shards["train"]
        for batch in sets.read(shard, [SUBSET_RANK], subset_filter(fraction))
    )


def read_examples(
    sets: ShardSets, split: str, image_size: int, *, fraction: float = 1.0, max_examples: int | None = None
) -> Examples:
    """The first `max_examples` rows (all when None) of a split, decoded and resized to `image_size` squares.

    Memory holds the decoded examples only, never a whole shard. For the training split only rows in `fraction`
    (`subset_filter`) count.
    """
    columns = ["key", "label", "image"] + ([SUBSET_RANK] if split == "train" else [])
    row_filter = subset_filter(fraction) if split == "train" else None
    mode = "L" if sets.channels == 1 else "RGB"
    rows = (
        (shard, key, label, encoded)
        for shard in sets.shards[split]
        for batch in sets.read(shard, columns, row_filter)
        for key, label, encoded in zip(*(batch[name].to_pylist() for name in ("key", "label", "image")))
    )
    images, labels, keys = [], [], []
    for shard, key, label, encoded in itertools.islice(rows, max_examples):
        images.append(decode_resized(encoded, image_size, mode, f"{shard}: row {key}"))
        labels.append(label)
        keys.append(key)
    stacked = np.stack(images) if images else np.zeros((0, image_size, image_size, sets.channels), np.uint8)
    label_column = pa.array(labels) if labels else pa.array([], pa.int64())
    return Examples(as_uint8_images(stacked, channels_last=True), _labels(label_column), keys)


def decoded_size(sets: ShardSets, image_size: int | None, path: str) -> int:
    """The square size images decode to: data.image_size, else the manifest's uniform image shape's longer side."""
    if image_size is not None:
        return image_size
    if "image_shape" not in sets.manifest:
        raise DataError(f"{path}: images of any size need data.image_size (the manifest gives no image_shape)")
    return max(sets.manifest["image_shape"][1:])


def class_names(sets: ShardSets, path: str) -> list[str]:
    """The manifest's class names, else 0..max label of the training shards."""
    if sets.class_names is not None:
        return sets.class_names
    labels = [
        pc.max(_flat(batch["label"])).as_py() for shard in sets.shards["train"] for batch in sets.read(shard, ["label"])
    ]
    return [str(label) for label in range(max(label for label in labels if label is not None) + 1)]


def load_parquet(path: str, image_size: int | None) -> Source:
    """Every split of a Parquet dataset decoded into memory at `decoded_size` (the in-memory path)."""
    sets = find_shards(path)
    size = decoded_size(sets, image_size, path)
    names = class_names(sets, path)
    splits = {split: read_examples(sets, split, size) if sets.shards[split] else None for split in SPLITS}
    for split, examples in splits.items():
        if examples is not None:
            check_labels(examples.labels, len(names), f"{path} ({split} shards)")
    return Source(splits["train"], splits["test"], names, (sets.channels, size, size), splits["val"])

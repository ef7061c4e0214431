"""Sharded Parquet datasets: `key` (string), `label` (int64), `image` (PNG bytes), plus a `manifest.json`.

A `label` column of integer lists makes a multi-label dataset (JFT): its labels are (N, L) class lists padded
with `NO_LABEL`, trained with `train.loss: sigmoid`.

This is the format for JFT/ImageNet-21k-scale data: shards are read with pyarrow from a local path or any
fsspec URL (s3://, gs://, memory://), and images stay PNG-encoded in memory until a batch asks for them.
Shards named `test-*.parquet` form the test split, all others the training split.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Callable
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from mixer_core.data.errors import DataError
from mixer_core.data.examples import NO_LABEL, Examples, Source, check_labels

MANIFEST = "manifest.json"
FORMAT = "mixer-parquet/1"
COLUMNS = ("key", "label", "image")


def encode_png(image: torch.Tensor) -> bytes:
    """PNG bytes of a uint8 (C, H, W) image with 1 (grayscale) or 3 (RGB) channels."""
    buffer = io.BytesIO()
    to_pil_image(image).save(buffer, format="PNG")
    return buffer.getvalue()


class ParquetImages:
    """PNG-encoded images decoded on access; `store[positions]` returns uint8 (n, C, H, W)."""

    def __init__(self, encoded: pa.BinaryArray, shard_of_row: np.ndarray, shard_names: list[str], shape: tuple):
        self.encoded = encoded
        self.shard_of_row = shard_of_row
        self.shard_names = shard_names
        self.shape = tuple(shape)

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, positions: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._decode(int(position)) for position in positions.reshape(-1)])

    def _decode(self, position: int) -> torch.Tensor:
        shard = self.shard_names[self.shard_of_row[position]]
        try:
            image = pil_to_tensor(Image.open(io.BytesIO(self.encoded[position].as_py())))
        except Exception as error:  # PIL raises several types for undecodable bytes
            raise DataError(f"{shard}: the image of example {position} is not decodable ({error})") from None
        if tuple(image.shape) != self.shape:
            raise DataError(f"{shard}: image shape {tuple(image.shape)} differs from the dataset's {self.shape}")
        return image


def _read_shard(filesystem: fsspec.AbstractFileSystem, shard: str) -> pa.Table:
    try:
        table = pq.read_table(shard, filesystem=filesystem)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{shard}: not a readable Parquet shard ({error})") from None
    missing = [column for column in COLUMNS if column not in table.column_names]
    if missing:
        raise DataError(f"{shard}: missing column(s) {missing}; a shard needs {list(COLUMNS)}")
    if table.num_rows == 0:
        raise DataError(f"{shard}: empty shard (0 rows)")
    label_type = table.schema.field("label").type
    integer_lists = pa.types.is_list(label_type) and pa.types.is_integer(label_type.value_type)
    if not (pa.types.is_integer(label_type) or integer_lists):
        raise DataError(f"{shard}: column 'label' must hold integers or lists of integers, got {label_type}")
    return table.select(COLUMNS)


def _load_split(
    filesystem: fsspec.AbstractFileSystem, shards: list[str], num_classes: int | None, shape: tuple | None
) -> tuple[Examples, tuple]:
    """One split from its shards; checks labels (when the class count is known) and one image per shard."""
    tables = [_read_shard(filesystem, shard) for shard in shards]
    if num_classes is not None:
        for shard, table in zip(shards, tables):
            check_labels(_labels(table["label"].combine_chunks()), num_classes, shard)
    rows_per_shard = [table.num_rows for table in tables]
    combined = pa.concat_tables(tables).combine_chunks()
    encoded = combined["image"].chunk(0).cast(pa.binary())
    shard_of_row = np.repeat(np.arange(len(shards)), rows_per_shard)
    if shape is None:  # no manifest: the first image sets the shape
        shape = tuple(pil_to_tensor(Image.open(io.BytesIO(encoded[0].as_py()))).shape)
    images = ParquetImages(encoded, shard_of_row, shards, shape)
    # decode the first image of every shard now, so a shard of wrongly shaped images fails before training
    images[torch.as_tensor(np.cumsum([0, *rows_per_shard[:-1]]))]
    return Examples(images, _labels(combined["label"].chunk(0)), combined["key"].to_pylist()), shape


def _labels(column: pa.Array) -> torch.Tensor:
    """Integer labels (N,), or integer lists as (N, longest list) padded with NO_LABEL."""
    if not pa.types.is_list(column.type):
        return torch.from_numpy(column.to_numpy().astype(np.int64))
    lengths = pc.list_value_length(column).fill_null(0).to_numpy().astype(np.int64)
    values = pc.list_flatten(column).to_numpy().astype(np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    columns = np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    padded = np.full((len(lengths), max(1, int(lengths.max(initial=0)))), NO_LABEL, dtype=np.int64)
    padded[rows, columns] = values
    return torch.from_numpy(padded)


def read_manifest(filesystem: fsspec.AbstractFileSystem, folder: str) -> dict[str, Any] | None:
    """The manifest next to the shards, or None when there is none."""
    path = posixpath.join(folder, MANIFEST)
    if not filesystem.exists(path):
        return None
    try:
        with filesystem.open(path, "r") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a JSON manifest ({error})") from None


def load_parquet(path: str) -> Source:
    """Read a Parquet dataset: a folder/URL of shards (with `manifest.json`) or a glob of training shards."""
    filesystem, root = fsspec.core.url_to_fs(path)
    is_glob = any(char in root for char in "*?[")
    folder = posixpath.dirname(root) if is_glob else root
    if not is_glob and not filesystem.isdir(root):
        raise DataError(f"{path}: no such Parquet folder")
    shards = sorted(filesystem.glob(root if is_glob else posixpath.join(root, "*.parquet")))
    if not shards:
        raise DataError(f"{path}: no Parquet shards found")
    manifest = read_manifest(filesystem, folder) or {}
    class_names = manifest.get("classes")
    shape = tuple(manifest["image_shape"]) if "image_shape" in manifest else None
    test_shards = [shard for shard in shards if posixpath.basename(shard).startswith("test-")]
    train_shards = [shard for shard in shards if shard not in test_shards]
    if not train_shards:
        raise DataError(f"{path}: only test shards found; training shards are the ones not named test-*")
    train, shape = _load_split(filesystem, train_shards, class_names and len(class_names), shape)
    test = _load_split(filesystem, test_shards, class_names and len(class_names), shape)[0] if test_shards else None
    if class_names is None:  # no manifest: classes are 0..max label
        given = train.labels[train.labels != NO_LABEL] if train.labels.dim() == 2 else train.labels
        if int(given.min()) < 0:
            raise DataError(f"{path}: negative label {int(given.min())}")
        class_names = [str(label) for label in range(int(given.max()) + 1)]
        if test is not None:
            check_labels(test.labels, len(class_names), f"{path} (test shards)")
    return Source(train, test, class_names, shape)


def write_parquet(
    source: Source, dest: str, shard_size: int, progress: Callable[[str], None] = lambda message: None
) -> dict[str, Any]:
    """Write `source` as shards `{split}-NNNNN-of-NNNNN.parquet` plus `manifest.json` under `dest`; return the manifest."""
    filesystem, root = fsspec.core.url_to_fs(dest)
    filesystem.makedirs(root, exist_ok=True)
    splits = {"train": source.train, **({"test": source.test} if source.test is not None else {})}
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "classes": source.class_names,
        "num_classes": source.num_classes,
        "image_shape": list(source.image_shape),
        "splits": {},
    }
    for split, examples in splits.items():
        num_shards = max(1, -(-len(examples) // shard_size))
        names = []
        for shard_index in range(num_shards):
            start, stop = shard_index * shard_size, min(len(examples), (shard_index + 1) * shard_size)
            images = examples.images[torch.arange(start, stop)]
            table = pa.table(
                {
                    "key": pa.array(examples.keys[start:stop], pa.string()),
                    "label": pa.array(examples.labels[start:stop].numpy(), pa.int64()),
                    "image": pa.array([encode_png(image) for image in images], pa.binary()),
                }
            )
            name = f"{split}-{shard_index:05d}-of-{num_shards:05d}.parquet"
            pq.write_table(table, posixpath.join(root, name), filesystem=filesystem)
            names.append(name)
            progress(f"{split}: wrote {name} ({stop - start} examples)")
        manifest["splits"][split] = {"count": len(examples), "shards": names}
    with filesystem.open(posixpath.join(root, MANIFEST), "w") as handle:
        json.dump(manifest, handle, indent=2)
    return manifest

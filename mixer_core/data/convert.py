"""`mixer data convert`: any source as `mixer-parquet/2` shard sets (see parquet.py), written in parallel.

Image folders keep their files' bytes as they are (any format, any size); sources that only exist as arrays
(digits, IDX, torchvision, synthetic) are stored as lossless PNG. Test (when the source has none) and
validation are carved here, once, with the run config's fractions and the same key hashes `build_splits` uses,
so a streamed run and an in-memory run of the same source train on the same examples.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq

from mixer_core.config import DataConfig
from mixer_core.data.errors import DataError
from mixer_core.data.fractions import carve_held_out, subset_ranks
from mixer_core.data.manifest import FORMAT, MANIFEST
from mixer_core.data.parquet import shard_name, shard_table
from mixer_core.data.sources import encode_png, list_image_folder, load_source


# Training rows are written in subset_rank order, in row groups of this many rows, so the row groups' min/max
# statistics let the reader skip everything above data.fraction: a 3% run reads about 3% of the bytes.
ROW_GROUP_ROWS = 128


@dataclass(frozen=True)
class Rows:
    """One split's rows before writing: `images[i]` is the encoded image, or the file holding it."""

    keys: list[str]
    labels: np.ndarray
    images: list[bytes | str]


@dataclass(frozen=True)
class ShardJob:
    """One shard to write under `dest`, named `name`."""

    dest: str
    name: str
    keys: list[str]
    labels: np.ndarray
    images: list[bytes | str]
    subset_rank: np.ndarray


def _write_shard(job: ShardJob) -> str:
    images = [image if isinstance(image, bytes) else Path(image).read_bytes() for image in job.images]
    filesystem, root = fsspec.core.url_to_fs(job.dest)
    pq.write_table(
        shard_table(job.keys, job.labels, images, job.subset_rank),
        posixpath.join(root, job.name),
        filesystem=filesystem,
        row_group_size=ROW_GROUP_ROWS,
        # encoded images neither compress nor repeat: storing them plain saves the reader's time
        compression={"key": "snappy", "label": "snappy", "image": "none", "subset_rank": "snappy"},
        use_dictionary=["key"],
    )
    return job.name


def _rows(keys: list[str], labels, images, positions: np.ndarray) -> Rows:
    return Rows([keys[p] for p in positions], np.asarray(labels)[positions], [images[p] for p in positions])


def _source_rows(cfg: DataConfig, seed: int) -> tuple[dict[str, Any], Rows, Rows | None]:
    """Manifest facts of `cfg`'s source, its training rows and its test rows (None when it has no test split)."""
    if cfg.name == "imagefolder":  # the files' own bytes, read by the shard writers
        folder = list_image_folder(cfg)
        facts = {"classes": folder.classes, "channels": 3}
        test = folder.test and Rows(folder.test.keys, folder.test.labels.numpy(), folder.test.files)
        return facts, Rows(folder.train.keys, folder.train.labels.numpy(), folder.train.files), test

    def encoded(examples) -> Rows:
        return Rows(examples.keys, examples.labels.numpy(), [encode_png(image) for image in examples.images])

    source = load_source(cfg, seed)
    facts = {"classes": source.class_names, "channels": source.image_shape[0], "image_shape": list(source.image_shape)}
    return facts, encoded(source.train), source.test and encoded(source.test)


def convert(
    cfg: DataConfig,
    dest: str,
    shard_size: int,
    processes: int,
    progress: Callable[[str], None] = lambda _: None,
    seed: int = 0,
) -> dict[str, Any]:
    """Write `cfg`'s source under `dest` as train/val/test shard sets plus `manifest.json`; return the manifest.

    `processes` shards are read and written at once (1: in this process, as `memory://` URLs need); `seed`
    generates the synthetic source.
    """
    if cfg.name == "parquet":
        raise DataError(f"{cfg.path}: already Parquet shards; convert reads the other sources")
    facts, train, test = _source_rows(cfg, seed)
    held_out = carve_held_out(train.keys, test is not None, False, cfg)
    pool_ranks = subset_ranks([train.keys[p] for p in held_out.train])
    by_rank = np.argsort(pool_ranks)
    splits = {
        "train": _rows(train.keys, train.labels, train.images, held_out.train[by_rank]),
        "val": _rows(train.keys, train.labels, train.images, held_out.val),
        "test": test or _rows(train.keys, train.labels, train.images, held_out.test),
    }
    filesystem, root = fsspec.core.url_to_fs(dest)
    filesystem.makedirs(root, exist_ok=True)
    jobs, manifest_splits = [], {}
    for split, rows in splits.items():
        ranks = pool_ranks[by_rank] if split == "train" else np.full(len(rows.keys), np.nan)
        count = max(1, -(-len(rows.keys) // shard_size))
        names = [shard_name(split, index, count) for index in range(count)]
        for index, name in enumerate(names):
            part = slice(index * shard_size, (index + 1) * shard_size)
            jobs.append(ShardJob(dest, name, rows.keys[part], rows.labels[part], rows.images[part], ranks[part]))
        manifest_splits[split] = {"count": len(rows.keys), "shards": names}
    with ProcessPoolExecutor(processes) as pool:
        for name in (map if processes == 1 else pool.map)(_write_shard, jobs):
            progress(f"wrote {name}")
    manifest = {
        "format": FORMAT,
        **facts,
        "num_classes": len(facts["classes"]),
        "carved": {"val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction},
        "splits": manifest_splits,
    }
    with filesystem.open(posixpath.join(root, MANIFEST), "w") as handle:
        json.dump(manifest, handle, indent=2)
    return manifest

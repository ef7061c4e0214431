"""What a dataset is before it is loaded: image shape, classes and size from the source's definition, IDX headers
or Parquet manifest (no image is read), and the training split `build_splits` will make of it.

The sweep plan sizes models and training FLOPs from these, so planning L/16 on JFT costs nothing; this module
imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import fsspec

from mixer_core.config import DataConfig
from mixer_core.data.errors import DataError
from mixer_core.data.fractions import train_split_size
from mixer_core.data.idx import idx_layout, read_idx_count
from mixer_core.data.manifest import read_manifest

IDX_IMAGE_SHAPE = (1, 28, 28)
SYNTHETIC_IMAGE_SIZE = 16  # the generator's native size when data.image_size is not set
SYNTHETIC_CHANNELS = 3


@dataclass(frozen=True)
class DatasetFacts:
    """What is known of a dataset before loading it; None where only its files could tell."""

    image_shape: tuple[int, int, int] | None  # native (C, H, W)
    num_classes: int | None
    source_train_size: int | None  # examples in the source's training split, before test/validation are carved
    has_test_split: bool  # otherwise data.test_fraction is carved from the training split
    has_val_split: bool = False  # otherwise data.val_fraction is carved from the training split


UNKNOWN = DatasetFacts(None, None, None, False)
_FIXED = {  # sources whose size is part of their definition
    "digits": DatasetFacts((1, 8, 8), 10, 1797, False),
    "mnist": DatasetFacts((1, 28, 28), 10, 60000, True),
    "fashion_mnist": DatasetFacts((1, 28, 28), 10, 60000, True),
    "cifar10": DatasetFacts((3, 32, 32), 10, 50000, True),
    "cifar100": DatasetFacts((3, 32, 32), 100, 50000, True),
}


def dataset_facts(cfg: DataConfig) -> DatasetFacts:
    """Shape, classes and size of `cfg`'s source without loading it; `UNKNOWN` parts stay None (remote Parquet,
    files not on this machine, image folders)."""
    if cfg.name in _FIXED:
        return _FIXED[cfg.name]
    if cfg.name == "synthetic":
        shape = (SYNTHETIC_CHANNELS, SYNTHETIC_IMAGE_SIZE, SYNTHETIC_IMAGE_SIZE)
        return DatasetFacts(shape, cfg.synthetic_classes, cfg.synthetic_examples, False)
    if cfg.path is None or "://" in cfg.path:
        return UNKNOWN
    path = Path(cfg.path).expanduser()
    try:
        if cfg.name == "mnist_idx" and path.is_dir():
            pairs, train_prefix, test_prefix = idx_layout(path)
            return DatasetFacts(IDX_IMAGE_SHAPE, 10, read_idx_count(pairs[train_prefix][1]), test_prefix is not None)
        if cfg.name == "parquet":
            folder = path.parent if any(char in cfg.path for char in "*?[") else path
            manifest = read_manifest(fsspec.filesystem("file"), str(folder)) or {}
            splits = manifest.get("splits", {})
            shape = tuple(manifest["image_shape"]) if "image_shape" in manifest else None
            train_count = splits.get("train", {}).get("count")
            return DatasetFacts(shape, manifest.get("num_classes"), train_count, "test" in splits, "val" in splits)
    except DataError:
        return UNKNOWN  # unreadable files: the run itself reports them
    return UNKNOWN


def estimated_train_size(cfg: DataConfig) -> int | None:
    """The `train_size` `build_splits(cfg)` will report, from `dataset_facts`; None when the size is unknown."""
    facts = dataset_facts(cfg)
    if facts.source_train_size is None:
        return None
    return train_split_size(facts.source_train_size, facts.has_test_split, facts.has_val_split, cfg)

"""`build_splits`: a config's dataset as train / validation / test datasets ready for a model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from mixer_core.config import DataConfig
from mixer_core.data.fractions import carve, carved_count
from mixer_core.data.permutations import permutation_index
from mixer_core.data.sources import load_source
from mixer_core.data.transforms import Augmentation, ImageDataset


@dataclass(frozen=True)
class DataSplits:
    """Datasets yielding (float32 (C, H, W) in [-1, 1], int label); only `train` is augmented and subsampled."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W) after resizing
    train_size: int  # examples in `train` after the fraction
    class_names: list[str]


def build_splits(cfg: DataConfig, seed: int = 0) -> DataSplits:
    """Load `cfg.name`, carve test (when the source has none) and validation by key hash, apply the fraction.

    Every carve hashes the examples' stable keys, so validation and test are the same for every fraction and
    every trial, and the fraction subsets are nested. `seed` generates the synthetic source; every other source
    ignores it.
    """
    source = load_source(cfg, seed)
    keys = source.train.keys
    if source.test is None:
        test_positions, pool = carve(keys, cfg.test_fraction, salt="test")
        test_examples = source.train
    else:
        test_positions, pool = np.arange(len(source.test)), np.arange(len(keys))
        test_examples = source.test
    val_chosen, train_pool = carve([keys[p] for p in pool], cfg.val_fraction, salt="val")
    train_chosen, _ = carve([keys[p] for p in pool[train_pool]], cfg.fraction, salt="fraction", at_least_one=True)
    # train_split_size repeats these three carves' arithmetic: change both together.
    train_positions = pool[train_pool][train_chosen]

    channels, height, width = source.image_shape
    size = cfg.image_size or height
    if cfg.image_size is None and height != width:
        size = max(height, width)  # non-square sources are resized to a square at their longer side
    permutation = permutation_index(cfg.permutation, size, size, cfg.permutation_patch_size, cfg.permutation_seed)

    augmentation = Augmentation(cfg.augment, size, channels)
    return DataSplits(
        train=ImageDataset(source.train, train_positions, size, permutation,
                           augmentation if augmentation.enabled else None, cfg.eval_resize),
        val=ImageDataset(source.train, pool[val_chosen], size, permutation, eval_resize=cfg.eval_resize),
        test=ImageDataset(test_examples, test_positions, size, permutation, eval_resize=cfg.eval_resize),
        num_classes=source.num_classes,
        image_shape=(channels, size, size),
        train_size=len(train_positions),
        class_names=source.class_names,
    )


def train_split_size(source_train_size: int, has_test_split: bool, cfg: DataConfig) -> int:
    """The `train_size` `build_splits` makes from a source whose training split holds `source_train_size`
    examples: test carved when the source has none, then validation, then the fraction."""
    pool = source_train_size
    if not has_test_split:
        pool -= carved_count(pool, cfg.test_fraction)
    pool -= carved_count(pool, cfg.val_fraction)
    return carved_count(pool, cfg.fraction, at_least_one=True)

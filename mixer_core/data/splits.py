"""`build_splits`: a config's dataset as train / validation / test datasets ready for a model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from mixer_core.config import DataConfig
from mixer_core.data.fractions import carve_held_out, training_positions
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


def build_splits(cfg: DataConfig, seed: int = 0, max_eval_examples: int | None = None) -> DataSplits:
    """Load `cfg.name`, carve test (when the source has none) and validation by key hash, apply the fraction.

    Every carve hashes the examples' stable keys, so validation and test are the same for every fraction and
    every trial, and the fraction subsets are nested (`fractions.py`). A source with its own validation split
    (converted Parquet) is used as it is. Validation and test keep their first `max_eval_examples` (all when None).
    `seed` generates the synthetic source; every other source ignores it.
    """
    source = load_source(cfg, seed)
    keys = source.train.keys
    held_out = carve_held_out(keys, source.test is not None, source.val is not None, cfg)
    test = (source.train, held_out.test) if source.test is None else (source.test, np.arange(len(source.test)))
    val = (source.train, held_out.val) if source.val is None else (source.val, np.arange(len(source.val)))
    train_positions = training_positions(keys, held_out.train, cfg.fraction)

    channels, height, width = source.image_shape
    size = cfg.image_size or height
    if cfg.image_size is None and height != width:
        size = max(height, width)  # non-square sources are resized to a square at their longer side
    permutation = permutation_index(cfg.permutation, size, size, cfg.permuted_patch_size, cfg.permutation_seed)

    augmentation = Augmentation(cfg.augment, size, channels)
    return DataSplits(
        train=ImageDataset(source.train, train_positions, size, permutation,
                           augmentation if augmentation.enabled else None, cfg.eval_resize),
        val=ImageDataset(val[0], val[1][:max_eval_examples], size, permutation, eval_resize=cfg.eval_resize),
        test=ImageDataset(test[0], test[1][:max_eval_examples], size, permutation, eval_resize=cfg.eval_resize),
        num_classes=source.num_classes,
        image_shape=(channels, size, size),
        train_size=len(train_positions),
        class_names=source.class_names,
    )

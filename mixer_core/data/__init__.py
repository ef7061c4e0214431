"""Datasets, nested data fractions, splits, augmentation and loaders for Mixer training (pure PyTorch)."""

from mixer_core.data.errors import DataError
from mixer_core.data.loader import build_mixup, make_loader
from mixer_core.data.splits import DataSplits, build_splits

__all__ = ["DataError", "DataSplits", "build_mixup", "build_splits", "make_loader"]

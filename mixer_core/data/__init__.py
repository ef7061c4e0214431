"""Datasets, nested data fractions, splits, augmentation and loaders for Mixer training (pure PyTorch).

The names below load on first use: planning a sweep reads `mixer_core.data.facts` alone, and importing a submodule
runs this file first, so it imports no torch itself.
"""

from __future__ import annotations

from typing import Any

from mixer_core.data.errors import DataError

__all__ = ["DataError", "DataSplits", "build_splits", "build_mixup", "make_loader"]


def __getattr__(name: str) -> Any:
    if name in ("DataSplits", "build_splits"):
        from mixer_core.data import splits

        return getattr(splits, name)
    if name in ("build_mixup", "make_loader"):
        from mixer_core.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

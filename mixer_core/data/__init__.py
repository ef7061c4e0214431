"""Datasets, nested data fractions, splits, augmentation and loaders for Mixer training (pure PyTorch).

The names below load on first use: planning a sweep reads `mixer_core.data.facts` alone and imports no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from mixer_core.data.errors import DataError

_LAZY = {"DataSplits": "splits", "build_splits": "splits", "build_mixup": "loader", "make_loader": "loader"}
__all__ = ["DataError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)

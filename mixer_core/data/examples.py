"""What every source produces: images as uint8 (C, H, W), integer labels and a stable key per example."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from mixer_core.data.errors import DataError


class ImageStore(Protocol):
    """Images addressed by position: a uint8 tensor (N, C, H, W), or a lazily decoding store (Parquet)."""

    def __len__(self) -> int: ...

    def __getitem__(self, positions: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Examples:
    """One split of a source: `images[i]`, `labels[i]` and `keys[i]` describe example i."""

    images: ImageStore
    labels: torch.Tensor  # int64 (N,); multi-label sources (JFT): (N, L), each row's classes padded with NO_LABEL
    keys: list[str]  # stable across machines and formats: fractions and splits hash these

    def __len__(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class Source:
    """A dataset as its source provides it; `test` (`val`) is None when the source has no test (validation)
    split of its own."""

    train: Examples
    test: Examples | None
    class_names: list[str]
    image_shape: tuple[int, int, int]  # (C, H, W) as stored
    val: Examples | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


NO_LABEL = -1  # pads the class lists of multi-label examples


def padded_class_lists(lengths: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Multi-label examples' classes as int64 (N, longest list) padded with NO_LABEL, from each example's list
    length (N,) and all lists' classes concatenated in order."""
    lengths = np.asarray(lengths, dtype=np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    columns = np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    padded = np.full((len(lengths), max(1, int(lengths.max(initial=0)))), NO_LABEL, dtype=np.int64)
    padded[rows, columns] = values
    return padded


def check_labels(labels: torch.Tensor, num_classes: int, where: str) -> None:
    """Raise DataError naming `where` when a label lies outside [0, num_classes) (multi-label padding aside)."""
    if labels.dim() == 2:
        labels = labels[labels != NO_LABEL]
    if len(labels) == 0:
        return
    bad = torch.nonzero((labels < 0) | (labels >= num_classes)).flatten()
    if len(bad):
        raise DataError(
            f"{where}: label {int(labels[bad[0]])} at example {int(bad[0])} is out of range "
            f"for {num_classes} classes ({len(bad)} such labels)"
        )


def as_uint8_images(array: np.ndarray | torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A uint8 (N, C, H, W) tensor from (N, H, W) or (N, H, W, C) / (N, C, H, W) arrays."""
    images = torch.as_tensor(np.asarray(array), dtype=torch.uint8)
    if images.ndim == 3:
        return images.unsqueeze(1).contiguous()
    return (images.permute(0, 3, 1, 2) if channels_last else images).contiguous()

"""The limit on decoding a whole source into memory, checked before anything is decoded.

Sources that are not streamed are decoded whole into one uint8 tensor per split, and every process that trains
holds its own copy: each DDP rank, each trial. Above `IN_MEMORY_LIMIT_BYTES` (images × channels × height × width
as decoded: `data.image_size` squares, or the stored size) a source is refused with one message saying how to
stream it instead. 4 GiB is ImageNet-1k at 32 px, or CIFAR-100 twenty-five times over; 8 ranks on a node then hold
32 GiB at most. ImageNet at 224 px would be 193 GB per process.

This module imports no torch: the sweep plan checks every trial's data with it before Ray starts.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

from PIL import Image

from mixer_core.config import DataConfig
from mixer_core.data.errors import DataError
from mixer_core.data.facts import dataset_facts

IN_MEMORY_LIMIT_BYTES = 4 * 2**30
# torchvision's IMG_EXTENSIONS: the files an image folder's loader reads
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def in_memory_problem(cfg: DataConfig, image_count: int | None = None, first_image: str | None = None) -> str | None:
    """Why `cfg`'s source may not be decoded whole into memory, or None: it streams, fits the limit, or its size
    is unknown here. An image folder's `image_count` and `first_image` are counted from its files when not given."""
    if cfg.streams:
        return None
    count, shape = _count_and_shape(cfg, image_count, first_image)
    if count is None or shape is None or count * math.prod(shape) <= IN_MEMORY_LIMIT_BYTES:
        return None
    if cfg.name == "parquet":
        remedy = "stream it instead: remove data.stream: false"
    else:
        remedy = (f"convert it to Parquet shards and stream them: `mixer data convert {cfg.name} DEST "
                  f"--set data.path={cfg.path}`, then set data.name: parquet and data.path: DEST")
    return (
        f"data.path {cfg.path} ({cfg.name}): {count:,} images of {'x'.join(map(str, shape))} are "
        f"{count * math.prod(shape) / 1e9:.1f} GB decoded, over the {IN_MEMORY_LIMIT_BYTES / 2**30:g} GiB a source "
        f"held in memory may take (each training process holds a copy); {remedy}"
    )


def check_in_memory(cfg: DataConfig, image_count: int | None = None, first_image: str | None = None) -> None:
    """Raise `DataError` with `in_memory_problem`'s message when there is one."""
    problem = in_memory_problem(cfg, image_count, first_image)
    if problem:
        raise DataError(problem)


def _count_and_shape(
    cfg: DataConfig, image_count: int | None, first_image: str | None
) -> tuple[int | None, tuple[int, int, int] | None]:
    """Images in every split of the source and their decoded (C, H, W); None where unknown."""
    if cfg.name == "imagefolder":
        path = Path(cfg.path).expanduser()
        if image_count is None:
            if "://" in cfg.path or not path.is_dir():
                return None, None
            image_count, first_image = _image_files(str(path))
        if cfg.image_size is not None:
            return image_count, (3, cfg.image_size, cfg.image_size)
        if first_image is None:
            return image_count, None
        with Image.open(first_image) as image:  # reads the header only
            return image_count, (1 if image.mode in ("L", "1", "I;16", "I") else 3, image.height, image.width)
    facts = dataset_facts(cfg)
    if facts.source_train_size is None or facts.image_shape is None and cfg.image_size is None:
        return None, None
    channels = facts.image_shape[0] if facts.image_shape else 3
    height, width = (cfg.image_size,) * 2 if cfg.image_size else facts.image_shape[1:]
    return facts.source_train_size, (channels, height, width)


@functools.lru_cache(maxsize=16)
def _image_files(root: str) -> tuple[int, str | None]:
    """How many image files lie under `root`, and the first found (one walk, no image opened)."""
    count, first = 0, None
    for folder, _, files in os.walk(root):
        for name in files:
            if name.lower().endswith(IMAGE_SUFFIXES):
                count += 1
                first = first or os.path.join(folder, name)
    return count, first

"""IDX files (MNIST's format): headers, arrays, and which pairs of a folder are the training and test splits.

numpy only, so that the sweep plan can count a folder's examples without importing torch.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from mixer_core.data.errors import DataError

IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 2051, 2049


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The array in an IDX file (gzipped or raw): (N, rows, cols) for images, (N,) for labels."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: cannot read IDX file ({error})") from None
    dims = 3 if magic == IDX_IMAGES_MAGIC else 1
    header = 4 * (1 + dims)
    if len(raw) < header or struct.unpack(">i", raw[:4])[0] != magic:
        raise DataError(f"{path}: not an IDX file with magic {magic}")
    shape = struct.unpack(f">{dims}i", raw[4:header])
    if len(raw) - header != int(np.prod(shape)):
        raise DataError(f"{path}: IDX header says {shape} but holds {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()  # writable for torch


def read_idx_count(path: Path) -> int:
    """The item count in an IDX file's header (magic, then big-endian sizes), read without the data."""
    try:
        with gzip.open(path) if path.suffix == ".gz" else path.open("rb") as handle:
            return struct.unpack(">ii", handle.read(8))[1]
    except (OSError, EOFError, struct.error) as error:
        raise DataError(f"{path}: cannot read an IDX header ({error})") from None


def idx_layout(folder: Path) -> tuple[dict[str, tuple[Path, Path]], str, str | None]:
    """The IDX (images, labels) pairs in `folder` by prefix, the training prefix, and the test prefix or None.

    `train-*` is the training split and `t10k-*` the test split; a folder with only one pair (e.g. the MNIST
    test set) is used as training data and its test split is carved.
    """
    pairs = {}
    for images_path in sorted(folder.glob("*-images-idx3-ubyte*")):
        prefix = images_path.name.split("-images-idx3-ubyte")[0]
        labels_path = next(iter(sorted(folder.glob(f"{prefix}-labels-idx1-ubyte*"))), None)
        if labels_path is None:
            raise DataError(f"{images_path}: no matching {prefix}-labels-idx1-ubyte[.gz] next to it")
        pairs[prefix] = (images_path, labels_path)
    if not pairs:
        raise DataError(f"{folder}: no *-images-idx3-ubyte[.gz] files")
    test_prefix = "t10k" if "t10k" in pairs and len(pairs) > 1 else None
    train_prefixes = [prefix for prefix in pairs if prefix != test_prefix]
    if len(train_prefixes) > 1:
        raise DataError(f"{folder}: several IDX training sets {train_prefixes}; keep one (plus t10k)")
    return pairs, train_prefixes[0], test_prefix

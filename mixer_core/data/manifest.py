"""The manifest of a Parquet shard set (`manifest.json` beside the shards): format, classes, image shape, splits.

Kept apart from the shard reader (`parquet.py`) so that the sweep plan reads dataset sizes without importing torch.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import fsspec

from mixer_core.data.errors import DataError

FORMAT = "mixer-parquet/2"
MANIFEST = "manifest.json"


def read_manifest(filesystem: fsspec.AbstractFileSystem, folder: str) -> dict[str, Any] | None:
    """The manifest next to the shards, or None when there is none."""
    path = posixpath.join(folder, MANIFEST)
    if not filesystem.exists(path):
        return None
    try:
        with filesystem.open(path, "r") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a JSON manifest ({error})") from None

"""Checkpoints: one directory per checkpoint holding `state.pt` (model, optimizer, schedule, RNG, position).

Files are written to a temporary directory and renamed into place, so a crash never leaves a half-written
checkpoint, and read with `torch.load(weights_only=True)`: only tensors and plain containers, no pickled code.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    """Write `state` to `directory/state.pt` atomically (replacing an older checkpoint there); return `directory`."""
    directory = Path(directory)
    staging = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    torch.save(state, staging / STATE_FILE)
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
    return directory


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The state saved by `save_checkpoint`, or any torch-saved state dict.

    `path` is a checkpoint directory, a file, or a run directory (its newest checkpoint is read).
    """
    path = latest_checkpoint(path)
    file = path / STATE_FILE if path.is_dir() else path
    return torch.load(file, map_location=map_location, weights_only=True)


def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator the loop draws from: torch (CPU and CUDA), numpy (timm Mixup),
    Python's `random` (RandAugment), in types `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put every random generator back to a state from `capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's `random` from one integer."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def derived_seed(*entropy: int) -> int:
    """A 31-bit seed from several integers, well mixed (seed, epoch, rank give unrelated streams)."""
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] & 0x7FFFFFFF)


def checkpoint_name(step: int) -> str:
    """The directory name of the checkpoint taken after `step` steps; names sort in step order."""
    return f"step_{step:08d}"


def latest_checkpoint(path: Path) -> Path:
    """`path` itself when it holds a checkpoint, else the newest checkpoint under `path/checkpoints/`."""
    path = Path(path)
    if (path / STATE_FILE).is_file() or path.is_file():
        return path
    candidates = sorted((path / "checkpoints").glob("step_*[0-9]"))
    if not candidates:
        raise FileNotFoundError(f"{path}: neither a checkpoint nor a run directory with checkpoints/")
    return candidates[-1]


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the `keep` newest checkpoints under `root`."""
    for old in sorted(Path(root).glob("step_*[0-9]"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)

"""A trial's scratch folder on its node, where the training loop writes checkpoints before Ray persists them.

A trial process that is killed outright (Ctrl-C's teardown, SIGKILL, Ray ending a lost trial's actor) cannot
remove its folder, and a checkpoint of a large Mixer with its optimizer state is gigabytes. Each folder therefore
holds a lock file that its process keeps locked while it lives (`flock`: the kernel drops the lock when the
process ends, however it ends), and every new trial on the node first removes the folders whose lock is free.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

PREFIX = "mixer-trial-"
LOCK = ".owner.lock"


@contextlib.contextmanager
def trial_scratch_dir(root: Path | None = None) -> Iterator[Path]:
    """A new scratch folder under `root` (default: the system's temporary folder), removed on exit; the
    abandoned folders of dead trial processes there are removed first."""
    root = Path(root or tempfile.gettempdir())
    remove_abandoned(root)
    with tempfile.TemporaryDirectory(prefix=PREFIX, dir=root) as work:
        # Locked under another name, then renamed: a cleaner never meets a lock file its owner has not locked yet.
        claiming = Path(work) / f"{LOCK}.new"
        with open(claiming, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            os.rename(claiming, Path(work) / LOCK)
            yield Path(work)


def remove_abandoned(root: Path) -> list[Path]:
    """Remove the scratch folders under `root` whose owning process has ended; return them."""
    removed = []
    for lock_path in root.glob(f"{PREFIX}*/{LOCK}"):
        try:
            with open(lock_path) as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(lock_path.parent, ignore_errors=True)
                removed.append(lock_path.parent)
        except (BlockingIOError, FileNotFoundError):  # its process lives, or another cleaner was first
            continue
    return removed

"""The real datasets the repository ships under `data/`, as the tests find them from any working directory."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MNIST = REPO_ROOT / "data" / "mnist-t10k"  # the MNIST test set as IDX files (data/mnist-t10k/README.md)

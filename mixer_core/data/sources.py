"""Every dataset a config can name, loaded into `Source` form (images, labels, stable keys, class names).

Sources small enough for memory (digits, IDX, torchvision, image folders, synthetic) are decoded once into one
uint8 tensor so a batch is a tensor index. Parquet decodes into memory here only when `data.stream` is false;
otherwise it streams (`sweeps.stream`).
"""

from __future__ import annotations

import io
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.functional import to_pil_image

from mixer_core.config import DataConfig
from mixer_core.data.errors import DataError
from mixer_core.data.examples import Examples, Source, as_uint8_images, check_labels
from mixer_core.data.facts import SYNTHETIC_IMAGE_SIZE
from mixer_core.data.idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, idx_layout, read_idx
from mixer_core.data.memory import check_in_memory
from mixer_core.data.parquet import load_parquet
from mixer_core.data.synthetic import load_synthetic



def _require_path(cfg: DataConfig) -> Path:
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (data.path for data.name={cfg.name})")
    return path


def load_digits_source(cfg: DataConfig, seed: int) -> Source:
    """scikit-learn's bundled 8×8 digits (1,797 images, 17 grey levels scaled to 0..255); test is carved.

    Read from the CSV file that `sklearn.datasets.load_digits` reads, without importing scikit-learn: that import
    (it pulls in scipy.stats) takes 2 s, which every sweep trial's fresh worker process would pay.
    """
    package_dir = importlib.util.find_spec("sklearn").submodule_search_locations[0]  # finds, does not import
    table = np.loadtxt(Path(package_dir) / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    images = as_uint8_images(np.round(table[:, :-1].reshape(-1, 8, 8) * (255 / 16)), channels_last=False)
    labels = torch.as_tensor(table[:, -1], dtype=torch.int64)
    keys = [f"digits/{index}" for index in range(len(labels))]
    return Source(Examples(images, labels, keys), None, [str(c) for c in range(10)], (1, 8, 8))


def load_mnist_idx(cfg: DataConfig, seed: int) -> Source:
    """IDX pairs `<split>-images-idx3-ubyte[.gz]` + `<split>-labels-idx1-ubyte[.gz]` in data.path (`idx_layout`)."""
    pairs, train_prefix, test_prefix = idx_layout(_require_path(cfg))

    def examples(prefix: str) -> Examples:
        images_path, labels_path = pairs[prefix]
        images, labels = read_idx(images_path, IDX_IMAGES_MAGIC), read_idx(labels_path, IDX_LABELS_MAGIC)
        if len(images) != len(labels):
            raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}")
        labels = torch.as_tensor(labels, dtype=torch.int64)
        check_labels(labels, 10, str(labels_path))
        return Examples(as_uint8_images(images, False), labels, [f"{prefix}/{i}" for i in range(len(labels))])

    train = examples(train_prefix)
    test = examples(test_prefix) if test_prefix else None
    if test is not None and test.images.shape[1:] != train.images.shape[1:]:
        raise DataError(f"{pairs[test_prefix][0]}: image shape differs from {pairs[train_prefix][0]}")
    return Source(train, test, [str(c) for c in range(10)], tuple(train.images.shape[1:]))


def load_torchvision(cfg: DataConfig, seed: int) -> Source:
    """torchvision CIFAR-10/100, MNIST or Fashion-MNIST from data.path (downloads only if data.download)."""
    from torchvision import datasets

    dataset_class = {
        "cifar10": datasets.CIFAR10,
        "cifar100": datasets.CIFAR100,
        "mnist": datasets.MNIST,
        "fashion_mnist": datasets.FashionMNIST,
    }[cfg.name]
    root = Path(cfg.path).expanduser()
    if not cfg.download and not root.is_dir():
        raise DataError(f"{root}: no such folder (data.path for data.name={cfg.name}; data.download is off)")
    splits = {}
    for split, is_train in (("train", True), ("test", False)):
        try:
            dataset = dataset_class(str(root), train=is_train, download=cfg.download)
        except RuntimeError as error:
            raise DataError(f"{root}: {cfg.name} {split} split not found or corrupt ({error})") from None
        labels = torch.as_tensor(dataset.targets, dtype=torch.int64)
        images = as_uint8_images(dataset.data, channels_last=True)
        splits[split] = Examples(images, labels, [f"{cfg.name}/{split}/{i}" for i in range(len(labels))])
        check_labels(labels, len(dataset.classes), f"{root} ({cfg.name} {split})")
    return Source(splits["train"], splits["test"], list(dataset.classes), tuple(splits["train"].images.shape[1:]))


@dataclass(frozen=True)
class ImageFiles:
    """One split of an image folder, listed but not read: `files[i]` holds the image of `keys[i]`."""

    keys: list[str]  # the file paths relative to data.path
    labels: torch.Tensor
    files: list[str]


@dataclass(frozen=True)
class ImageFolder:
    """An image folder's classes and its listed splits; `test` is None when it has no test folder."""

    classes: list[str]
    train: ImageFiles
    test: ImageFiles | None


def list_image_folder(cfg: DataConfig) -> ImageFolder:
    """The classes and files of a class-per-folder tree. A `train/` folder beside `test/` (or `val/`, as
    ImageNet ships its validation set) makes those two the splits; otherwise the whole tree is training data."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    root = _require_path(cfg)
    test_folder = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    has_splits = (root / "train").is_dir() and test_folder is not None
    train_folder = root / "train" if has_splits else root
    try:
        classes, class_to_idx = find_classes(str(train_folder))
    except FileNotFoundError as error:
        raise DataError(f"{train_folder}: {error}") from None

    def listed(folder: Path) -> ImageFiles:
        samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        if not samples:
            raise DataError(f"{folder}: no image files in its class folders")
        keys = [Path(file).relative_to(root).as_posix() for file, _ in samples]
        labels = torch.as_tensor([label for _, label in samples], dtype=torch.int64)
        return ImageFiles(keys, labels, [file for file, _ in samples])

    return ImageFolder(classes, listed(train_folder), listed(test_folder) if has_splits else None)


def _read_image_files(listing: ImageFiles, size: int | None) -> Examples:
    arrays, mode = [], None
    for file in listing.files:
        try:
            with Image.open(file) as image:
                mode = mode or ("L" if image.mode in ("L", "1", "I;16", "I") else "RGB")
                image = image.convert(mode)
                if size is not None:
                    image = image.resize((size, size), Image.Resampling.BILINEAR)
                arrays.append(np.asarray(image))
        except (UnidentifiedImageError, OSError) as error:
            raise DataError(f"{file}: not a readable image ({error})") from None
        if arrays[-1].shape != arrays[0].shape:
            raise DataError(
                f"{file}: image shape {arrays[-1].shape} differs from {arrays[0].shape} of {listing.files[0]}; "
                "set data.image_size to resize every image"
            )
    return Examples(as_uint8_images(np.stack(arrays), channels_last=True), listing.labels, listing.keys)


def load_imagefolder(cfg: DataConfig, seed: int) -> Source:
    """A class-per-folder tree (`list_image_folder`), decoded into memory unless over the in-memory limit (`memory.py`).

    Images are resized to data.image_size at load when it is set (so mixed sizes are fine), else must all
    share one shape. Keys are the file paths relative to data.path.
    """
    folder = list_image_folder(cfg)
    check_in_memory(cfg, len(folder.train.keys) + len(folder.test.keys if folder.test else []), folder.train.files[0])
    train = _read_image_files(folder.train, cfg.image_size)
    test = _read_image_files(folder.test, cfg.image_size) if folder.test is not None else None
    if test is not None and test.images.shape[1:] != train.images.shape[1:]:
        raise DataError(f"{folder.test.files[0]}: image shape {tuple(test.images.shape[1:])} differs from train's")
    return Source(train, test, folder.classes, tuple(train.images.shape[1:]))


def encode_png(image: torch.Tensor) -> bytes:
    """PNG bytes of a uint8 (C, H, W) image with 1 (grayscale) or 3 (RGB) channels."""
    buffer = io.BytesIO()
    to_pil_image(image).save(buffer, format="PNG")
    return buffer.getvalue()


def load_parquet_source(cfg: DataConfig, seed: int) -> Source:
    """Sharded Parquet from a folder, glob or fsspec URL, decoded into memory (see parquet.py)."""
    check_in_memory(cfg)
    return load_parquet(cfg.path, cfg.image_size)


def load_synthetic_source(cfg: DataConfig, seed: int) -> Source:
    """The seeded synthetic generator at data.image_size (16 when unset)."""
    return load_synthetic(
        cfg.synthetic_examples,
        cfg.synthetic_classes,
        cfg.synthetic_difficulty,
        cfg.image_size or SYNTHETIC_IMAGE_SIZE,
        seed,
    )


LOADERS: dict[str, Callable[[DataConfig, int], Source]] = {
    "digits": load_digits_source,
    "mnist_idx": load_mnist_idx,
    "cifar10": load_torchvision,
    "cifar100": load_torchvision,
    "mnist": load_torchvision,
    "fashion_mnist": load_torchvision,
    "imagefolder": load_imagefolder,
    "parquet": load_parquet_source,
    "synthetic": load_synthetic_source,
}


def load_source(cfg: DataConfig, seed: int = 0) -> Source:
    """The dataset `cfg` names, as its source provides it (no resizing, carving or fractions yet)."""
    return LOADERS[cfg.name](cfg, seed)

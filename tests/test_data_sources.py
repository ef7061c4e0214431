"""Every source on real or generated files, the Parquet round trip, and the errors that name the bad file."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from mixer_core.config import DataConfig
from mixer_core.data import DataError, build_splits
from mixer_core.data.sources import load_source
from mixer_core.data.synthetic import generate_synthetic
from shipped_data import MNIST



def _batch(dataset, count=None):
    return dataset.batch(list(range(count or len(dataset))))


def test_digits_are_scikit_learns_digits_scaled_to_bytes():
    source = load_source(DataConfig(name="digits"))
    reference = load_digits()
    assert source.train.images.shape == (1797, 1, 8, 8)
    expected = torch.as_tensor(np.round(reference.images * (255 / 16)), dtype=torch.uint8).unsqueeze(1)
    assert torch.equal(source.train.images, expected)
    assert torch.equal(source.train.labels, torch.as_tensor(reference.target))


def test_mnist_idx_reads_raw_files_and_train_plus_t10k_pairs(tmp_path):
    for name in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        raw = gzip.decompress((MNIST / f"t10k-{name}.gz").read_bytes())
        (tmp_path / f"t10k-{name}").write_bytes(raw)
        (tmp_path / f"train-{name}.gz").write_bytes((MNIST / f"t10k-{name}.gz").read_bytes())
    splits = build_splits(DataConfig(name="mnist_idx", path=str(tmp_path)))
    assert len(splits.test) == 10000 and len(splits.train) + len(splits.val) == 10000  # t10k is the test split
    assert splits.test.keys[0] == "t10k/0" and torch.equal(_batch(splits.test, 5)[1], torch.tensor([7, 2, 1, 0, 4]))


def test_mnist_idx_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        build_splits(DataConfig(name="mnist_idx", path=str(tmp_path / "nowhere")))
    shutil.copy(MNIST / "t10k-images-idx3-ubyte.gz", tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(gzip.decompress((MNIST / labels.name).read_bytes())[:-10]))  # truncated
    with pytest.raises(DataError, match=f"{labels}: IDX header says"):
        build_splits(DataConfig(name="mnist_idx", path=str(tmp_path)))
    raw = bytearray(gzip.decompress((MNIST / labels.name).read_bytes()))
    raw[8] = 12  # the first label becomes 12
    labels.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match=f"{labels}: label 12"):
        build_splits(DataConfig(name="mnist_idx", path=str(tmp_path)))


def _digits_as_image_folder(root: Path, count: int, split: str | None = None) -> None:
    source = load_source(DataConfig())
    for index in range(count):
        folder = root / (split or "") / f"digit_{int(source.train.labels[index])}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(source.train.images[index, 0].numpy()).save(folder / f"{index}.png")


def test_imagefolder_reads_classes_and_splits(tmp_path):
    _digits_as_image_folder(tmp_path / "flat", 200)
    flat = build_splits(DataConfig(name="imagefolder", path=str(tmp_path / "flat")))
    assert flat.class_names == [f"digit_{c}" for c in range(10)] and flat.image_shape == (1, 8, 8)
    assert len(flat.train) + len(flat.val) + len(flat.test) == 200
    assert all(key.startswith("digit_") and key.endswith(".png") for key in flat.train.keys)
    _digits_as_image_folder(tmp_path / "split", 150, "train")
    _digits_as_image_folder(tmp_path / "split", 50, "test")
    split = build_splits(DataConfig(name="imagefolder", path=str(tmp_path / "split"), image_size=16))
    assert len(split.test) == 50 and split.image_shape == (1, 16, 16) and split.test.keys[0].startswith("test/")


def test_imagefolder_errors_name_the_file(tmp_path):
    _digits_as_image_folder(tmp_path, 30)
    odd = tmp_path / "digit_0" / "zz_odd.png"
    Image.fromarray(np.zeros((9, 8), dtype=np.uint8)).save(odd)
    with pytest.raises(DataError, match=f"{odd}: image shape"):
        build_splits(DataConfig(name="imagefolder", path=str(tmp_path)))
    assert build_splits(DataConfig(name="imagefolder", path=str(tmp_path), image_size=8)).image_shape == (1, 8, 8)
    odd.write_bytes(b"not a png")
    with pytest.raises(DataError, match=f"{odd}: not a readable image"):
        build_splits(DataConfig(name="imagefolder", path=str(tmp_path), image_size=8))


def test_torchvision_mnist_from_a_local_root_without_download(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "t10k"):  # the real test set serves as both splits
        for name in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            (raw / f"{split}-{name}").write_bytes(gzip.decompress((MNIST / f"t10k-{name}.gz").read_bytes()))
    splits = build_splits(DataConfig(name="mnist", path=str(tmp_path)))
    assert len(splits.test) == 10000 and splits.num_classes == 10 and splits.class_names[0].startswith("0")
    assert torch.equal(_batch(splits.test, 3)[1], torch.tensor([7, 2, 1]))
    with pytest.raises(DataError, match="cifar10 train split not found"):
        build_splits(DataConfig(name="cifar10", path=str(tmp_path)))
    with pytest.raises(DataError, match="no such folder"):
        build_splits(DataConfig(name="fashion_mnist", path=str(tmp_path / "absent")))


def test_synthetic_is_deterministic_nested_and_seeded():
    images, labels = generate_synthetic(1500, 10, 0.5, 8, seed=0)
    again, again_labels = generate_synthetic(3000, 10, 0.5, 8, seed=0)
    assert torch.equal(images, again[:1500]) and torch.equal(labels, again_labels[:1500])
    assert not torch.equal(images, generate_synthetic(1500, 10, 0.5, 8, seed=1)[0])
    splits = build_splits(DataConfig(name="synthetic", synthetic_examples=500, image_size=8), seed=0)
    assert splits.image_shape == (3, 8, 8) and splits.num_classes == 10
    assert len(splits.train) + len(splits.val) + len(splits.test) == 500


def _linear_accuracy(difficulty: float, train_examples: int) -> float:
    images, labels = generate_synthetic(train_examples + 1000, 10, difficulty, 8, seed=0)
    features = images.flatten(1).float().numpy() / 255
    model = LogisticRegression(max_iter=300).fit(features[:train_examples], labels[:train_examples].numpy())
    return model.score(features[-1000:], labels[-1000:].numpy())


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_synthetic_is_learnable_scales_with_data_and_difficulty():
    small, large = _linear_accuracy(0.5, 100), _linear_accuracy(0.5, 2000)
    assert 0.2 < small < large - 0.05  # well above chance (0.1), and more data helps
    assert _linear_accuracy(0.1, 2000) > large + 0.05  # easier data is learnt better

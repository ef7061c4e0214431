"""Every source on real or generated files, the Parquet round trip, and the errors that name the bad file."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from mixer_core.config import DataConfig
from mixer_core.data import DataError, build_splits
from mixer_core.data.parquet import encode_png, write_parquet
from mixer_core.data.sources import load_source
from mixer_core.data.synthetic import generate_synthetic
from shipped_data import MNIST



def _batch(dataset, count=None):
    return dataset.batch(list(range(count or len(dataset))))


@pytest.fixture(scope="module")
def mnist_parquet(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("parquet") / "mnist"
    write_parquet(load_source(DataConfig(name="mnist_idx", path=str(MNIST))), str(dest), shard_size=3000)
    return dest


def test_digits_are_scikit_learns_digits_scaled_to_bytes():
    source = load_source(DataConfig(name="digits"))
    reference = load_digits()
    assert source.train.images.shape == (1797, 1, 8, 8)
    expected = torch.as_tensor(np.round(reference.images * (255 / 16)), dtype=torch.uint8).unsqueeze(1)
    assert torch.equal(source.train.images, expected)
    assert torch.equal(source.train.labels, torch.as_tensor(reference.target))


def test_parquet_copy_matches_its_source_example_for_example(mnist_parquet):
    assert sorted(p.name for p in mnist_parquet.iterdir())[:2] == ["manifest.json", "train-00000-of-00004.parquet"]
    for fraction in (0.1, 1.0):
        idx = build_splits(DataConfig(name="mnist_idx", path=str(MNIST), fraction=fraction))
        parquet = build_splits(DataConfig(name="parquet", path=str(mnist_parquet), fraction=fraction))
        assert (parquet.num_classes, parquet.image_shape, parquet.train_size) == (10, (1, 28, 28), idx.train_size)
        for split in ("train", "val", "test"):
            assert getattr(parquet, split).keys == getattr(idx, split).keys
        images, labels = _batch(parquet.test, 300)
        assert torch.equal(images, _batch(idx.test, 300)[0]) and torch.equal(labels, _batch(idx.test, 300)[1])


def test_parquet_reads_globs_and_fsspec_urls(mnist_parquet):
    one_shard = build_splits(DataConfig(name="parquet", path=str(mnist_parquet / "train-00000-*.parquet")))
    assert len(one_shard.train) + len(one_shard.val) + len(one_shard.test) == 3000
    source = load_source(DataConfig())
    write_parquet(source, "memory://digits", shard_size=500)
    from_url = build_splits(DataConfig(name="parquet", path="memory://digits"))
    assert from_url.train.keys == build_splits(DataConfig()).train.keys
    assert torch.equal(_batch(from_url.val)[0], _batch(build_splits(DataConfig()).val)[0])


def test_parquet_test_shards_form_the_test_split(tmp_path, mnist_parquet):
    shutil.copy(mnist_parquet / "train-00000-of-00004.parquet", tmp_path / "train-00000-of-00001.parquet")
    shutil.copy(mnist_parquet / "train-00003-of-00004.parquet", tmp_path / "test-00000-of-00001.parquet")
    splits = build_splits(DataConfig(name="parquet", path=str(tmp_path)))  # no manifest: classes from labels
    assert splits.test.keys == [f"t10k/{i}" for i in range(9000, 10000)]
    assert len(splits.train) + len(splits.val) == 3000 and splits.num_classes == 10


def _write_shard(path: Path, keys, labels, images: list[bytes]) -> None:
    pq.write_table(pa.table({"key": keys, "label": pa.array(labels, pa.int64()), "image": pa.array(images, pa.binary())}), path)


def test_bad_parquet_shards_are_one_error_naming_the_shard(tmp_path, mnist_parquet):
    good = tmp_path / "good"
    shutil.copytree(mnist_parquet, good)
    cases = {
        "corrupt": lambda shard: shard.write_bytes(b"PAR1 this is not parquet"),
        "empty": lambda shard: _write_shard(shard, [], [], []),
        "label": lambda shard: _write_shard(shard, ["k0", "k1"], [3, 10], [encode_png(torch.zeros(1, 28, 28, dtype=torch.uint8))] * 2),
        "shape": lambda shard: _write_shard(shard, ["k0"], [1], [encode_png(torch.zeros(1, 32, 32, dtype=torch.uint8))]),
    }
    messages = {"corrupt": "not a readable Parquet shard", "empty": "empty shard", "label": "label 10",
                "shape": r"image shape \(1, 32, 32\)"}
    for case, write in cases.items():
        folder = tmp_path / case
        shutil.copytree(good, folder)
        shard = folder / "train-00002-of-00004.parquet"
        write(shard)
        with pytest.raises(DataError, match=messages[case]) as error:
            build_splits(DataConfig(name="parquet", path=str(folder)))
        assert str(shard) in str(error.value)
    with pytest.raises(DataError, match="no such Parquet folder"):
        build_splits(DataConfig(name="parquet", path=str(tmp_path / "missing")))


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


def test_multi_label_parquet_trains_with_the_sigmoid_loss(tmp_path):
    """JFT's form: label lists. Digits labelled with the digit and, below 8, its parity (classes 10 and 11)."""
    from mixer_core import metrics as m
    from mixer_core.config import parse_config
    from mixer_core.losses import soft_targets
    from mixer_core.train import train

    source = load_source(DataConfig(name="digits"))
    labels = [[d, 10 + d % 2] if d < 8 else [d] for d in source.train.labels.tolist()]
    pq.write_table(pa.table({
        "key": source.train.keys,
        "label": pa.array(labels, pa.list_(pa.int64())),
        "image": [encode_png(image) for image in source.train.images],
    }), tmp_path / "train-00000-of-00001.parquet")
    splits = build_splits(DataConfig(name="parquet", path=str(tmp_path)))
    assert splits.num_classes == 12 and splits.train.labels.shape[1] == 2
    images, batch_labels = next(iter(torch.utils.data.DataLoader(splits.train, batch_size=64)))
    dense = soft_targets(batch_labels, 12)
    assert torch.equal(dense.sum(1), (batch_labels >= 0).sum(1).float())  # multi-hot, padding dropped
    assert torch.equal(dense.argmax(1), batch_labels[:, 0])

    config = {"model": {"variant": "Ti/4", "head_bias_init": -6.9},
              "data": {"name": "parquet", "path": str(tmp_path), "batch_size": 64},
              "train": {"epochs": 3, "lr": 0.003, "loss": "sigmoid", "device": "cpu"},
              "eval": {"fewshot_shots": [], "fewshot_pretraining": False}}
    final = train(parse_config(config))
    assert final[m.VAL_TOP1] > 0.8  # precision@1: the top class is one of the example's classes
    config["eval"] = {"fewshot_shots": [5]}
    with pytest.raises(ValueError, match="eval.fewshot_pretraining: few-shot linear evaluation needs single-label"):
        train(parse_config(config))

"""`mixer data convert`'s shard sets: original bytes, carved splits, subset ranks, and errors naming shard and row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from image_folders import write_jpeg_folder
from mixer_core.config import DataConfig
from mixer_core.data import DataError, build_splits
from mixer_core.data.convert import convert
from mixer_core.data.fractions import subset_ranks
from mixer_core.data.parquet import find_shards, read_examples
from mixer_core.data.sources import encode_png, load_source


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory) -> Path:
    return write_jpeg_folder(tmp_path_factory.mktemp("images") / "folder", count=60)


@pytest.fixture(scope="module")
def jpeg_shards(tmp_path_factory, jpeg_folder) -> Path:
    dest = tmp_path_factory.mktemp("shards") / "jpeg"
    convert(DataConfig(name="imagefolder", path=str(jpeg_folder)), str(dest), shard_size=16, processes=2)
    return dest


def _rows(shards: Path, split: str) -> dict[str, dict]:
    table = pq.read_table([str(path) for path in sorted(shards.glob(f"{split}-*.parquet"))])
    return {row["key"]: row for row in table.to_pylist()}


def test_convert_keeps_the_original_bytes_and_carves_each_split_once(jpeg_folder, jpeg_shards):
    splits = {split: _rows(jpeg_shards, split) for split in ("train", "val", "test")}
    assert [len(rows) for rows in splits.values()] == [43, 5, 12]  # test 0.2 of 60, then val 0.1 of 48
    every = {key: row for rows in splits.values() for key, row in rows.items()}
    assert len(every) == 60
    for key, row in every.items():
        assert row["image"] == (jpeg_folder / key).read_bytes()
        assert row["label"] == int(key.split("/")[0].removeprefix("class_"))
    ranks = np.array([row["subset_rank"] for row in splits["train"].values()])
    assert ranks.tolist() == pytest.approx(np.arange(43) / 43)  # one rank per example, written in rank order
    assert len(list(jpeg_shards.glob("train-*.parquet"))) == 3


def test_training_shards_hold_rank_ranges_so_a_small_fraction_skips_the_rest(jpeg_shards):
    ranges = []
    for shard in sorted(jpeg_shards.glob("train-*.parquet")):
        statistics = pq.ParquetFile(shard).metadata.row_group(0).column(3).statistics  # subset_rank's min/max
        ranges.append((statistics.min, statistics.max))
    assert ranges == [(0.0, 15 / 43), (16 / 43, 31 / 43), (32 / 43, 42 / 43)]  # data.fraction 0.3 reads one shard


def test_fractions_are_nested_row_filters_and_match_the_in_memory_path(jpeg_shards):
    streamed_sets = find_shards(str(jpeg_shards))
    keys = {f: set(read_examples(streamed_sets, "train", 32, fraction=f).keys) for f in (0.1, 0.3, 1.0)}
    assert keys[0.1] < keys[0.3] < keys[1.0] and len(keys[0.3]) == 13
    in_memory = build_splits(DataConfig(name="parquet", path=str(jpeg_shards), image_size=32, fraction=0.3, stream=False))
    assert set(in_memory.train.keys) == keys[0.3] and in_memory.image_shape == (3, 32, 32)


def test_digits_convert_to_shards_that_select_the_same_examples(tmp_path):
    convert(DataConfig(name="digits"), "memory://digits", shard_size=500, processes=1)
    for fraction in (0.03, 0.3):
        direct = build_splits(DataConfig(name="digits", fraction=fraction))
        shards = build_splits(DataConfig(name="parquet", path="memory://digits", fraction=fraction, stream=False))
        assert sorted(shards.train.keys) == sorted(direct.train.keys)  # shards hold training rows in rank order
        for split in ("val", "test"):
            assert getattr(shards, split).keys == getattr(direct, split).keys
        assert torch.equal(shards.val.batch(range(20))[0], direct.val.batch(range(20))[0])


def test_a_truncated_jpeg_or_a_bad_shard_is_one_error_naming_shard_and_row(tmp_path, jpeg_shards):
    table = pq.read_table(jpeg_shards / "val-00000-of-00001.parquet")
    images = table["image"].to_pylist()
    images[2] = images[2][: len(images[2]) // 2]
    bad = tmp_path / "val-00000-of-00001.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("image"), "image", [images]), bad)
    for name in ("train-00000-of-00001.parquet", "manifest.json"):
        (tmp_path / name).write_bytes((jpeg_shards / name.replace("00001", "00003")).read_bytes())
    with pytest.raises(DataError, match="not a decodable image") as error:
        read_examples(find_shards(str(tmp_path)), "val", 32)
    assert f"{bad}: row {table['key'][2]}" in str(error.value)
    (tmp_path / "test-00000-of-00001.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="not a readable Parquet shard") as error:
        read_examples(find_shards(str(tmp_path)), "test", 32)
    assert str(tmp_path / "test-00000-of-00001.parquet") in str(error.value)


def test_auto_streams_parquet_only_and_true_asks_for_a_conversion():
    assert DataConfig(name="parquet", path="shards").streams and not DataConfig(name="digits").streams
    assert not DataConfig(name="parquet", path="shards", stream=False).streams
    with pytest.raises(ValueError, match="mixer data convert digits DEST"):
        DataConfig(name="digits", stream=True)


def test_multi_label_parquet_trains_with_the_sigmoid_loss(tmp_path):
    """JFT's form: label lists. Digits labelled with the digit and, below 8, its parity (classes 10 and 11)."""
    from mixer_core import metrics as m
    from mixer_core.config_io import parse_config
    from mixer_core.losses import soft_targets
    from mixer_core.train import train

    source = load_source(DataConfig(name="digits"))
    labels = [[d, 10 + d % 2] if d < 8 else [d] for d in source.train.labels.tolist()]
    pq.write_table(pa.table({
        "key": source.train.keys,
        "label": pa.array(labels, pa.list_(pa.int64())),
        "image": [encode_png(image) for image in source.train.images],
        "subset_rank": subset_ranks(source.train.keys),
    }), tmp_path / "train-00000-of-00001.parquet")
    splits = build_splits(DataConfig(name="parquet", path=str(tmp_path), image_size=8, stream=False))
    assert splits.num_classes == 12 and splits.train.labels.shape[1] == 2
    images, batch_labels = next(iter(torch.utils.data.DataLoader(splits.train, batch_size=64)))
    dense = soft_targets(batch_labels, 12)
    assert torch.equal(dense.sum(1), (batch_labels >= 0).sum(1).float())  # multi-hot, padding dropped
    assert torch.equal(dense.argmax(1), batch_labels[:, 0])

    config = {"model": {"variant": "Ti/4", "head_bias_init": -6.9},
              "data": {"name": "parquet", "path": str(tmp_path), "image_size": 8, "stream": False, "batch_size": 64},
              "train": {"epochs": 3, "lr": 0.003, "loss": "sigmoid", "device": "cpu"},
              "eval": {"fewshot_shots": [], "fewshot_pretraining": False}}
    final = train(parse_config(config))
    assert final[m.VAL_TOP1] > 0.8  # precision@1: the top class is one of the example's classes
    config["eval"] = {"fewshot_shots": [5]}
    with pytest.raises(ValueError, match="eval.fewshot_pretraining: few-shot linear evaluation needs single-label"):
        train(parse_config(config))

"""`mixer data info / convert / bench` as a user runs them."""

from __future__ import annotations

import json

import yaml
from shipped_data import MNIST, REPO_ROOT

from mixer_cli import main


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_info_reports_counts_classes_and_shape(capsys, tmp_path):
    info = _json(capsys, ["data", "info", "mnist_idx", "--set", f"data.path={MNIST}", "--set", "data.fraction=0.1", "--json"])
    assert info["splits"] == {"train": 720, "val": 800, "test": 2000} and info["train_size"] == 720
    assert info["image_shape"] == [1, 28, 28] and info["num_classes"] == 10
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"variant": "Ti/4"}, "data": {"name": "digits", "image_size": 16}}))
    from_yaml = _json(capsys, ["data", "info", str(config), "--set", "data.val_fraction=0.2", "--json"])
    assert from_yaml["image_shape"] == [1, 16, 16] and from_yaml["splits"]["val"] == 288
    assert main(["data", "info", "digits"]) == 0
    assert "test" in capsys.readouterr().out


def test_convert_writes_shards_that_read_back(capsys, tmp_path):
    dest = tmp_path / "digits"
    manifest = _json(capsys, ["data", "convert", "digits", str(dest), "--shard-size", "1000", "--json"])
    assert manifest["splits"]["train"] == {"count": 1294, "shards": ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]}
    assert json.loads((dest / "manifest.json").read_text())["image_shape"] == [1, 8, 8]
    for stream in ("true", "false"):  # counted from the shards, or decoded into memory
        info = _json(capsys, ["data", "info", "parquet", "--set", f"data.path={dest}", "--set", f"data.stream={stream}",
                              "--set", "data.fraction=0.5", "--json"])
        assert info["splits"] == {"train": 647, "val": 144, "test": 359} and info["image_shape"] == [1, 8, 8]


def test_convert_into_a_folder_with_shards_is_refused_unless_replaced_and_then_only_new_shards_are_read(
    capsys, tmp_path
):
    dest = tmp_path / "digits"
    _json(capsys, ["data", "convert", "digits", str(dest), "--shard-size", "1000", "--json"])
    before = sorted(path.name for path in dest.iterdir())
    assert main(["data", "convert", "digits", str(dest), "--shard-size", "300"]) == 2
    assert capsys.readouterr().err == (
        f"mixer data convert: {dest}: not empty ({len(before)} entries); converting into it would mix old and new "
        "shards. Choose an empty folder, or pass --replace to remove its shards first\n"
    )
    assert sorted(path.name for path in dest.iterdir()) == before  # nothing written
    manifest = _json(capsys, ["data", "convert", "digits", str(dest), "--shard-size", "300", "--replace", "--json"])
    assert len(manifest["splits"]["train"]["shards"]) == 5
    assert not (dest / "train-00000-of-00002.parquet").exists()  # the old shards are gone
    # A stray shard beside the manifest's (copied in, or left by a tool of its own) is not read either.
    (dest / "train-extra.parquet").write_bytes((dest / "train-00000-of-00005.parquet").read_bytes())
    info = _json(capsys, ["data", "info", "parquet", "--set", f"data.path={dest}", "--json"])
    assert info["splits"] == {"train": 1294, "val": 144, "test": 359}


def test_bench_prints_loader_throughput(capsys):
    result = _json(capsys, ["data", "bench", "digits", "--set", "data.augment.flip=true", "--batches", "5", "--json"])
    assert result["images"] == 5 * 128 and result["img_per_sec"] > 0 and result["pipeline"] == "memory"
    assert result["peak_rss_mb"] >= result["peak_pss_mb"] > 50  # this process at least


def test_bad_input_is_one_message_and_exit_status_2(capsys, tmp_path):
    assert main(["data", "info", "mnist_idx", "--set", f"data.path={tmp_path}/none"]) == 2
    assert f"{tmp_path}/none: no such file or folder" in capsys.readouterr().err
    assert main(["data", "info", "digits", "--set", "data.fraction=2"]) == 2
    assert "command line: data.fraction: Input should be less than or equal to 1" in capsys.readouterr().err
    assert main(["data", "info", "imagenet"]) == 2
    assert "neither a dataset name" in capsys.readouterr().err


def test_set_takes_run_config_paths_as_mixer_train_does(capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # the README's command, reading the shipped MNIST copy
    info = _json(capsys, ["data", "info", "mnist_idx", "--set", "data.path=data/mnist-t10k", "--json"])
    assert info["num_classes"] == 10 and sum(info["splits"].values()) == 10000
    assert main(["data", "info", "mnist_idx", "--set", f"path={MNIST}"]) == 2
    assert capsys.readouterr().err == "mixer data info: --set path: unknown config key 'path'; did you mean 'data.path'?\n"
    assert main(["data", "info", "digits", "--set", "train.lr=0.1"]) == 2
    assert "--set train.lr: mixer data sets data.* keys only" in capsys.readouterr().err
    assert main(["data", "info", "mnist_idx"]) == 2
    assert "command line: data: name mnist_idx reads its files from path; set data.path" in capsys.readouterr().err

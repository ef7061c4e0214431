"""Streaming Parquet through Ray Data (real local Ray, generated JPEG shards): exactly once per epoch across
workers, nested fractions, errors naming shard and row, and mid-epoch resume without repeats or gaps."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from image_folders import write_jpeg_folder

from mixer_core.config import DataConfig, EvalConfig
from mixer_core.config_io import parse_config
from mixer_core.data import DataError, build_splits
from mixer_core.data.convert import convert
from mixer_core.data.parquet import find_shards, read_examples
from mixer_core.data.streamed import StreamedTraining
from mixer_core.losses import soft_targets
from mixer_core.train import train
from sweeps.stream import (
    EXECUTOR_WAIT_S,
    READ_TASK_BYTES,
    open_stream,
    training_dataset,
)

# 64 images: test 13, validation 5, training 46 of which 14 have subset_rank < 0.3 (even, so two workers'
# equal shares with batches of one leave nothing out).
STREAM = {"name": "parquet", "image_size": 32, "batch_size": 2, "shuffle_buffer": 4,
          "augment": {"inception_crop": True, "flip": True}}
EVAL = EvalConfig(max_examples=4)


@pytest.fixture(scope="module")
def jpeg_shards(tmp_path_factory) -> Path:
    folder = write_jpeg_folder(tmp_path_factory.mktemp("images") / "folder", count=64)
    dest = tmp_path_factory.mktemp("shards") / "jpeg"
    convert(DataConfig(name="imagefolder", path=str(folder)), str(dest), shard_size=6, processes=1)
    return dest


@pytest.fixture(scope="module")
def photo_shards(tmp_path_factory) -> Path:
    """400 JPEGs of 400-500 px (about 90 KB each): the training rows fill three read blocks, as a real dataset's
    row groups do, so their decoding can spread over processes."""
    folder = write_jpeg_folder(tmp_path_factory.mktemp("photos") / "folder", count=400, sides=(400, 500))
    dest = tmp_path_factory.mktemp("shards") / "photos"
    convert(DataConfig(name="imagefolder", path=str(folder)), str(dest), shard_size=1024, processes=1)
    return dest


def _data(shards: Path, **fields) -> DataConfig:
    return DataConfig(**{**STREAM, "path": str(shards), **fields})


def _epoch_keys(stream: StreamedTraining, epoch: int) -> list[str]:
    return [key for batch in stream.epoch_batches(epoch) for key in batch["key"].tolist()]


def test_two_workers_together_see_every_selected_key_once_per_epoch(ray_address, jpeg_shards, tmp_path):
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg = _data(jpeg_shards, fraction=0.3)
    selected = set(read_examples(find_shards(str(jpeg_shards)), "train", 8, fraction=0.3).keys)
    assert len(selected) == 14
    out = str(tmp_path)

    def loop(config: dict) -> None:
        context = ray.train.get_context()
        rank = context.get_world_rank()
        stream = open_stream(DataConfig(**config), EVAL, 0, rank, 2, ray.train.get_dataset_shard("train"))
        for epoch in range(2):  # (this function is shipped to the workers, so it names no test-module helper)
            keys = [key for batch in stream.epoch_batches(epoch) for key in batch["key"].tolist()]
            Path(out, f"{rank}-{epoch}.json").write_text(json.dumps(keys))

    TorchTrainer(
        loop,
        train_loop_config=cfg.model_dump(),
        datasets={"train": training_dataset(cfg, shard_seed=0, reseed_each_epoch=True)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(storage_path=str(tmp_path / "train")),
    ).fit()
    orders = []
    for epoch in range(2):
        seen = [json.loads(Path(out, f"{rank}-{epoch}.json").read_text()) for rank in range(2)]
        assert len(seen[0]) == len(seen[1]) == 7
        assert sorted(seen[0] + seen[1]) == sorted(selected)  # every selected key, each once
        orders.append(seen[0] + seen[1])
    assert orders[0] != orders[1]  # reshuffled between epochs

    one_worker = open_stream(_data(jpeg_shards, fraction=0.1), EVAL, 0, 0, 1)
    assert set(_epoch_keys(one_worker, 0)) < selected  # the 10% subset lies inside the 30% one
    # Training images are decoded for evaluation only when few-shot draws shots from them.
    assert 0 < len(one_worker.splits.train) <= 4 and len(one_worker.splits.test) == 4
    no_pretraining_fewshot = open_stream(_data(jpeg_shards, fraction=0.1),
                                         EvalConfig(max_examples=4, fewshot_pretraining=False), 0, 0, 1)
    assert (len(no_pretraining_fewshot.splits.train), len(no_pretraining_fewshot.splits.test)) == (0, 4)


def test_multi_label_shards_stream_with_the_targets_the_in_memory_path_gives(ray_address, jpeg_shards, tmp_path):
    """JFT's form: label lists of 1 to 3 classes (the image's class, then classes 3 and 4 on some rows)."""
    for file in jpeg_shards.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    for shard in tmp_path.glob("*.parquet"):
        table = pq.read_table(shard)
        lists = [[label] + [3] * (row % 2) + [4] * (row % 3 == 0) for row, label in enumerate(table["label"].to_pylist())]
        column = pa.array(lists, pa.list_(pa.int64()))
        pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", column), shard)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["classes"] += ["class_3", "class_4"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))

    streamed = {}
    for batch in open_stream(_data(tmp_path), EVAL, 0, 0, 1).epoch_batches(0):
        assert batch["label"].dtype == "int64" and batch["label"].ndim == 2
        streamed.update(zip(batch["key"].tolist(), soft_targets(torch.as_tensor(batch["label"]), 5)))
    in_memory = build_splits(_data(tmp_path, stream=False)).train
    targets = soft_targets(in_memory.labels, 5)
    assert len(streamed) == len(in_memory) == 46 and targets.sum(1).max() == 3
    assert all(torch.equal(streamed[key], target) for key, target in zip(in_memory.keys, targets))


def test_the_stream_uses_rays_current_api_and_a_short_executor_wait(ray_address, jpeg_shards, caplog):
    with caplog.at_level(logging.WARNING):
        training_dataset(_data(jpeg_shards, loader_processes=1), shard_seed=0, reseed_each_epoch=False)
    assert not [record.getMessage() for record in caplog.records if "deprecated" in record.getMessage()]
    # Ray Data's executor loop in this process, which runs the one-worker stream, waits 0.02 s for ended tasks,
    # not 0.1 s (a Ray without the named constant fails here: the stream then idles between decoding tasks).
    from ray.data._internal.execution import streaming_executor_state

    assert streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S == EXECUTOR_WAIT_S < 0.1


def test_a_truncated_jpeg_in_a_stream_is_one_error_naming_shard_and_row(ray_address, jpeg_shards, tmp_path):
    for file in jpeg_shards.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    shard = tmp_path / "train-00001-of-00008.parquet"
    table = pq.read_table(shard)
    images = table["image"].to_pylist()
    images[0] = images[0][:200]
    pq.write_table(table.set_column(table.schema.get_field_index("image"), "image", [images]), shard)
    stream = open_stream(_data(tmp_path), EVAL, 0, 0, 1)
    with pytest.raises(DataError, match="not a decodable image") as error:
        _epoch_keys(stream, 0)
    assert f"{shard}: row {table['key'][0]}" in str(error.value)


def test_resuming_mid_epoch_continues_the_stream_without_repeats_or_gaps(ray_address, jpeg_shards, tmp_path):
    config = parse_config({
        "model": {"variant": "Ti/4"},
        "data": {**STREAM, "path": str(jpeg_shards), "fraction": 0.3},
        "train": {"epochs": 1, "eval_every_steps": 5, "checkpoint_every_epochs": 0.1, "log_every_steps": 100},
        "eval": {"fewshot_shots": [], "max_examples": 4},
    })
    consumed: list[list[str]] = []

    def recording(stream: StreamedTraining) -> StreamedTraining:
        def epoch_batches(epoch: int):
            for batch in stream.epoch_batches(epoch):
                consumed[-1].extend(batch["key"].tolist())
                yield batch
        return StreamedTraining(stream.splits, epoch_batches, stream.global_batch_size)

    runs = {}
    for name, resume in (("whole", None), ("resumed", tmp_path / "whole" / "checkpoints" / "step_00000005")):
        consumed.append([])
        stream = recording(open_stream(config.data, EVAL, 0, 0, 1))
        runs[name] = train(config, resume_from=resume, work_dir=tmp_path / name, stream=stream)
    assert len(consumed[0]) == 7 * 2
    # The resumed run replays the checkpoint's first 5 batches, then takes the next ones: the same epoch.
    assert consumed[1] == consumed[0]
    assert runs["resumed"]["step"] == runs["whole"]["step"] == 7


def _with_a_broken_image(shards: Path, dest: Path, key: str) -> Path:
    """A copy of `shards` in `dest` whose image of row `key` is not a JPEG; returns the shard that holds it."""
    dest.mkdir()
    for file in shards.iterdir():
        (dest / file.name).write_bytes(file.read_bytes())
    shard = next(path for path in sorted(dest.glob("train-*")) if key in pq.read_table(path)["key"].to_pylist())
    table = pq.read_table(shard)
    images = table["image"].to_pylist()
    images[table["key"].to_pylist().index(key)] = b"\xff\xd8\xff not a jpeg"
    pq.write_table(table.set_column(table.schema.get_field_index("image"), "image", [images]), shard)
    return shard


def test_a_bad_row_one_of_two_ddp_workers_meets_ends_its_trial_at_once(ray_address, mlflow_store, tiny_spec,
                                                                         jpeg_shards, tmp_path, capsys):
    # One rank raises; the other waits in the gradients' all-reduce for it. The trial must end on the error,
    # neither waiting for the collective's timeout nor retrying what fails the same way every time.
    from ray.tune import ExperimentAnalysis

    from mixer_cli import main
    from sweeps.tracking import queries

    key = _epoch_keys(open_stream(_data(jpeg_shards, fraction=0.3), EVAL, 0, 0, 1), 0)[0]
    shard = _with_a_broken_image(jpeg_shards, tmp_path / "broken", key)
    base = {
        "data": {**STREAM, "path": str(tmp_path / "broken"), "fraction": 0.3, "batch_size": 2},
        "train": {"epochs": 2, "eval_every_steps": 100, "log_every_steps": 1, "checkpoint_every_epochs": None},
        "eval": {"fewshot_shots": [], "max_examples": 4},
    }
    spec = tiny_spec("onerank", base=base, max_failures=3,
                     resources={"workers_per_trial": 2, "cpus_per_worker": 0.5, "max_concurrent_trials": 1})
    assert main(["sweep", "run", str(spec), "--address", ray_address, "--json"]) == 1
    output = capsys.readouterr()
    result = json.loads(output.out)
    assert [trial["status"] for trial in result["trials"]] == ["ERROR"]
    [failure] = [line for line in output.err.splitlines() if line.endswith("(not retried)")]
    assert f"DataError: {shard}: row {key}: not a decodable image" in failure
    [trial] = ExperimentAnalysis(result["experiment_dir"]).trials
    assert trial.num_failures == 0  # one attempt
    parent = queries.find_sweep_run(mlflow_store, "onerank")
    [run] = queries.trial_runs(mlflow_store, parent.info.experiment_id, parent.info.run_id)
    assert run.info.status == "FAILED" and "not a decodable image" in run.data.tags["mixer.error"]


def test_a_sweep_streams_jpeg_shards_and_a_bad_row_fails_its_trial_keeping_what_mlflow_has(
    ray_address, mlflow_store, tiny_spec, jpeg_shards, tmp_path, capsys
):
    from mlflow.tracking import MlflowClient

    from mixer_cli import main
    from sweeps.tracking import queries

    base = {
        "data": {**STREAM, "path": str(jpeg_shards), "fraction": 0.3},
        "train": {"epochs": 1, "eval_every_steps": 4, "log_every_steps": 1, "checkpoint_every_epochs": None},
        "eval": {"fewshot_shots": [], "max_examples": 4},
    }
    assert main(["sweep", "run", str(tiny_spec("streamed", base=base)), "--address", ray_address]) == 0
    capsys.readouterr()

    # Truncate the image the trial meets last in its epoch, so that it has logged steps before it fails.
    broken = tmp_path / "broken"
    last_key = _epoch_keys(open_stream(_data(jpeg_shards, fraction=0.3), EVAL, 0, 0, 1), 0)[-1]
    shard = _with_a_broken_image(jpeg_shards, broken, last_key)
    base["data"]["path"] = str(broken)
    assert main(["sweep", "run", str(tiny_spec("broken", base=base)), "--address", ray_address]) != 0
    output = capsys.readouterr()
    assert f"{shard}: row {last_key}: not a decodable image" in output.out + output.err

    parent = queries.find_sweep_run(mlflow_store, "broken")
    [run] = queries.trial_runs(mlflow_store, parent.info.experiment_id, parent.info.run_id)
    assert run.info.status == "FAILED"
    losses = MlflowClient(mlflow_store).get_metric_history(run.info.run_id, "train_loss")
    assert [metric.step for metric in losses] == list(range(1, 7))  # every step before the bad batch


def test_data_bench_measures_the_stream_and_torchvision_alike(ray_address, jpeg_shards, tmp_path, capsys):
    from mixer_cli import main

    folder = write_jpeg_folder(tmp_path / "folder", count=12)
    common = ["--set", "data.image_size=32", "--set", "data.augment.inception_crop=true", "--batch-size", "4",
              "--batches", "3", "--warmup", "1", "--processes", "1", "--json"]
    results = {}
    for pipeline, path in (("stream", jpeg_shards), ("torchvision", folder)):
        source = "parquet" if pipeline == "stream" else "imagefolder"
        assert main(["data", "bench", source, "--set", f"data.path={path}", "--pipeline", pipeline, *common]) == 0
        results[pipeline] = json.loads(capsys.readouterr().out)
    for result in results.values():
        assert result["images"] == 12 and result["img_per_sec"] > 0 and result["img_per_sec_per_core"] > 0
    # Ray's raylet and workers are descendants of this process when it started Ray; here the session's Ray did.
    assert results["stream"]["peak_rss_mb"] > 50


def test_the_bench_counts_the_cpu_of_a_process_ended_under_a_parent_that_ignores_sigchld():
    import subprocess
    import sys

    from sweeps.bench.data import TreeWatch

    # Ray's raylet ignores SIGCHLD, so the CPU time of the workers it ends never reaches its count of reaped children.
    burn = "import time\nstart = time.process_time()\nwhile time.process_time() - start < 0.8: pass"
    parent = ("import signal, subprocess, sys, time; signal.signal(signal.SIGCHLD, signal.SIG_IGN); "
              f"subprocess.Popen([sys.executable, '-c', {burn!r}]); time.sleep(2)")
    with TreeWatch(lambda pid: False) as watch:
        before = watch.cpu_seconds()
        subprocess.run([sys.executable, "-c", parent], check=True)
        used = watch.cpu_seconds() - before
    assert used >= 0.6  # the child's 0.8 s, less at most one sampling interval


def test_decoding_runs_in_as_many_processes_as_asked_none_of_them_carrying_torch(ray_address, photo_shards, capsys):
    from mixer_cli import main

    # About a whole epoch (~290 rows: read blocks of 128, 128 and the rest); RandAugment makes the tasks longer.
    args = ["data", "bench", "parquet", "--set", f"data.path={photo_shards}", "--set", "data.image_size=224",
            "--set", "data.augment.inception_crop=true", "--set", "data.augment.randaugment_magnitude=10",
            "--batch-size", "32", "--batches", "8", "--warmup", "1", "--processes", "2", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    # Ray Data fusing reading into decoding ran one task for all three blocks: one process at a time.
    assert result["loading_at_once"] == 2
    assert result["loading_processes_seen"] >= 2 and result["loading_processes_with_torch"] == 0
    assert 0 < result["peak_pss_mb_per_loading_process"] < result["peak_pss_mb"]


def test_each_reading_task_reads_row_groups_of_at_most_the_read_task_size(ray_address, photo_shards):
    import re

    # The training rows of the one photo shard: row groups of 128, 128 and 32 rows, 3-12 MB each, 28 MB in all.
    # Ray Data's default packing (128 MB) read them in one task, which pre-buffered the shard's part whole.
    groups = pq.ParquetFile(next(photo_shards.glob("train-*"))).metadata
    sizes = [groups.row_group(index).total_byte_size for index in range(groups.num_row_groups)]
    assert sum(sizes) > READ_TASK_BYTES > max(sizes)
    dataset = training_dataset(_data(photo_shards, loader_processes=2), shard_seed=0, reseed_each_epoch=False)
    rows = sum(len(batch["label"]) for batch in dataset.iter_batches(batch_size=32, batch_format="numpy"))
    assert rows == groups.num_rows
    reading_tasks = int(re.search(r"ReadFilesParquetV2: (\d+) tasks executed", dataset.stats()).group(1))
    assert reading_tasks >= 2


def test_ray_keeps_a_reading_and_a_decoding_process_per_cpu_between_tasks(ray_address):
    import os
    import time

    import ray

    # Four processes at once on the session's 2 CPUs, as two decoding tasks of one CPU beside two reading tasks of
    # none; then a pause longer than the 1 s after which Ray ends idle workers above its limit (Ray's default
    # limit, the node's CPUs, ended two of them, and their next tasks waited for new processes).
    @ray.remote(num_cpus=0)
    def worker_pid() -> int:
        time.sleep(1)
        return os.getpid()

    first = ray.get([worker_pid.remote() for _ in range(4)])
    assert len(set(first)) == 4
    time.sleep(3)
    alive = {pid for pid in first if Path(f"/proc/{pid}").exists()}
    assert alive == set(first)
    assert len(set(ray.get([worker_pid.remote() for _ in range(4)])) - alive) == 0

"""Streaming training data: Parquet shards → fraction filter → decode + augment on CPU tasks → each worker.

The pipeline is Ray Data's: `read_parquet` (local, s3://, gs://, any fsspec URL) with the `subset_rank < f`
filter pushed down to the row groups, on tasks of no CPU that read at most `READ_TASK_BYTES` each; `map_batches`
decodes each read block with `mixer_core.data.decode.DecodeBatch` (Inception crop from the original, flip,
RandAugment; PIL and numpy, no torch) on tasks of one CPU each plus `data.loader_resources`, at most
`data.loader_processes` at once; the consumer batches with a local shuffle buffer, prefetches, and converts to
tensors. Memory is bounded by the object store budget `data.loader_buffer_mb` and the shuffle buffer, not by the
dataset.

Shuffling per epoch: shard order is shuffled by a seed derived from (train.seed, epoch), rows by a local
shuffle buffer of `data.shuffle_buffer` examples seeded by (train.seed, epoch, rank).

Two consumers:
- a one-worker trial (Tune's trial process, or `mixer train`) reads its own dataset, rebuilt each epoch with
  that epoch's shard seed and Ray Data's `preserve_order`, so an epoch's order is a function of (seed, epoch):
  resuming mid-epoch replays the epoch's batches up to the checkpoint and continues with the next example, no
  example of the epoch repeated or skipped.
- several Ray Train workers read `ray.train.get_dataset_shard("train")` of one dataset the trial hands to
  `TorchTrainer(datasets=...)`; Ray Data splits each epoch's stream between them (`streaming_split`, equal
  shares), so together they see every selected example once per epoch, and the shard order reseeds every
  epoch. Which worker gets which block depends on timing, so a resumed epoch replays the same number of
  batches per worker but not necessarily the same examples: exact per epoch only at epoch boundaries.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pyarrow.fs
import ray.data
from ray.data import DataIterator, FileShuffleConfig, TaskPoolStrategy
from ray.data._internal.execution import streaming_executor_state
from ray.data.expressions import col

from mixer_core.checkpoint import derived_seed
from mixer_core.config import DataConfig, EvalConfig
from mixer_core.data.decode import DecodeBatch
from mixer_core.data.errors import DataError
from mixer_core.data.examples import padded_class_lists
from mixer_core.data.fractions import SUBSET_RANK, in_fraction
from mixer_core.data.parquet import decoded_size, find_shards
from mixer_core.data.streamed import StreamedTraining, streamed_splits

PREFETCH_BATCHES = 2
# A decoded 224 px image is 150 KB: small blocks let a task's first images reach the trainer while it decodes
# the rest, and keep what waits in the object store to a few blocks per task.
OUTPUT_BLOCK_BYTES = 8 * 2**20
# Rows a decoding task decodes at a time. A batch size also keeps Ray Data from fusing reading into decoding (it
# fuses no row-changing operator into a `map_batches` with one): Ray 2.60's Parquet reader packs files into read
# tasks of up to 128 MB, so a fused task decoded a whole small dataset alone however many processes were asked
# for. Decoding a whole read block (a Parquet row group, 128 images or more) at once would also hold its 20 MB
# and more of pixels three times over (the images, their stack, the Arrow block) in every decoding process.
DECODE_BATCH_ROWS = 32
# Reading copies bytes and waits on storage (a few per cent of a core per decoding process) for as long as its
# output waits for the decoders, so it holds no CPU slot: `loader_processes` decoders keep every core they get.
READ_CPUS = 0
# Ray Data's executor learns that tasks have ended from one `ray.wait` over all its running tasks that returns once
# all are done or after `WAIT_FOR_TASK_COMPLETION_TIMEOUT_S`, 0.1 s (ray-project/ray#42377, #45934; named in #63083).
# The reading tasks run all epoch, so every loop waits out the timeout, and a decoding process that ended a task
# idles until the loop sends it the next: with two processes on 2 cores, a median 0.14-0.17 s per task, 16-27% of an
# epoch; at 0.02 s, 0.06-0.07 s (docs/benchmarks.md, "Gaps between decoding tasks"). The executor runs in the
# process that iterates the dataset: a one-worker trial's, `mixer train`'s, `mixer data bench`'s. A DDP trial's runs
# in Ray Data's split coordinator actor and keeps Ray's 0.1 s. Ray versions without the constant keep theirs too.
EXECUTOR_WAIT_S = 0.02
# Parquet bytes one reading task reads. Ray Data 2.60 packs row groups into reading tasks of up to 128 MB (its
# `RAY_DATA_PARQUET_BIN_PACKING_BYTES`, read where the dataset is built), and pyarrow pre-buffers each file's part
# whole: a task reading a 42 MB shard held 94-100 MB of Arrow memory, and one reading several files without
# `preserve_order` (the DDP path) read them all at once, 250 MB. Every loading process runs reading tasks between
# decoding ones and keeps what they held. At 16 MB a task holds 23 MB (a row group larger than this is read
# alone); docs/benchmarks.md, "What a reading task holds". A value the user sets in the environment wins.
READ_TASK_BYTES = 2 * OUTPUT_BLOCK_BYTES
READ_TASK_BYTES_VARIABLE = "RAY_DATA_PARQUET_BIN_PACKING_BYTES"


def _send_decoding_tasks_sooner() -> None:
    """Ray Data's executor loop in this process notices an ended task within `EXECUTOR_WAIT_S`."""
    if hasattr(streaming_executor_state, "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S"):
        streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S = EXECUTOR_WAIT_S


@contextlib.contextmanager
def _reading_tasks_of_at_most(size: int):
    """Ray Data packs the Parquet read built inside into tasks of at most `size` bytes, unless the environment
    names a size already."""
    if READ_TASK_BYTES_VARIABLE in os.environ:
        yield
        return
    os.environ[READ_TASK_BYTES_VARIABLE] = str(size)
    try:
        yield
    finally:
        del os.environ[READ_TASK_BYTES_VARIABLE]


def training_dataset(cfg: DataConfig, shard_seed: int, reseed_each_epoch: bool) -> ray.data.Dataset:
    """The selected training rows of `cfg.path`, decoded and augmented, shards in a seeded order."""
    _send_decoding_tasks_sooner()
    sets = find_shards(cfg.path)
    with _reading_tasks_of_at_most(READ_TASK_BYTES):
        dataset = ray.data.read_parquet(
            sets.shards["train"],
            filesystem=pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(sets.filesystem)),
            shuffle=FileShuffleConfig(seed=shard_seed, reseed_after_execution=reseed_each_epoch),
            include_paths=True,
            concurrency=cfg.loader_processes,
            num_cpus=READ_CPUS,
            resources=cfg.loader_resources or None,
        )
    selected = dataset.select_columns(["key", "label", "image", "path", SUBSET_RANK]).filter(
        expr=in_fraction(col(SUBSET_RANK), cfg.fraction)
    )
    decoded = selected.map_batches(
        DecodeBatch(cfg.augment, decoded_size(sets, cfg.image_size, cfg.path), sets.channels),
        batch_format="numpy",
        batch_size=DECODE_BATCH_ROWS,
        num_cpus=1,
        compute=TaskPoolStrategy(size=cfg.loader_processes),  # None: Ray Data scales the task count
        resources=cfg.loader_resources or None,
    )
    decoded.context.target_max_block_size = OUTPUT_BLOCK_BYTES
    # Reading is cheap and decoding slow: without a cap the reader runs ahead into the object store by up to a
    # fraction of the node's memory, which then grows with the dataset wherever the dataset is smaller.
    decoded.context.execution_options.resource_limits = decoded.context.execution_options.resource_limits.copy(
        object_store_memory=cfg.loader_buffer_mb * 2**20
    )
    return decoded


def _labels(column: np.ndarray) -> np.ndarray:
    """Integer labels as they come; multi-label class lists (Ray's object array of arrays) as the in-memory path
    holds them: int64 (n, longest list in the batch) padded with NO_LABEL, the same multi-hot targets."""
    if column.dtype != object:
        return column
    return padded_class_lists(np.fromiter(map(len, column), np.int64, len(column)), np.concatenate(column))


def _rank_batches(iterator: DataIterator | ray.data.Dataset, cfg: DataConfig, rank_batch_size: int, seed: int):
    batches = iterator.iter_batches(
        batch_size=rank_batch_size,
        batch_format="numpy",
        drop_last=True,
        local_shuffle_buffer_size=cfg.shuffle_buffer or None,
        local_shuffle_seed=seed,
        prefetch_batches=PREFETCH_BATCHES,
    )
    for batch in batches:
        failed = np.flatnonzero(batch["error"] != "")
        if len(failed):
            raise DataError(str(batch["error"][failed[0]]))
        yield {**batch, "label": _labels(batch["label"])}


def open_stream(
    cfg: DataConfig, eval_cfg: EvalConfig, seed: int, rank: int, world_size: int, shard: DataIterator | None = None
) -> StreamedTraining:
    """The streamed training data of one worker: its own dataset (`shard` None, one worker) or its share of the
    trial's dataset (`shard` from `ray.train.get_dataset_shard`)."""
    rank_batch_size = cfg.batch_size // world_size

    def epoch_batches(epoch: int):
        local_seed = derived_seed(seed, epoch, rank)
        if shard is not None:
            return _rank_batches(shard, cfg, rank_batch_size, local_seed)
        dataset = training_dataset(cfg, derived_seed(seed, epoch), reseed_each_epoch=False)
        dataset.context.execution_options.preserve_order = True
        return _rank_batches(dataset, cfg, rank_batch_size, local_seed)

    return StreamedTraining(streamed_splits(cfg, eval_cfg), epoch_batches, cfg.batch_size)

"""Training data that arrives as a stream of batches (Parquet through Ray Data, `sweeps.stream`), and the
bounded held-out splits evaluated beside it.

`mixer_core` never imports Ray: the stream is any function from an epoch number to an iterable of numpy
batches `{"image": uint8 (n, S, S[, C]), "label": int64 (n,)}` (multi-label: (n, L) class lists padded with
`NO_LABEL`, as the in-memory path holds them), each the rank's share of one global batch.
Memory is bounded by that stream and by `eval.max_examples`, whatever the dataset's size.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from mixer_core.config import DataConfig, EvalConfig
from mixer_core.data.examples import as_uint8_images
from mixer_core.data.parquet import class_names, count_selected, decoded_size, find_shards, read_examples
from mixer_core.data.permutations import permutation_index
from mixer_core.data.splits import DataSplits
from mixer_core.data.transforms import ImageDataset, to_model_input

EpochBatches = Callable[[int], Iterable[dict[str, np.ndarray]]]


def streamed_splits(cfg: DataConfig, eval_cfg: EvalConfig) -> DataSplits:
    """The splits of a streamed Parquet source: `train_size` counts every selected training row; `val` and `test`
    hold at most `eval.max_examples` decoded examples each, and so does `train` when few-shot draws shots from
    it (`eval.fewshot_pretraining`), else none."""
    sets = find_shards(cfg.path)
    size = decoded_size(sets, cfg.image_size, cfg.path)
    permutation = permutation_index(cfg.permutation, size, size, cfg.permuted_patch_size, cfg.permutation_seed)
    names = class_names(sets, cfg.path)

    def bounded(split: str, max_examples: int | None = eval_cfg.max_examples) -> ImageDataset:
        examples = read_examples(sets, split, size, fraction=cfg.fraction, max_examples=max_examples)
        return ImageDataset(examples, np.arange(len(examples)), size, permutation)

    return DataSplits(
        train=bounded("train", eval_cfg.max_examples if eval_cfg.scores_pretraining_fewshot else 0),
        val=bounded("val"),
        test=bounded("test"),
        num_classes=len(names),
        image_shape=(sets.channels, size, size),
        train_size=count_selected(sets, cfg.fraction),
        class_names=names,
    )


@dataclass(frozen=True)
class StreamedTraining:
    """What `mixer_core.train.train` takes instead of building its own training loader: the splits
    (`streamed_splits`) and the rank's batches of each epoch, `steps_per_epoch` of them."""

    splits: DataSplits
    epoch_batches: EpochBatches
    global_batch_size: int

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per epoch (the stream drops the ragged end); `mixer_core.train` checks it is not 0."""
        return self.splits.train_size // self.global_batch_size

    def epoch(self, epoch: int, pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Model inputs (float32 (n, C, S, S) in [-1, 1], permuted) and labels of the rank's batches; page-locked
        with `pin_memory`, so the copy to a GPU (`non_blocking=True`) overlaps the previous step's compute."""
        permutation, size = self.splits.val.permutation, self.splits.image_shape[-1]
        for batch in itertools.islice(self.epoch_batches(epoch), self.steps_per_epoch):
            images = to_model_input(as_uint8_images(batch["image"], channels_last=True), size, permutation)
            labels = torch.as_tensor(batch["label"], dtype=torch.int64)
            yield (images.pin_memory(), labels.pin_memory()) if pin_memory else (images, labels)

"""The images a few-shot evaluation scores, and only those: shots drawn per class and seed from a dataset's
listing (`listing.py`), a test set capped at `eval.max_examples`, both decoded once per process.

Under data parallel training each rank decodes only its share of them (`Share`: every `world`-th image from its
`rank`), and the evaluation gathers their features (`mixer_core.evaluate`): 8 ranks of a node hold one copy of
the 50,000 ImageNet validation images at 224 px (7.5 GB) between them, not one each.

Decoding follows big_vision's evaluation pre-processing: resize the original's shorter side to `eval_resize`,
then cut the central `image_size` square (without `eval_resize`, the image is resized to the square). The
decoded sets are kept for the life of the process, so the next evaluation, and the next trial that Tune runs in
a reused process, find them decoded.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from mixer_core.config import DataConfig
from mixer_core.data.decode import decode_resized, open_image
from mixer_core.data.errors import DataError
from mixer_core.data.examples import Examples
from mixer_core.data.fractions import key_hashes
from mixer_core.data.listing import Listing, list_dataset

DECODE_CHUNK = 256  # examples read and decoded at once: bounds the encoded bytes held in memory
DECODE_THREADS = min(8, os.cpu_count() or 1)  # PIL decodes outside the GIL


def draw_shots(labels: np.ndarray | torch.Tensor, max_shots: int, seed: int) -> np.ndarray:
    """Indices of up to `max_shots` examples per class, the first ones of each class in a seeded random order.

    Ordered by rank within class, then class: the first k per class form the k-shot set, so the 1-shot set
    lies inside the 5-shot set, as in big_vision. Reads labels only.
    """
    labels = np.asarray(labels)
    order = np.random.default_rng(seed).permutation(len(labels))
    shuffled = labels[order]
    by_class = np.argsort(shuffled, kind="stable")
    sorted_labels = shuffled[by_class]
    rank = np.empty(len(labels), dtype=np.int64)
    rank[by_class] = np.arange(len(labels)) - np.searchsorted(sorted_labels, sorted_labels, side="left")
    kept = np.flatnonzero(rank < max_shots)
    return order[kept[np.lexsort((shuffled[kept], rank[kept]))]]


def capped(keys: list[str], max_examples: int | None) -> np.ndarray:
    """Positions of at most `max_examples` keys, chosen by key hash (the same whatever the listing order), sorted."""
    if max_examples is None or len(keys) <= max_examples:
        return np.arange(len(keys))
    return np.sort(np.argsort(key_hashes(keys, "fewshot-test"), kind="stable")[:max_examples])


def decode_for_eval(encoded: bytes, image_size: int, eval_resize: int | None, mode: str, where: str) -> np.ndarray:
    """One image as uint8 (S, S, C) (or (S, S) for mode "L"): shorter side resized to `eval_resize`, central
    `image_size` square cut; without `eval_resize` the whole image resized to the square."""
    if eval_resize is None:
        return decode_resized(encoded, image_size, mode, where)
    image = open_image(encoded, where)
    width, height = image.size
    scale = eval_resize / min(width, height)
    resized = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
    try:
        image.draft(mode, resized)  # JPEG: decode at the smallest DCT scale that still covers `resized`
        image = image.convert(mode).resize(resized, Image.Resampling.BILINEAR)
    except Exception as error:  # a truncated or corrupt file fails here, when its pixels are decoded
        raise DataError(f"{where}: not a decodable image ({error})") from None
    left, top = (resized[0] - image_size) // 2, (resized[1] - image_size) // 2
    return np.asarray(image.crop((left, top, left + image_size, top + image_size)))


def decode_listing(listing: Listing, image_size: int, eval_resize: int | None, channels: int) -> Examples:
    """The listed examples decoded for evaluation (`decode_for_eval`) into one uint8 (N, C, S, S) tensor, a chunk
    of `DECODE_CHUNK` encoded images in memory at a time."""
    mode = "L" if channels == 1 else "RGB"
    images = torch.empty((len(listing), channels, image_size, image_size), dtype=torch.uint8)
    pixels = images.numpy()  # the same memory, written through numpy (PIL's arrays are read-only)

    def decode(encoded_and_where: tuple[bytes, str]) -> np.ndarray:
        array = decode_for_eval(encoded_and_where[0], image_size, eval_resize, mode, encoded_and_where[1])
        return array.reshape(image_size, image_size, channels).transpose(2, 0, 1)

    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        for start in range(0, len(listing), DECODE_CHUNK):
            chunk = listing.take(np.arange(start, min(start + DECODE_CHUNK, len(listing))))
            pixels[start : start + len(chunk)] = np.stack(list(pool.map(decode, zip(chunk.encoded(), chunk.wheres()))))
    return Examples(images, torch.as_tensor(listing.labels, dtype=torch.int64), listing.keys)


@dataclass(frozen=True)
class Share:
    """The part of an evaluation set one of `world` data-parallel ranks holds: positions rank, rank + world, ..."""

    rank: int = 0
    world: int = 1

    def positions(self, total: int) -> np.ndarray:
        return np.arange(self.rank, total, self.world)


@dataclass(frozen=True)
class FewshotSet:
    """A downstream dataset's few-shot images, this process's `share` of them decoded: `pool` holds that share of
    every seed's shots (`pool_size` in all), `shots[seed]` their positions in the whole pool (ordered as
    `draw_shots` orders them), `test` that share of the capped test set (`test_size` in all)."""

    pool: Examples
    pool_size: int
    shots: list[np.ndarray]
    test: Examples
    test_size: int
    num_classes: int
    channels: int
    listed: int  # training examples listed (the shots' population), for the record


_DECODED: dict[str, FewshotSet] = {}


def shot_pool(labels: np.ndarray | torch.Tensor, max_shots: int, seeds: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The examples that `seeds` draws of `max_shots` per class use (positions in `labels`, sorted), and each
    draw as positions in that pool: a shot drawn by several seeds is decoded and evaluated once."""
    draws = [draw_shots(labels, max_shots, seed) for seed in range(seeds)]
    union, inverse = np.unique(np.concatenate(draws), return_inverse=True)
    return union, np.split(inverse, np.cumsum([len(draw) for draw in draws])[:-1])


def load_fewshot_set(
    cfg: DataConfig, image_size: int, max_shots: int, seeds: int, max_examples: int | None, share: Share = Share()
) -> FewshotSet:
    """The few-shot set of `cfg` (an image folder or Parquet shard set): `seeds` draws of `max_shots` per class from
    the training listing and at most `max_examples` test examples, `share` of them decoded at `image_size` (see
    module docstring).

    Decoded once per process: a second call with the same arguments returns the same set.
    """
    cache_key = f"{cfg.model_dump_json()}|{image_size}|{max_shots}|{seeds}|{max_examples}|{share}"
    if cache_key not in _DECODED:
        listed = list_dataset(cfg)
        union, shots = shot_pool(listed.train.labels, max_shots, seeds)
        test = capped(listed.test.keys, max_examples)
        pool_share, test_share = union[share.positions(len(union))], test[share.positions(len(test))]
        _DECODED[cache_key] = FewshotSet(
            pool=decode_listing(listed.train.take(pool_share), image_size, cfg.eval_resize, listed.channels),
            pool_size=len(union),
            shots=shots,
            test=decode_listing(listed.test.take(test_share), image_size, cfg.eval_resize, listed.channels),
            test_size=len(test),
            num_classes=len(listed.class_names),
            channels=listed.channels,
            listed=len(listed.train),
        )
    return _DECODED[cache_key]

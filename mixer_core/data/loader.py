"""Batches for training and evaluation, and timm's mixup."""

from __future__ import annotations

import torch
import torch.distributed as dist
from timm.data import Mixup
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mixer_core.config import DataConfig


def make_loader(
    dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int, num_workers: int = 0, drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader whose order depends only on (seed, epoch): call `loader.sampler.set_epoch(epoch)` each epoch.
    With `pin_memory` its batches are page-locked, so copies to a GPU with `non_blocking=True` overlap compute.

    The sampler is always a DistributedSampler (one replica when torch.distributed is not initialised), so
    single-process and DDP runs shuffle the same way and a resumed run replays the same order.
    """
    distributed = dist.is_available() and dist.is_initialized()
    sampler = DistributedSampler(
        dataset,
        num_replicas=dist.get_world_size() if distributed else 1,
        rank=dist.get_rank() if distributed else 0,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),  # worker seeds, hence augmentation, follow `seed`
    )


def build_mixup(cfg: DataConfig, num_classes: int) -> Mixup | None:
    """timm's batch mixup with alpha `cfg.augment.mixup` (None when 0); targets become soft (N, num_classes).

    Needs an even batch size: use drop_last=True for the training loader. Label smoothing stays in the loss.
    """
    if cfg.augment.mixup <= 0:
        return None
    return Mixup(mixup_alpha=cfg.augment.mixup, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=num_classes)

"""The paper's evaluations: top-1 accuracy, and few-shot linear accuracy on frozen pre-logit features.

Few-shot linear evaluation follows big_vision's `evaluators/fewshot_lsr.py`: take `shots` training examples
per class, whiten their pre-logit features with the few-shot set's own mean and standard deviation, append a
constant bias feature, regress targets 2·onehot−1 with closed-form ridge regression (l2 = 1024 by default) and
classify the test split by the arg-max of the regression outputs. The paper's JFT-subset metric is 5-shot top-1
on *downstream* datasets (ImageNet and others), independent of the pre-training data: `fewshot_tasks` builds one
task per `eval.fewshot_datasets` entry, plus the pre-training data's own splits when `eval.fewshot_pretraining`.

The ridge regulariser is fixed (`eval.fewshot_l2`), not picked on held-out shots: big_vision's evaluator solves
for one fixed `l2_reg` too (its cache is built to try several, "even though we currently used the fixed l2_reg
constant"), and holding out part of 5 shots per class would fit the probe on 1–4.

Under `torch.distributed`, top-1 splits the examples over ranks without padding and sums the counts, so it is
exact. Few-shot splits its images the same way: each rank decodes and extracts its share (`Share`), the ranks
gather the features, and every rank fits the same probe and gets the same numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from mixer_core import metrics as m
from mixer_core.build import pre_logits
from mixer_core.config import DataConfig, EvalConfig
from mixer_core.data import DataSplits, build_splits
from mixer_core.data.fewshot import Share, load_fewshot_set, shot_pool
from mixer_core.data.listing import LISTED_SOURCES
from mixer_core.data.permutations import permutation_index
from mixer_core.data.transforms import ImageDataset
from mixer_core.device import autocast
from mixer_core.losses import classification_loss

# big_vision's constant bias feature: large, so the ridge penalty on the bias weight is negligible.
BIAS_FEATURE = 100.0


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Switch `model` to evaluation mode (no dropout, no stochastic depth) and back to its previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_top1(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int,
    device: torch.device,
    loss_kind: str = "softmax",
    bf16: bool = False,
    num_workers: int = 0,
) -> tuple[float, float]:
    """(top-1 accuracy in [0, 1], mean loss) of `model` on `dataset`; (nan, nan) for an empty dataset.
    On multi-label data top-1 is precision@1: the top class is one of the example's classes."""
    if _distributed():
        dataset = Subset(dataset, range(dist.get_rank(), len(dataset), dist.get_world_size()))
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # correct, loss sum, count
    with eval_mode(model):
        for images, labels in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast(device, bf16):
                logits = model(images)
            # multi-label: the top class is one of the example's classes (precision@1, big_vision's JFT metric)
            totals[0] += (logits.argmax(-1)[:, None] == labels.view(len(labels), -1)).any(-1).sum()
            totals[1] += classification_loss(logits, labels, loss_kind) * len(labels)
            totals[2] += len(labels)
    if _distributed():
        dist.all_reduce(totals)
    correct, loss_sum, count = totals.tolist()
    if count == 0:
        return float("nan"), float("nan")
    return correct / count, loss_sum / count


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int,
    device: torch.device,
    bf16: bool = False,
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-logit features (N, D) as float64 and labels (N,) of every example in `dataset`, on the CPU."""
    features, labels = [], []
    with eval_mode(model):
        for images, batch_labels in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
            with autocast(device, bf16):
                features.append(pre_logits(model, images.to(device)).double().cpu())
            labels.append(torch.as_tensor(batch_labels))
    if not features:  # a rank's empty share of a set smaller than the world
        return torch.empty((0, 0), dtype=torch.float64), torch.empty(0, dtype=torch.int64)
    return torch.cat(features), torch.cat(labels)


def rank_share() -> Share:
    """The share of an evaluation set this process holds: all of it, or its rank's under `torch.distributed`."""
    return Share(dist.get_rank(), dist.get_world_size()) if _distributed() else Share()


def gathered_features(model: nn.Module, share: Dataset, total: int, **extract) -> tuple[torch.Tensor, torch.Tensor]:
    """`extract_features` of a whole set of `total` examples of which this process holds its `rank_share`: every
    rank extracts its share and all gather them, in the whole set's order."""
    features, labels = extract_features(model, share, **extract)
    if not _distributed():
        return features, labels
    world = dist.get_world_size()
    shares: list[tuple[torch.Tensor, torch.Tensor]] = [None] * world  # type: ignore[list-item]
    dist.all_gather_object(shares, (features.float(), labels))  # float32 holds every bf16 or fp32 feature
    order = torch.cat([torch.as_tensor(Share(rank, world).positions(total)) for rank in range(world)])
    whole_features = torch.cat([f for f, _ in shares if len(f)]).double()
    whole_features[order] = whole_features.clone()
    whole_labels = torch.cat([labels for _, labels in shares])
    whole_labels[order] = whole_labels.clone()
    return whole_features, whole_labels


def fewshot_lsr(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    l2: float = 1024.0,
) -> float:
    """Top-1 accuracy on the test features of a ridge regression fitted in closed form on the few-shot set."""
    x, x_test = train_features.double(), test_features.double()
    mean = x.mean(0, keepdim=True)
    std = x.std(0, unbiased=False, keepdim=True) + 1e-5  # whitening stats of the few-shot set only
    x, x_test = (x - mean) / std, (x_test - mean) / std
    x = torch.cat([x, torch.full_like(x[:, :1], BIAS_FEATURE)], dim=1)
    x_test = torch.cat([x_test, torch.full_like(x_test[:, :1], BIAS_FEATURE)], dim=1)
    targets = 2.0 * torch.nn.functional.one_hot(train_labels, num_classes).double() - 1.0
    num_points, dim = x.shape
    # Solve whichever equivalent form has the smaller system: (XᵀX + λI)⁻¹Xᵀy or Xᵀ(XXᵀ + λI)⁻¹y.
    if num_points >= dim:
        weights = torch.linalg.solve(x.T @ x + l2 * torch.eye(dim, dtype=x.dtype), x.T @ targets)
    else:
        weights = x.T @ torch.linalg.solve(x @ x.T + l2 * torch.eye(num_points, dtype=x.dtype), targets)
    predictions = (x_test @ weights).argmax(-1)
    return (predictions == test_labels).double().mean().item()


def evaluate_fewshot(
    model: nn.Module,
    task: FewshotTask,
    *,
    shots: list[int],
    l2: float,
    **extract,
) -> dict[int, float]:
    """Few-shot linear top-1 of `task` for each number of shots, averaged over its few-shot sets (one per seed,
    each ordered so that its first k per class form the k-shot set: `draw_shots`), measured on its whole test set.
    `extract` holds `extract_features`' batch_size, device, bf16 and num_workers."""
    pool_features, pool_labels = gathered_features(model, task.pool, task.pool_size, **extract)
    test_features, test_labels = gathered_features(model, task.test, task.test_size, **extract)
    accuracies: dict[int, list[float]] = {k: [] for k in shots}
    for positions in task.shots:
        features, labels = pool_features[positions], pool_labels[positions]
        for k in shots:
            count = int(sum(min(k, int((labels == c).sum())) for c in range(task.num_classes)))
            accuracies[k].append(fewshot_lsr(features[:count], labels[:count], test_features, test_labels,
                                             task.num_classes, l2))
    return {k: float(np.mean(values)) for k, values in accuracies.items()}


class GreyAsColour(Dataset):
    """A grey dataset's images repeated over `channels` (big_vision decodes every image to RGB the same way)."""

    def __init__(self, dataset: Dataset, channels: int):
        self.dataset, self.channels = dataset, channels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[index]
        return image.expand(self.channels, -1, -1), label


@dataclass(frozen=True)
class FewshotTask:
    """One few-shot evaluation, of which this process holds its `rank_share`: of the pool of every seed's shots
    (un-augmented, `pool_size` in all) and of the test set (`test_size` in all); `shots[seed]` are positions in the
    whole pool."""

    label: str | None  # a downstream dataset's label; None for the pre-training data's own splits
    pool: Dataset
    pool_size: int
    shots: list[np.ndarray]
    test: Dataset
    test_size: int
    num_classes: int


def decoded_task(label: str | None, train: Dataset, test: Dataset, num_classes: int, eval_cfg: EvalConfig,
                 share: Share) -> FewshotTask:
    """The few-shot task of datasets held decoded whole (`train.labels` read for the draws): `share` of them."""
    union, shots = shot_pool(train.labels, max(eval_cfg.fewshot_shots), eval_cfg.fewshot_seeds)
    return FewshotTask(label, Subset(train, union[share.positions(len(union))].tolist()), len(union), shots,
                       Subset(test, share.positions(len(test)).tolist()), len(test), num_classes)


def _single_label(dataset: Dataset, where: str) -> None:
    if dataset.labels.dim() != 1:
        raise ValueError(f"{where}: few-shot linear evaluation needs single-label data; this dataset is multi-label")


def fewshot_tasks(eval_cfg: EvalConfig, data_cfg: DataConfig, splits: DataSplits) -> list[FewshotTask]:
    """The few-shot evaluations of a run: every downstream dataset, then the pre-training data's own splits.

    Downstream images are sized for the pre-training images unless their config says otherwise, grey ones are
    repeated over the model's colour channels, and all are permuted by the pre-training permutation (the model
    only knows permuted inputs). Their shots depend only on the downstream dataset and the seed, never on the
    pre-training fraction. Image folders and Parquet shard sets are listed, and only their shots and at most
    `eval.max_examples` test images are decoded, once per process (`mixer_core.data.fewshot`).
    """
    if not eval_cfg.fewshot_shots:
        return []
    share = rank_share()
    tasks = [_downstream_task(eval_cfg, data_cfg, splits, index, share)
             for index in range(len(eval_cfg.fewshot_datasets))]
    if eval_cfg.scores_pretraining_fewshot and len(splits.test):
        _single_label(splits.train, "eval.fewshot_pretraining")
        tasks.append(decoded_task(None, splits.train.without_augmentation(), splits.test, splits.num_classes,
                                  eval_cfg, share))
    return tasks


def _downstream_task(eval_cfg: EvalConfig, data_cfg: DataConfig, splits: DataSplits, index: int,
                     share: Share) -> FewshotTask:
    dataset_cfg = eval_cfg.fewshot_datasets[index]
    where = f"eval.fewshot_datasets[{index}] ({dataset_cfg.metric_label})"
    channels, size, _ = splits.image_shape
    image_size = dataset_cfg.image_size or size
    max_shots, seeds = max(eval_cfg.fewshot_shots), eval_cfg.fewshot_seeds
    if dataset_cfg.name in LISTED_SOURCES:
        fewshot = load_fewshot_set(dataset_cfg, image_size, max_shots, seeds, eval_cfg.max_examples, share)
        permutation = permutation_index(data_cfg.permutation, image_size, image_size, data_cfg.permuted_patch_size,
                                        data_cfg.permutation_seed)
        task = FewshotTask(
            dataset_cfg.metric_label,
            ImageDataset(fewshot.pool, np.arange(len(fewshot.pool)), image_size, permutation), fewshot.pool_size,
            fewshot.shots,
            ImageDataset(fewshot.test, np.arange(len(fewshot.test)), image_size, permutation), fewshot.test_size,
            fewshot.num_classes,
        )
        shape = (fewshot.channels, image_size, image_size)
    else:  # small sources that exist only decoded (digits, IDX, torchvision, synthetic)
        downstream = build_splits(DataConfig(**{
            **dataset_cfg.model_dump(exclude={"label", "augment"}),
            "image_size": image_size,
            "permutation": data_cfg.permutation,
            "permutation_seed": data_cfg.permutation_seed,
            "permutation_patch_size": data_cfg.permuted_patch_size,
        }), max_eval_examples=eval_cfg.max_examples)
        _single_label(downstream.train, where)
        task = decoded_task(dataset_cfg.metric_label, downstream.train, downstream.test, downstream.num_classes,
                            eval_cfg, share)
        shape = downstream.image_shape
    grey = shape[0] == 1 < channels
    if ((channels, *shape[1:]) if grey else shape) != splits.image_shape:
        raise ValueError(
            f"{where}: images are {'x'.join(map(str, shape))}, the model takes "
            f"{'x'.join(map(str, splits.image_shape))} (channels x height x width); pick a dataset with "
            f"{channels} channel(s) or set its image_size"
        )
    if grey:
        task = replace(task, pool=GreyAsColour(task.pool, channels), test=GreyAsColour(task.test, channels))
    return task


def evaluate_fewshot_tasks(
    model: nn.Module, tasks: list[FewshotTask], eval_cfg: EvalConfig, **extract
) -> dict[str, float]:
    """`fewshot_[<label>_]<k>shot_top1` for every task and every k of `eval.fewshot_shots`.

    `extract` holds `evaluate_fewshot`'s batch_size, device, bf16 and num_workers.
    """
    report = {}
    for task in tasks:
        accuracies = evaluate_fewshot(model, task, shots=eval_cfg.fewshot_shots, l2=eval_cfg.fewshot_l2, **extract)
        report.update({m.fewshot_top1(k, task.label): accuracy for k, accuracy in accuracies.items()})
    return report

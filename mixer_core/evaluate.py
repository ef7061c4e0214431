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
exact; few-shot runs whole on every rank (it is cheap, and every rank gets the same numbers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from mixer_core import metrics as m
from mixer_core.build import pre_logits
from mixer_core.config import DataConfig, EvalConfig
from mixer_core.data import DataSplits, build_splits
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
    return torch.cat(features), torch.cat(labels)


def sample_fewshot(dataset: Dataset, max_shots: int, num_classes: int, seed: int) -> TensorDataset:
    """Up to `max_shots` examples per class, visiting `dataset` in a seeded random order.

    Returns the examples ordered so that the first k per class form the k-shot set: the 1-shot set lies
    inside the 5-shot set, as in big_vision. Reads only as many examples as it needs to fill every class.
    """
    taken: dict[int, list[tuple[torch.Tensor, int]]] = {c: [] for c in range(num_classes)}
    missing = num_classes * max_shots
    for index in np.random.default_rng(seed).permutation(len(dataset)):
        image, label = dataset[int(index)]
        label = int(label)
        if len(taken[label]) < max_shots:
            taken[label].append((image, label))
            missing -= 1
            if missing == 0:
                break
    # Order by rank within class: all first examples, then all second examples, ...
    ordered = [examples[rank] for rank in range(max_shots) for examples in taken.values() if rank < len(examples)]
    images, labels = zip(*ordered)
    return TensorDataset(torch.stack(images), torch.tensor(labels))


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
    train_dataset: Dataset,
    test_dataset: Dataset,
    num_classes: int,
    *,
    shots: list[int],
    seeds: int,
    l2: float,
    batch_size: int,
    device: torch.device,
    bf16: bool = False,
    num_workers: int = 0,
) -> dict[int, float]:
    """Few-shot linear top-1 for each number of shots, averaged over `seeds` draws of the few-shot set.

    The few-shot examples come from `train_dataset` (pass it without augmentation), accuracy is measured on
    the whole of `test_dataset`.
    """
    extract = dict(batch_size=batch_size, device=device, bf16=bf16)
    test_features, test_labels = extract_features(model, test_dataset, num_workers=num_workers, **extract)
    accuracies: dict[int, list[float]] = {k: [] for k in shots}
    for seed in range(seeds):
        features, labels = extract_features(model, sample_fewshot(train_dataset, max(shots), num_classes, seed),
                                            **extract)
        for k in shots:
            count = int(sum(min(k, int((labels == c).sum())) for c in range(num_classes)))
            accuracies[k].append(fewshot_lsr(features[:count], labels[:count], test_features, test_labels,
                                             num_classes, l2))
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
    """Where one few-shot evaluation draws its shots (`shots_from`, un-augmented) and what it is scored on."""

    label: str | None  # a downstream dataset's label; None for the pre-training data's own splits
    shots_from: Dataset
    test: Dataset
    num_classes: int


def _single_label(dataset: Dataset, where: str) -> None:
    if dataset.labels.dim() != 1:
        raise ValueError(f"{where}: few-shot linear evaluation needs single-label data; this dataset is multi-label")


def fewshot_tasks(eval_cfg: EvalConfig, data_cfg: DataConfig, splits: DataSplits) -> list[FewshotTask]:
    """The few-shot evaluations of a run: every downstream dataset, then the pre-training data's own splits.

    Downstream images are resized to the pre-training size unless their config says otherwise, grey ones are
    repeated over the model's colour channels, and all are permuted by the pre-training permutation (the model
    only knows permuted inputs). Their shots depend only on the downstream dataset and the seed, never on the
    pre-training fraction.
    """
    if not eval_cfg.fewshot_shots:
        return []
    tasks = []
    channels, size, _ = splits.image_shape
    for index, dataset_cfg in enumerate(eval_cfg.fewshot_datasets):
        downstream_cfg = DataConfig(**{
            **dataset_cfg.model_dump(exclude={"label", "augment"}),
            "image_size": dataset_cfg.image_size or size,
            "permutation": data_cfg.permutation,
            "permutation_seed": data_cfg.permutation_seed,
            "permutation_patch_size": data_cfg.permuted_patch_size,
        })
        downstream = build_splits(downstream_cfg)
        _single_label(downstream.train, f"eval.fewshot_datasets[{index}] ({dataset_cfg.metric_label})")
        grey = downstream.image_shape[0] == 1 < channels
        shape = (channels, *downstream.image_shape[1:]) if grey else downstream.image_shape
        if shape != splits.image_shape:
            raise ValueError(
                f"eval.fewshot_datasets[{index}] ({dataset_cfg.metric_label}): images are "
                f"{'x'.join(map(str, downstream.image_shape))}, the model takes "
                f"{'x'.join(map(str, splits.image_shape))} (channels x height x width); pick a dataset with "
                f"{channels} channel(s) or set its image_size"
            )
        shots_from, test = downstream.train, downstream.test
        if grey:
            shots_from, test = GreyAsColour(shots_from, channels), GreyAsColour(test, channels)
        tasks.append(FewshotTask(dataset_cfg.metric_label, shots_from, test, downstream.num_classes))
    if eval_cfg.fewshot_pretraining and len(splits.test):
        _single_label(splits.train, "eval.fewshot_pretraining")
        tasks.append(FewshotTask(None, splits.train.without_augmentation(), splits.test, splits.num_classes))
    return tasks


def evaluate_fewshot_tasks(
    model: nn.Module, tasks: list[FewshotTask], eval_cfg: EvalConfig, **extract
) -> dict[str, float]:
    """`fewshot_[<label>_]<k>shot_top1` for every task and every k of `eval.fewshot_shots`.

    `extract` holds `evaluate_fewshot`'s batch_size, device, bf16 and num_workers.
    """
    report = {}
    for task in tasks:
        accuracies = evaluate_fewshot(model, task.shots_from, task.test, task.num_classes,
                                      shots=eval_cfg.fewshot_shots, seeds=eval_cfg.fewshot_seeds,
                                      l2=eval_cfg.fewshot_l2, **extract)
        report.update({m.fewshot_top1(k, task.label): accuracy for k, accuracy in accuracies.items()})
    return report

"""The training loop: one run of the paper's pre-training or fine-tuning recipe, reporting through a callback.

`train(config, on_report)` runs on a laptop (`mixer train`) and on every Ray Train worker alike. It never
imports Ray or MLflow: the caller decides what a report becomes.

Reports. `on_report(metrics, checkpoint_dir)` is called on every rank at the same steps (Ray Train needs
every worker to report), with metric names from `mixer_core.metrics`:

- a *progress report* every `train.log_every_steps` optimizer steps carries the training metrics
  `step, total_steps, epoch, examples_seen, train_size, train_loss, lr, images_per_sec, train_flops, wall_seconds,
  params, gmacs`; `checkpoint_dir` is None.
- an *evaluation report* every `train.eval_every_steps` steps (when set; else every `train.eval_every_epochs`
  epochs), and always after the last step, on at most `eval.max_examples` held-out examples, carries the
  training metrics plus `val_top1`, `val_loss` (when the validation split is not empty) and `test_top1` (when
  the test split is not empty). When a step is due for both, only the evaluation report is made.
  `metrics.is_eval_report` tells the two kinds apart.
- the *final report* (the evaluation report after the last step) adds few-shot linear top-1 for every k in
  `eval.fewshot_shots`: `fewshot_<label>_{k}shot_top1` per downstream dataset of `eval.fewshot_datasets`, and
  `fewshot_{k}shot_top1` on the pre-training data's own splits when `eval.fewshot_pretraining`. `train`
  returns its metrics. With `eval.fewshot_every_evaluation` every evaluation report carries them (curves).
- upstream-validation selection: with a validation split, every evaluation report also carries the headline
  metrics measured at the evaluation with the best `val_top1` so far (ties keep the earlier one): `best/step`,
  `best/val_top1`, `best/test_top1` and `best/fewshot_…`. The few-shot evaluations run whenever `val_top1`
  improves (and at the end), so `best/` is measured, never recomputed from a stored model; the best record
  travels in checkpoints, so a resumed run keeps it.

`train_loss` and `images_per_sec` cover the steps since the previous report; `images_per_sec` counts all ranks
and excludes evaluation and checkpointing time. `train_flops` = 3 × 2 × forward MACs × examples seen.

Checkpoints. With a `work_dir`, rank 0 writes `work_dir/checkpoints/step_NNNNNNNN/` at an evaluation report
when `train.checkpoint_every_epochs` have passed since the last one, and always at the final report; that
report's `checkpoint_dir` names it (None on other ranks). The two newest are kept. `resume_from` (a checkpoint
directory, or a work dir whose newest checkpoint is used) continues the run: on CPU the loss curve is the same
as without the interruption. That holds because every epoch reseeds the random generators from
(seed, epoch, rank) before its data loader starts, and a checkpoint taken mid-epoch restores the saved
generator states after replaying the epoch's batches up to its position.

Recipes (`mixer_core.optim`). `train.recipe: pretrain` is Adam with decoupled weight decay on kernels and a
linear schedule; `finetune` is SGD momentum with a cosine schedule, started from `train.init_from` (our
checkpoint or a timm Mixer state dict, with a new head and resized token mixing: `build.load_pretrained`).
Budget mode: `train.steps` or `train.examples` fixes the step count whatever `data.fraction` is.

Batch size. `data.batch_size` is global: each of the `world_size` ranks takes `batch_size / world_size`. Every
step has the full batch (the ragged end of an epoch is dropped) unless the split is smaller than one batch.
Under torch.distributed the model is wrapped in DistributedDataParallel here; the caller only initialises the
process group.

Errors. A non-finite training loss raises `TrainingError` naming the first bad step, at the next report
(the loss is not read back every step, so the accelerator never waits); reports made before stay made.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mixer_core import metrics as m
from mixer_core.build import build_model, forward_macs
from mixer_core.checkpoint import (
    capture_rng_state,
    checkpoint_name,
    derived_seed,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
)
from mixer_core.config import RunConfig
from mixer_core.data import build_mixup, build_splits, make_loader
from mixer_core.data.streamed import StreamedTraining
from mixer_core.device import autocast, compiles, pins_memory, resolve_device, synchronize
from mixer_core.evaluate import evaluate_fewshot_tasks, evaluate_top1, fewshot_tasks
from mixer_core.losses import classification_loss
from mixer_core.model import MlpMixer, count_parameters
from mixer_core.variants import VARIANTS
from mixer_core.optim import build_optimizer, build_schedule, total_steps
from mixer_core.sizes import training_flops

ReportCallback = Callable[[dict[str, float], Path | None], None]
CHECKPOINTS_KEPT = 2


class TrainingError(RuntimeError):
    """A training run that cannot go on (a non-finite loss); the message names the step."""


@dataclass
class Position:
    """Where a run is; saved in every checkpoint. `batch_in_epoch` batches of `epoch` have been trained on."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    examples_seen: int = 0
    wall_seconds: float = 0.0
    last_checkpoint_step: int = 0
    best: dict[str, float] = field(default_factory=dict)  # `best/…` metrics at the best val_top1 so far


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _every(epochs: float | None, steps_per_epoch: int) -> int | None:
    """An interval in epochs as a whole number of steps (at least one); None stays None."""
    return None if epochs is None else max(1, round(epochs * steps_per_epoch))


def train(
    config: RunConfig,
    on_report: ReportCallback | None = None,
    *,
    resume_from: Path | None = None,
    work_dir: Path | None = None,
    progress: bool = False,
    stream: StreamedTraining | None = None,
) -> dict[str, float]:
    """Train and evaluate one run as `config` says; return the final report's metrics (see the module docstring).

    `stream` supplies the training batches and held-out splits of a streamed source (`sweeps.stream`); without
    it the data is built in memory here.
    """
    rank, world_size = _rank_and_world()
    train_cfg, data_cfg = config.train, config.data
    if data_cfg.permutation_patch_size is None and not config.model.timm_model:
        # Section 3.4's patch permutations shuffle the Mixer's own patches unless the config names a size.
        data_cfg = data_cfg.model_copy(update={"permutation_patch_size": VARIANTS[config.model.variant].patch_size})
    device = resolve_device(train_cfg.device)
    if data_cfg.batch_size % world_size:
        raise ValueError(f"data.batch_size {data_cfg.batch_size} is not divisible by the {world_size} ranks")
    rank_batch_size = data_cfg.batch_size // world_size

    seed_everything(train_cfg.seed)  # same model initialisation on every rank
    if stream is not None:
        splits = stream.splits
    else:
        splits = build_splits(data_cfg, seed=train_cfg.seed, max_eval_examples=config.eval.max_examples)
    checkpoint = latest_checkpoint(Path(resume_from)) if resume_from is not None else None
    init_from = None
    if train_cfg.init_from:
        # A resumed fine-tuning run rebuilds its model from its own checkpoint, whose token-mixing MLPs may
        # have been resized from the pre-trained ones.
        init_from = checkpoint or Path(train_cfg.init_from)
    model = build_model(config.model, splits.num_classes, splits.image_shape, init_from).to(device)
    train_model: nn.Module = model
    if world_size > 1:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if compiles(train_cfg.compile, device, isinstance(model, MlpMixer)):
        train_model = torch.compile(train_model)
    bar = tqdm(desc=config.model.name, file=sys.stderr, disable=not progress or rank != 0, dynamic_ncols=True)

    # Keep every step at the full batch size when the split allows it (the paper trains on steps, and mixup
    # pairs examples within a batch); a split smaller than one batch trains on one short batch per epoch.
    drop_last = splits.train_size >= data_cfg.batch_size

    def epoch_loader(epoch: int) -> Iterator:
        seed_everything(derived_seed(train_cfg.seed, epoch, rank))
        if stream is not None:
            return stream.epoch(epoch, pin_memory=pins_memory(device))
        loader = make_loader(splits.train, rank_batch_size, shuffle=True, seed=derived_seed(train_cfg.seed, epoch),
                             num_workers=data_cfg.num_workers, drop_last=drop_last, pin_memory=pins_memory(device))
        return iter(loader)

    steps_per_epoch = stream.steps_per_epoch if stream is not None else len(
        make_loader(splits.train, rank_batch_size, shuffle=True, seed=0, drop_last=drop_last))
    if steps_per_epoch == 0:
        raise ValueError(f"the training split of {data_cfg.name} is empty after data.fraction={data_cfg.fraction}")
    num_steps = total_steps(train_cfg, steps_per_epoch, data_cfg.batch_size)
    eval_interval = train_cfg.eval_every_steps or _every(train_cfg.eval_every_epochs, steps_per_epoch)
    checkpoint_interval = _every(train_cfg.checkpoint_every_epochs, steps_per_epoch)
    optimizer = build_optimizer(model, train_cfg, device)
    schedule = build_schedule(optimizer, train_cfg, num_steps)
    mixup = build_mixup(data_cfg, splits.num_classes)
    fewshot = fewshot_tasks(config.eval, data_cfg, splits)

    macs = forward_macs(model, splits.image_shape)
    constants = {m.TRAIN_SIZE: float(splits.train_size), m.TOTAL_STEPS: float(num_steps),
                 m.PARAMS: float(count_parameters(model)), m.GMACS: macs / 1e9}
    position, rng_state = Position(), None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        position = Position(**state["position"])
        rng_state = state["rng"]

    def write_checkpoint(report: dict[str, float]) -> Path | None:
        due = position.step == num_steps or (
            checkpoint_interval is not None and position.step - position.last_checkpoint_step >= checkpoint_interval
        )
        if work_dir is None or not due:
            return None
        position.last_checkpoint_step = position.step
        if rank != 0:
            return None
        root = Path(work_dir) / "checkpoints"
        directory = save_checkpoint(root / checkpoint_name(position.step), {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "rng": capture_rng_state(),
            "position": asdict(position),
            "config": config.model_dump(mode="json"),
            "metrics": report,
        })
        prune_checkpoints(root, CHECKPOINTS_KEPT)
        return directory

    losses: list[torch.Tensor] = []  # per-step losses since the last report, read back only at reports
    interval_examples, last_lr = 0, schedule.get_last_lr()[0]
    run_started = time.perf_counter() - position.wall_seconds

    def training_metrics(interval_seconds: float) -> dict[str, float]:
        nonlocal interval_examples
        report = {
            m.STEP: float(position.step),
            m.EPOCH: position.examples_seen / splits.train_size,
            m.EXAMPLES_SEEN: float(position.examples_seen),
            m.LR: last_lr,
            m.TRAIN_FLOPS: training_flops(macs, position.examples_seen),
            m.WALL_SECONDS: time.perf_counter() - run_started,
            **constants,
        }
        if losses:
            step_losses = torch.stack(losses).float()
            if world_size > 1:
                dist.all_reduce(step_losses)
                step_losses /= world_size
            bad = (~torch.isfinite(step_losses)).nonzero()
            if len(bad):
                first = position.step - len(losses) + int(bad[0]) + 1
                raise TrainingError(f"training loss is {step_losses[bad[0]].item()} at step {first}; stopping")
            report[m.TRAIN_LOSS] = step_losses.mean().item()
            report[m.IMAGES_PER_SEC] = interval_examples / max(interval_seconds, 1e-9)
            losses.clear()
            interval_examples = 0
        return report

    def evaluation_metrics(final: bool) -> dict[str, float]:
        report = {}
        evaluate = dict(batch_size=rank_batch_size, device=device, bf16=train_cfg.bf16,
                        num_workers=data_cfg.num_workers)
        # Evaluation must not move the training random streams, so runs evaluated at different
        # frequencies (or resumed) train identically.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if len(splits.val):
                report[m.VAL_TOP1], report[m.VAL_LOSS] = evaluate_top1(model, splits.val, loss_kind=train_cfg.loss,
                                                                       **evaluate)
            if len(splits.test):
                report[m.TEST_TOP1], _ = evaluate_top1(model, splits.test, loss_kind=train_cfg.loss, **evaluate)
            improved = report.get(m.VAL_TOP1, -1.0) > position.best.get(m.BEST_VAL_TOP1, -1.0)
            every = final or config.eval.fewshot_every_evaluation
            headline = evaluate_fewshot_tasks(model, fewshot, config.eval, **evaluate) if every or improved else {}
        if every:
            report.update(headline)
        if improved:
            headline.update({name: report[name] for name in (m.VAL_TOP1, m.TEST_TOP1) if name in report})
            position.best = {m.best(name): value for name, value in {m.STEP: float(position.step), **headline}.items()}
        return {**report, **position.best}

    def report(evaluate: bool, interval_started: float) -> dict[str, float]:
        synchronize(device)  # so the interval's time includes all its queued accelerator work
        metrics = training_metrics(time.perf_counter() - interval_started)
        if evaluate:
            metrics.update(evaluation_metrics(final=position.step == num_steps))
        position.wall_seconds = metrics[m.WALL_SECONDS]
        checkpoint_dir = write_checkpoint(metrics) if evaluate else None
        if on_report is not None:
            on_report(metrics, checkpoint_dir)
        bar.set_postfix({k: f"{metrics[k]:.4g}" for k in (m.TRAIN_LOSS, m.VAL_TOP1) if k in metrics})
        return metrics

    train_model.train()
    final_metrics: dict[str, float] = {}
    bar.reset(total=num_steps)
    bar.update(position.step)
    interval_started = time.perf_counter()
    while position.step < num_steps:
        if position.batch_in_epoch >= steps_per_epoch:
            position.epoch, position.batch_in_epoch = position.epoch + 1, 0
        batches = epoch_loader(position.epoch)
        if rng_state is not None:
            # Replay this epoch up to the checkpoint so the loader is where it was, then restore the streams.
            for _ in range(position.batch_in_epoch):
                next(batches)
            if position.batch_in_epoch:
                restore_rng_state(rng_state)
            rng_state = None
            interval_started = time.perf_counter()
        for images, labels in batches:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            targets = labels
            if mixup is not None:
                images, targets = mixup(images, labels)
            with autocast(device, train_cfg.bf16):
                logits = train_model(images)
            loss = classification_loss(logits, targets, train_cfg.loss, train_cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train_cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            last_lr = schedule.get_last_lr()[0]
            optimizer.step()
            schedule.step()
            losses.append(loss.detach())
            position.step += 1
            position.batch_in_epoch += 1
            position.examples_seen += len(images) * world_size
            interval_examples += len(images) * world_size
            bar.update()
            evaluate = position.step % eval_interval == 0 or position.step == num_steps
            if evaluate or position.step % train_cfg.log_every_steps == 0:
                final_metrics = report(evaluate, interval_started)
                interval_started = time.perf_counter()
            if position.step == num_steps:
                break
    if not final_metrics:
        final_metrics = report(evaluate=True, interval_started=interval_started)  # resumed at the end: evaluate again
    bar.close()
    return final_metrics

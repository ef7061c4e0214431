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
(the loss is not read back every step, so the accelerator never waits); reports made before stay made. Data the
fraction leaves too little of, or a streamed source without its stream, raise `DataError` before the first step.

Reading order. `train` is a flat loop over a `LoopState`; what it calls can be used and tested alone: `prepare`
builds a `Run` (data, model, optimizer, schedule, step counts), `open_epoch` gives an epoch's batches,
`train_step` takes one optimizer step, `report` makes a report from `training_metrics` and `evaluate`, and
`maybe_checkpoint` / `save_training_checkpoint` / `restore` write and read a run's state.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
from mixer_core.data import DataError, DataSplits, build_mixup, build_splits, make_loader
from mixer_core.data.fractions import check_enough_examples
from mixer_core.data.streamed import StreamedTraining
from mixer_core.device import autocast, resolve_device
from mixer_core.evaluate import FewshotTask, evaluate_fewshot_tasks, evaluate_top1, fewshot_tasks
from mixer_core.losses import classification_loss
from mixer_core.model import count_parameters
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


@dataclass
class Run:
    """What a run builds before its first step (`prepare`); the loop changes only the model's, the optimizer's
    and the schedule's state."""

    config: RunConfig
    rank: int
    world_size: int
    device: torch.device
    splits: DataSplits
    stream: StreamedTraining | None  # the training batches of a streamed source; None: `splits.train` in memory
    model: nn.Module  # the bare model: evaluated and checkpointed
    train_model: nn.Module  # what the steps run: `model`, under DDP and torch.compile when they apply
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    mixup: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None
    fewshot: list[FewshotTask]
    steps_per_epoch: int
    num_steps: int
    eval_interval: int  # steps between evaluation reports
    checkpoint_interval: int | None  # steps between checkpoints; None: only the final one
    macs: int  # forward multiply-accumulates per image
    constants: dict[str, float] = field(default_factory=dict)  # metrics every report carries unchanged

    @property
    def rank_batch_size(self) -> int:
        """The examples each rank takes of one global batch."""
        return self.config.data.batch_size // self.world_size

    @property
    def drop_last(self) -> bool:
        """Whether the in-memory loader drops an epoch's ragged end (`_keeps_full_batches`)."""
        return _keeps_full_batches(self.splits, self.config.data.batch_size)


@dataclass
class LoopState:
    """What the loop changes as it trains: the checkpointed `position`, and what the next report summarises."""

    position: Position
    run_started: float  # perf_counter() at the start, moved back by the wall time of the run before a resume
    interval_started: float  # perf_counter() at the previous report: the next one's throughput interval
    last_lr: float  # the learning rate of the latest step
    losses: list[torch.Tensor] = field(default_factory=list)  # per-step losses since the previous report
    interval_examples: int = 0  # examples (all ranks) since the previous report


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _every(epochs: float | None, steps_per_epoch: int) -> int | None:
    """An interval in epochs as a whole number of steps (at least one); None stays None."""
    return None if epochs is None else max(1, round(epochs * steps_per_epoch))


def _keeps_full_batches(splits: DataSplits, batch_size: int) -> bool:
    """Every step has the full batch (the paper trains on steps, and mixup pairs examples within a batch) unless
    the split is smaller than one batch, which then trains on one short batch per epoch."""
    return splits.train_size >= batch_size


def _check_stream(config: RunConfig, stream: StreamedTraining | None) -> None:
    """`DataError` unless a stream is given exactly when the config streams (`DataConfig.streams`)."""
    if config.data.streams and stream is None:
        raise DataError(f"{config.data.path}: Parquet data streams (data.stream: {config.data.stream}) but no "
                        "stream was given; open one (sweeps.stream.open_stream) or set data.stream: false")
    if stream is not None and not config.data.streams:
        raise DataError(f"a stream was given but data.stream is {config.data.stream} for {config.data.name}")


def _build_models(
    config: RunConfig, splits: DataSplits, checkpoint: Path | None, device: torch.device, world_size: int
) -> tuple[nn.Module, nn.Module]:
    """The model on `device`, and what the training steps run: it under DDP (several ranks) and torch.compile."""
    init_from = None
    if config.train.init_from:
        # A resumed fine-tuning run rebuilds its model from its own checkpoint, whose token-mixing MLPs may
        # have been resized from the pre-trained ones.
        init_from = checkpoint or Path(config.train.init_from)
    model = build_model(config.model, splits.num_classes, splits.image_shape, init_from).to(device)
    train_model: nn.Module = model
    if world_size > 1:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.train.compile:
        train_model = torch.compile(train_model)
    return model, train_model


def prepare(config: RunConfig, stream: StreamedTraining | None = None, checkpoint: Path | None = None) -> Run:
    """Build everything a run needs before its first step and return it as a `Run`: the splits (`stream`'s, or
    built in memory), the model (from `checkpoint` for a resumed fine-tuning run), optimizer, schedule, mixup,
    few-shot tasks and step counts. `DataError` when the data gives no training step."""
    _check_stream(config, stream)
    rank, world_size = _rank_and_world()
    train_cfg, data_cfg = config.train, config.data
    device = resolve_device(train_cfg.device)
    if data_cfg.batch_size % world_size:
        raise ValueError(f"data.batch_size {data_cfg.batch_size} is not divisible by the {world_size} ranks")

    seed_everything(train_cfg.seed)  # same model initialisation on every rank
    if stream is not None:
        splits = stream.splits
    else:
        splits = build_splits(data_cfg, seed=train_cfg.seed, max_eval_examples=config.eval.max_examples)
    model, train_model = _build_models(config, splits, checkpoint, device, world_size)
    if stream is not None:
        steps_per_epoch = stream.steps_per_epoch
    else:
        steps_per_epoch = len(make_loader(splits.train, data_cfg.batch_size // world_size, shuffle=True, seed=0,
                                          drop_last=_keeps_full_batches(splits, data_cfg.batch_size)))
    check_enough_examples(splits.train_size, steps_per_epoch, data_cfg)
    num_steps = total_steps(train_cfg, steps_per_epoch, data_cfg.batch_size)
    optimizer = build_optimizer(model, train_cfg)
    schedule = build_schedule(optimizer, train_cfg, num_steps)
    mixup = build_mixup(data_cfg, splits.num_classes)
    fewshot = fewshot_tasks(config.eval, data_cfg, splits)
    macs = forward_macs(model, splits.image_shape)
    constants = {m.TRAIN_SIZE: float(splits.train_size), m.TOTAL_STEPS: float(num_steps),
                 m.PARAMS: float(count_parameters(model)), m.GMACS: macs / 1e9}
    return Run(
        config, rank, world_size, device, splits, stream, model, train_model, optimizer, schedule, mixup, fewshot,
        steps_per_epoch=steps_per_epoch,
        num_steps=num_steps,
        eval_interval=train_cfg.eval_every_steps or _every(train_cfg.eval_every_epochs, steps_per_epoch),
        checkpoint_interval=_every(train_cfg.checkpoint_every_epochs, steps_per_epoch),
        macs=macs,
        constants=constants,
    )


def open_epoch(run: Run, position: Position, rng_state: dict[str, Any] | None = None) -> Iterator:
    """The batches (images, labels) left in `position`'s epoch, moving `position` to the next epoch when this
    one is done.

    Every epoch reseeds the random generators from (seed, epoch, rank) before its loader starts. After a restore
    (`rng_state` from `restore`) the epoch's batches up to `position` are replayed, so the loader is where it was,
    and the generators are put back as the checkpoint saved them.
    """
    if position.batch_in_epoch >= run.steps_per_epoch:
        position.epoch, position.batch_in_epoch = position.epoch + 1, 0
    seed = run.config.train.seed
    seed_everything(derived_seed(seed, position.epoch, run.rank))
    if run.stream is not None:
        batches = run.stream.epoch(position.epoch)
    else:
        batches = iter(make_loader(run.splits.train, run.rank_batch_size, shuffle=True,
                                   seed=derived_seed(seed, position.epoch), num_workers=run.config.data.num_workers,
                                   drop_last=run.drop_last))
    if rng_state is not None:
        for _ in range(position.batch_in_epoch):
            next(batches)
        if position.batch_in_epoch:
            restore_rng_state(rng_state)
    return batches


def train_step(run: Run, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
    """One optimizer step on a batch; return its loss (detached, still on the device: reading it back would
    make the accelerator wait) and the learning rate the step used."""
    cfg = run.config.train
    images, labels = images.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)
    targets = labels
    if run.mixup is not None:
        images, targets = run.mixup(images, labels)
    with autocast(run.device, cfg.bf16):
        logits = run.train_model(images)
    loss = classification_loss(logits, targets, cfg.loss, cfg.label_smoothing)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip is not None:
        nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    lr = run.schedule.get_last_lr()[0]
    run.optimizer.step()
    run.schedule.step()
    return loss.detach(), lr


def training_metrics(run: Run, state: LoopState, interval_seconds: float) -> dict[str, float]:
    """The training metrics of a report; `train_loss` and `images_per_sec` cover the steps since the previous
    report (`interval_seconds` long), whose losses are then cleared. `TrainingError` for a non-finite loss."""
    position = state.position
    report = {
        m.STEP: float(position.step),
        m.EPOCH: position.examples_seen / run.splits.train_size,
        m.EXAMPLES_SEEN: float(position.examples_seen),
        m.LR: state.last_lr,
        m.TRAIN_FLOPS: training_flops(run.macs, position.examples_seen),
        m.WALL_SECONDS: time.perf_counter() - state.run_started,
        **run.constants,
    }
    if state.losses:
        step_losses = torch.stack(state.losses).float()
        if run.world_size > 1:
            dist.all_reduce(step_losses)
            step_losses /= run.world_size
        bad = (~torch.isfinite(step_losses)).nonzero()
        if len(bad):
            first = position.step - len(state.losses) + int(bad[0]) + 1
            raise TrainingError(f"training loss is {step_losses[bad[0]].item()} at step {first}; stopping")
        report[m.TRAIN_LOSS] = step_losses.mean().item()
        report[m.IMAGES_PER_SEC] = state.interval_examples / max(interval_seconds, 1e-9)
        state.losses.clear()
        state.interval_examples = 0
    return report


def evaluate(run: Run, position: Position, final: bool) -> dict[str, float]:
    """The evaluation metrics of a report at `position`: `val_top1`, `val_loss`, `test_top1` (for the splits that
    are not empty), few-shot top-1 when `final` (or every evaluation, or when `val_top1` improves), and the
    `best/` metrics, which move into `position.best` when `val_top1` improves."""
    train_cfg, report = run.config.train, {}
    extract = dict(batch_size=run.rank_batch_size, device=run.device, bf16=train_cfg.bf16,
                   num_workers=run.config.data.num_workers)
    # Evaluation must not move the training random streams, so runs evaluated at different
    # frequencies (or resumed) train identically.
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        if len(run.splits.val):
            report[m.VAL_TOP1], report[m.VAL_LOSS] = evaluate_top1(run.model, run.splits.val,
                                                                   loss_kind=train_cfg.loss, **extract)
        if len(run.splits.test):
            report[m.TEST_TOP1], _ = evaluate_top1(run.model, run.splits.test, loss_kind=train_cfg.loss, **extract)
        improved = report.get(m.VAL_TOP1, -1.0) > position.best.get(m.BEST_VAL_TOP1, -1.0)
        every = final or run.config.eval.fewshot_every_evaluation
        headline = {}
        if every or improved:
            headline = evaluate_fewshot_tasks(run.model, run.fewshot, run.config.eval, **extract)
    if every:
        report.update(headline)
    if improved:
        headline.update({name: report[name] for name in (m.VAL_TOP1, m.TEST_TOP1) if name in report})
        position.best = {m.best(name): value for name, value in {m.STEP: float(position.step), **headline}.items()}
    return {**report, **position.best}


def save_training_checkpoint(run: Run, position: Position, metrics: dict[str, float], root: Path) -> Path:
    """Write the run's state at `position` (model, optimizer, schedule, random generators, position, config and
    `metrics`) to `root/step_NNNNNNNN/`, keeping the `CHECKPOINTS_KEPT` newest; return that directory."""
    directory = save_checkpoint(Path(root) / checkpoint_name(position.step), {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "schedule": run.schedule.state_dict(),
        "rng": capture_rng_state(),
        "position": asdict(position),
        "config": run.config.model_dump(mode="json"),
        "metrics": metrics,
    })
    prune_checkpoints(root, CHECKPOINTS_KEPT)
    return directory


def maybe_checkpoint(run: Run, position: Position, metrics: dict[str, float], work_dir: Path | None) -> Path | None:
    """Checkpoint under `work_dir/checkpoints` when one is due (`train.checkpoint_every_epochs` since the last, or
    the last step); return its directory on rank 0, None on other ranks or when none was due."""
    due = position.step == run.num_steps or (
        run.checkpoint_interval is not None and position.step - position.last_checkpoint_step >= run.checkpoint_interval
    )
    if work_dir is None or not due:
        return None
    position.last_checkpoint_step = position.step
    if run.rank != 0:
        return None
    return save_training_checkpoint(run, position, metrics, Path(work_dir) / "checkpoints")


def restore(run: Run, checkpoint: Path) -> tuple[Position, dict[str, Any]]:
    """Load a checkpoint's model, optimizer and schedule state into `run`; return its `Position` and the random
    generator states that `open_epoch` puts back once it has replayed the epoch up to that position."""
    state = load_checkpoint(checkpoint, map_location=run.device)
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.schedule.load_state_dict(state["schedule"])
    return Position(**state["position"]), state["rng"]


def report(
    run: Run, state: LoopState, evaluated: bool, work_dir: Path | None, on_report: ReportCallback | None
) -> dict[str, float]:
    """Make one report (with evaluation and a checkpoint when due if `evaluated`), hand it to `on_report`, start
    the next throughput interval; return its metrics."""
    if run.device.type == "cuda":
        torch.cuda.synchronize()  # so the interval's time includes all its queued GPU work
    metrics = training_metrics(run, state, time.perf_counter() - state.interval_started)
    if evaluated:
        metrics.update(evaluate(run, state.position, final=state.position.step == run.num_steps))
    state.position.wall_seconds = metrics[m.WALL_SECONDS]
    checkpoint_dir = maybe_checkpoint(run, state.position, metrics, work_dir) if evaluated else None
    if on_report is not None:
        on_report(metrics, checkpoint_dir)
    state.interval_started = time.perf_counter()
    return metrics


def _postfix(metrics: dict[str, float]) -> dict[str, str]:
    return {name: f"{metrics[name]:.4g}" for name in (m.TRAIN_LOSS, m.VAL_TOP1) if name in metrics}


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

    `stream` supplies the training batches and held-out splits of a streamed source (`sweeps.stream`); it is
    given exactly when `config.data.streams`. Without it the data is built in memory here.
    """
    checkpoint = latest_checkpoint(Path(resume_from)) if resume_from is not None else None
    run = prepare(config, stream, checkpoint)
    position, rng_state = restore(run, checkpoint) if checkpoint is not None else (Position(), None)
    state = LoopState(position, run_started=time.perf_counter() - position.wall_seconds,
                      interval_started=time.perf_counter(), last_lr=run.schedule.get_last_lr()[0])
    bar = tqdm(desc=config.model.name, file=sys.stderr, disable=not progress or run.rank != 0, dynamic_ncols=True)
    bar.reset(total=run.num_steps)
    bar.update(position.step)
    run.train_model.train()
    final_metrics: dict[str, float] = {}
    while position.step < run.num_steps:
        batches = open_epoch(run, position, rng_state)
        if rng_state is not None:
            rng_state, state.interval_started = None, time.perf_counter()  # the replay is not training time
        for images, labels in batches:
            loss, state.last_lr = train_step(run, images, labels)
            state.losses.append(loss)
            examples = len(labels) * run.world_size
            position.step += 1
            position.batch_in_epoch += 1
            position.examples_seen += examples
            state.interval_examples += examples
            bar.update()
            evaluated = position.step % run.eval_interval == 0 or position.step == run.num_steps
            if evaluated or position.step % config.train.log_every_steps == 0:
                final_metrics = report(run, state, evaluated, work_dir, on_report)
                bar.set_postfix(_postfix(final_metrics))
            if position.step == run.num_steps:
                break
    if not final_metrics:  # resumed at the end: evaluate again
        final_metrics = report(run, state, True, work_dir, on_report)
        bar.set_postfix(_postfix(final_metrics))
    bar.close()
    return final_metrics

"""Metric names: the one place the training loop, the sweep engine, MLflow and the dashboards take them from.

A report from `mixer_core.train.train` is a `dict[str, float]` keyed by these names. Top-1 values are
fractions in [0, 1]; `train_flops` is cumulative (3 × 2 × forward MACs per example seen, paper Figure 2).
"""

from __future__ import annotations

# Position and size of the run.
STEP = "step"  # optimizer steps taken
TOTAL_STEPS = "total_steps"  # optimizer steps the run is planned for; a run stopped early has step < total_steps
EPOCH = "epoch"  # examples_seen / train_size, fractional
EXAMPLES_SEEN = "examples_seen"  # training examples seen, all ranks together
TRAIN_SIZE = "train_size"  # training examples after the data fraction

# Optimisation, averaged over the steps since the previous report.
TRAIN_LOSS = "train_loss"
LR = "lr"  # learning rate of the last step
IMAGES_PER_SEC = "images_per_sec"  # training images per second, all ranks together, evaluation time excluded
TRAIN_FLOPS = "train_flops"

# Evaluation.
VAL_TOP1 = "val_top1"
VAL_LOSS = "val_loss"
TEST_TOP1 = "test_top1"

# Cost and model size.
WALL_SECONDS = "wall_seconds"  # since the run started, summed over resumes
PARAMS = "params"
GMACS = "gmacs"  # forward multiply-accumulates per image, in units of 1e9

TRAIN_METRICS = (STEP, TOTAL_STEPS, EPOCH, EXAMPLES_SEEN, TRAIN_SIZE, TRAIN_LOSS, LR, IMAGES_PER_SEC,
                 TRAIN_FLOPS, WALL_SECONDS, PARAMS, GMACS)
EVAL_METRICS = (VAL_TOP1, VAL_LOSS, TEST_TOP1)


BEST_PREFIX = "best/"  # a headline metric at the evaluation with the best upstream validation top-1
BEST_STEP = BEST_PREFIX + STEP
BEST_VAL_TOP1 = BEST_PREFIX + VAL_TOP1
BEST_TEST_TOP1 = BEST_PREFIX + TEST_TOP1


def best(name: str) -> str:
    """The metric `name` measured at the evaluation with the best `val_top1`, e.g. `best/test_top1`."""
    return BEST_PREFIX + name


def fewshot_top1(shots: int, dataset: str | None = None) -> str:
    """The few-shot linear top-1 metric for `shots` examples per class: on the downstream dataset labelled
    `dataset` (`fewshot_digits_5shot_top1`), or on the pre-training data's own splits (`fewshot_5shot_top1`)."""
    return f"fewshot_{shots}shot_top1" if dataset is None else f"fewshot_{dataset}_{shots}shot_top1"


def all_metric_names(fewshot_shots: list[int] | tuple[int, ...] = (), fewshot_labels: list[str] | tuple = ()
                     ) -> list[str]:
    """Every metric name a run with these few-shot shots and downstream labels can report, in reporting order."""
    fewshot = [fewshot_top1(k, label) for label in (None, *fewshot_labels) for k in fewshot_shots]
    headline = [STEP, VAL_TOP1, TEST_TOP1, *fewshot]
    return [*TRAIN_METRICS, *EVAL_METRICS, *fewshot, *(best(name) for name in headline)]


def stopped_early(metrics: dict[str, float]) -> bool:
    """Whether a run's last report came before its planned last step (a scheduler or a stop condition ended it)."""
    return metrics.get(STEP, 0.0) < metrics.get(TOTAL_STEPS, 0.0)


def is_eval_report(metrics: dict[str, float]) -> bool:
    """Whether a report carries evaluation results (an evaluation report) or only training progress."""
    return any(name in metrics for name in EVAL_METRICS)

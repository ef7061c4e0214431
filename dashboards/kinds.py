"""What kind of number a scaling law is fitted to, and the noise a measurement of it carries.

`error`: the metric is an accuracy in [0, 1]; the law fits its error rate 1 − accuracy, a binomial count over the
test set, whose log has sd ∝ √((1 − E)/E) and which cannot exceed 1. `loss`: the metric is any positive,
lower-is-better number (a validation loss) that falls towards a floor above zero; its noise is multiplicative
(log-normal), so its log has one sd everywhere, estimated by the fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mixer_core.metrics import BEST_PREFIX


def _binomial_log_noise(error: np.ndarray) -> np.ndarray:
    error = np.clip(error, 1e-6, 1 - 1e-6)
    return np.sqrt((1 - error) / error)


@dataclass(frozen=True)
class MetricKind:
    """How a metric maps to the quantity its law fits, and that quantity's noise.

    `log_noise_scale(values)` is the relative sd of log(value) at each value, up to a factor the fit estimates;
    `ceiling` is the largest value the law may take (1 for an error rate)."""

    name: str
    symbol: str
    ceiling: float
    higher_is_better: bool
    log_noise_scale: Callable[[np.ndarray], np.ndarray]

    def to_law(self, metric: np.ndarray) -> np.ndarray:
        """The law's quantity for metric values: 1 − accuracy for an error, the value itself for a loss."""
        metric = np.asarray(metric, dtype=float)
        return 1 - metric if self.higher_is_better else metric

    def to_metric(self, law_values: np.ndarray) -> np.ndarray:
        """Metric values for values of the law's quantity (the inverse of `to_law`)."""
        return self.to_law(law_values)

    def metric_interval(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) in metric units for an interval (low, high) of the law's quantity."""
        low, high = self.to_metric(low), self.to_metric(high)
        return (high, low) if self.higher_is_better else (low, high)


ERROR = MetricKind("error", "error", 1.0, True, _binomial_log_noise)
LOSS = MetricKind("loss", "loss", np.inf, False, lambda values: np.ones(np.shape(values)))
KINDS = {kind.name: kind for kind in (ERROR, LOSS)}


def kind_of_metric(name: str) -> MetricKind | None:
    """The kind a metric's name implies: `loss` for `*loss` (val_loss, best/val_loss), `error` for accuracies
    (`*_top1`, `*accuracy`); None when the name says neither."""
    base = name.removeprefix(BEST_PREFIX).lower()
    if base.endswith("loss"):
        return LOSS
    if base.endswith(("top1", "accuracy", "acc")):
        return ERROR
    return None

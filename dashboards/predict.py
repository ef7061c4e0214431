"""Predicted error at a size a sweep never ran: the per-model laws at D training examples, or with a model size
N the joint laws of each model family, each with a prediction interval and how far it extrapolates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dashboards.allocation import ComputeOptimal, optima_at
from dashboards.analysis import ScalingAxis, accuracy_metrics, data_axis, family, metric_kind, sized_points
from dashboards.holdout import INTERVAL_KIND
from dashboards.kinds import MetricKind
from dashboards.runs import SweepRuns
from dashboards.scaling import fit_joint, fit_series
from mixer_core.metrics import TRAIN_FLOPS, TRAIN_SIZE

EXTRAPOLATION_WARNING = 10.0  # past this factor beyond the largest size fitted, a prediction is a guess


@dataclass(frozen=True)
class SizePrediction:
    """A law's predicted error (or loss) for one series at (examples, params), its interval, and the
    extrapolation factor: the requested size over the largest size the law was fitted on (the larger of the two
    axes)."""

    series: str
    metric: str
    kind: MetricKind
    examples: float
    params: float | None
    predicted: float
    interval: tuple[float, float]
    extrapolation: float

    @property
    def warning(self) -> str | None:
        """Why the prediction should not be trusted, if it reaches past `EXTRAPOLATION_WARNING` times."""
        if self.extrapolation <= EXTRAPOLATION_WARNING:
            return None
        return f"{self.extrapolation:.0f}x beyond the largest size fitted: the law is untested that far out"

    def to_dict(self) -> dict[str, Any]:
        """The `mixer predict --json` entry: error (with accuracy) or loss, each with its interval."""
        accuracy = {"predicted_accuracy": 1 - self.predicted,
                    "accuracy_interval": [1 - self.interval[1], 1 - self.interval[0]]} if self.kind.higher_is_better else {}
        return {
            "series": self.series, "metric": self.metric, "kind": self.kind.name, "examples": self.examples,
            "params": self.params, "predicted": self.predicted, "interval": list(self.interval), **accuracy,
            "interval_kind": INTERVAL_KIND, "extrapolation": self.extrapolation, "warning": self.warning,
        }


def _size_axis(sweep: SweepRuns, finished: list) -> ScalingAxis:
    axis = data_axis(finished)
    if axis.name != TRAIN_SIZE:
        raise ValueError(f"sweep {sweep.name!r}: not every finished trial logged {TRAIN_SIZE}, so its laws are in "
                         "data fractions and cannot be read at a number of examples")
    return axis


def optima_of_sweep(sweep: SweepRuns, flops: float, *, metric: str | None = None, n_bootstrap: int = 300
                    ) -> tuple[list[ComputeOptimal], list[str]]:
    """The compute-optimal model size, training examples and metric at budget `flops` of each model family's
    joint law (the first metric `mixer report` analyses, or `metric`), its FLOPs model fitted to the trials'
    logged training FLOPs. Returns the optima and why any family has none. Raises ValueError when the sweep
    logged no training-set sizes."""
    finished = [t for t in sweep.trials if t.status == "FINISHED"]
    axis = _size_axis(sweep, finished)
    name = accuracy_metrics(finished, metric)[0]
    kind = metric_kind(name)
    families = {f: [(p.params, p.x, p.value) for p in sized]
                for f, sized in sized_points(finished, name, axis, family).items()}
    fits, notes = fit_joint(families, x_name=axis.name, metric=name, kind=kind, n_bootstrap=n_bootstrap)
    runs: dict[str, list[tuple[float, float, float]]] = {}
    for t in finished:
        if t.params_count and t.metric(TRAIN_SIZE) and t.metric(TRAIN_FLOPS):
            runs.setdefault(family(t), []).append((t.params_count, t.metric(TRAIN_SIZE), t.metric(TRAIN_FLOPS)))
    optima, refusals = optima_at(fits, runs, flops)
    return optima, notes + refusals


def predict_at(sweep: SweepRuns, examples: float, *, params: float | None = None, metric: str | None = None,
               n_bootstrap: int = 300) -> tuple[list[SizePrediction], list[str]]:
    """Fit the sweep's laws against training examples (per model, or jointly per family when `params` is
    given) and predict each at the requested size. Returns the predictions and why any series has none.
    Raises ValueError when the sweep logged no training-set sizes."""
    finished = [t for t in sweep.trials if t.status == "FINISHED"]
    axis = _size_axis(sweep, finished)
    predictions, notes = [], []
    for name in accuracy_metrics(finished, metric):
        kind = metric_kind(name)
        if params is None:
            points = {series: [(p.x, p.value) for p in sized]
                      for series, sized in sized_points(finished, name, axis, lambda t: t.series).items()}
            fits, refusals = fit_series(points, x_name=axis.name, metric=name, kind=kind, n_bootstrap=n_bootstrap)
            inputs = np.array([examples])
        else:
            families = {f: [(p.params, p.x, p.value) for p in sized]
                        for f, sized in sized_points(finished, name, axis, family).items()}
            fits, refusals = fit_joint(families, x_name=axis.name, metric=name, kind=kind, n_bootstrap=n_bootstrap)
            if len(fits) < len(families):
                notes.append(f"{name}: --params needs a joint law, fitted only for families with several model "
                             f"sizes; {len(families) - len(fits)} of {len(families)} families have none")
            inputs = np.array([[params, examples]])
        notes += refusals
        for fit in fits:
            (low,), (high,) = fit.error_band(inputs, one_run=True)
            reach = [examples / fit.x_range[1]] + ([params / fit.input_ranges[0][1]] if fit.is_joint else [])
            predictions.append(SizePrediction(fit.series, name, kind, examples, params, float(fit.error(inputs)[0]),
                                              (float(low), float(high)), float(max(reach))))
    return predictions, notes

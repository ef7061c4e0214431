"""Held-back prediction: fit a law without the largest data size (or the largest model, or the runs within a
decade of the largest compute), predict the points left out, and say how far off the prediction was and whether
its interval held the measurement.

The interval is a prediction interval for one trial's measurement (the law's uncertainty plus the noise of a
single run), since that is what each held-back point is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dashboards.kinds import ERROR, MetricKind
from dashboards.scaling import CannotFit, ScalingFit, fit_scaling_law

HOLDOUTS = ("largest", "largest-model")  # what `mixer report` offers; `mixer fit` adds "largest-flops"
COMPUTE_HOLDOUT_FACTOR = 10.0  # "largest-flops" holds back every run above a tenth of the largest compute
HELD_BACK_COMPUTE = f"the runs above 1/{COMPUTE_HOLDOUT_FACTOR:g} of the largest compute"
INTERVAL_KIND = "prediction interval for one run (law uncertainty plus one run's noise)"


@dataclass(frozen=True)
class SizedPoint:
    """One trial's metric (accuracy or loss) at data size (or compute) x, for a model with `params` parameters."""

    params: float
    x: float
    value: float
    flops: float | None = None


@dataclass(frozen=True)
class HeldBackCurve:
    """A law fitted without some points, the points it saw and the ones it predicts. `params` is the model
    size the curve is drawn at for a joint law held back by model size, None otherwise."""

    fit: ScalingFit
    fitted: list[SizedPoint]
    held_back: list[SizedPoint]
    params: float | None

    def inputs(self, x: np.ndarray) -> np.ndarray:
        """The law's inputs at x: x itself, or (params, x) rows for a joint law."""
        x = np.asarray(x, dtype=float)
        return x if self.params is None else np.column_stack([np.full(len(x), self.params), x])


@dataclass(frozen=True)
class Prediction:
    """A held-back point: what was measured, what the law fitted without it predicted, and the interval, in the
    metric's units (accuracy, or the loss)."""

    series: str
    metric: str
    kind: MetricKind
    x_name: str
    x: float
    params: float | None
    measured: float
    predicted: float
    interval: tuple[float, float]

    @property
    def covered(self) -> bool:
        """Whether the measured value lies inside the prediction interval."""
        return self.interval[0] <= self.measured <= self.interval[1]

    @property
    def error_points(self) -> float | None:
        """Predicted minus measured accuracy, in accuracy points; None for a loss."""
        return 100 * (self.predicted - self.measured) if self.kind.higher_is_better else None

    @property
    def relative_error(self) -> float:
        """(predicted − measured) / measured."""
        return (self.predicted - self.measured) / self.measured

    def to_dict(self) -> dict[str, Any]:
        """The `predictions` entry of `mixer report --json`."""
        return {
            "series": self.series, "metric": self.metric, "x_name": self.x_name, "x": self.x, "params": self.params,
            "measured": self.measured, "predicted": self.predicted, "interval": list(self.interval),
            "interval_kind": INTERVAL_KIND, "covered": self.covered, "error_points": self.error_points,
            "relative_error": self.relative_error, "kind": self.kind.name,
        }


def predict_held_back(curve: HeldBackCurve) -> list[Prediction]:
    """One prediction per held-back point of the curve, in the metric's units."""
    x = np.array([point.x for point in curve.held_back])
    inputs = np.column_stack([[point.params for point in curve.held_back], x]) if curve.fit.is_joint else x
    predicted, (low, high) = curve.fit.metric_at(inputs), curve.fit.metric_band(inputs, one_run=True)
    return [
        Prediction(series=curve.fit.series, metric=curve.fit.metric, kind=curve.fit.kind, x_name=curve.fit.x_name,
                   x=point.x, params=point.params if curve.fit.is_joint else None, measured=point.value,
                   predicted=float(predicted[i]),
                   interval=(float(low[i]), float(high[i])))
        for i, point in enumerate(curve.held_back)
    ]


def hold_back(holdout: str, series: str, points: list[SizedPoint], *, x_name: str, metric: str,
              n_bootstrap: int, kind: MetricKind = ERROR) -> HeldBackCurve:
    """Fit without the points at the largest x ('largest', the per-model law), of the largest model
    ('largest-model', the joint law over the remaining sizes), or above a tenth of the largest compute
    ('largest-flops', the joint law). Returns the curve; raises `CannotFit` saying why."""
    if holdout not in (*HOLDOUTS, "largest-flops"):
        raise CannotFit(f"--holdout must be one of {', '.join(HOLDOUTS)}, largest-flops, got {holdout!r}")
    by_model = holdout == "largest-model"
    if holdout == "largest-flops":
        if any(point.flops is None for point in points):
            raise CannotFit(f"{series}: a run has no training compute, so none can be held back by it")
        threshold = max(point.flops for point in points) / COMPUTE_HOLDOUT_FACTOR
        held = [point.flops > threshold for point in points]
    else:
        size = (lambda point: point.params) if by_model else (lambda point: point.x)
        largest = max(map(size, points))
        held = [size(point) == largest for point in points]
    fitted = [point for point, is_held in zip(points, held) if not is_held]
    if not fitted:
        what = "compute within a decade of the largest" if holdout == "largest-flops" else \
            f"1 distinct {'model size' if by_model else x_name}"
        raise CannotFit(f"{series}: {what}, nothing left to fit once the largest is held back")
    fit = fit_scaling_law([p.x for p in fitted], kind.to_law([p.value for p in fitted]),
                          params=[p.params for p in fitted] if holdout != "largest" else None, series=series,
                          x_name=x_name, metric=metric, kind=kind, n_bootstrap=n_bootstrap)
    held_back = [point for point, is_held in zip(points, held) if is_held]
    return HeldBackCurve(fit, fitted, held_back, largest if by_model else None)

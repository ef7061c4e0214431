"""Held-back prediction: fit a law without the largest data size (or the largest model), predict the points
left out, and say how far off the prediction was and whether its interval held the measurement.

The interval is a prediction interval for one trial's measurement (the law's uncertainty plus the noise of a
single run), since that is what each held-back point is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dashboards.scaling import CannotFit, ScalingFit, fit_scaling_law

HOLDOUTS = ("largest", "largest-model")
INTERVAL_KIND = "prediction interval for one run (law uncertainty plus one run's noise)"


@dataclass(frozen=True)
class SizedPoint:
    """One trial's accuracy at data size (or compute) x, for a model with `params` parameters."""

    params: float
    x: float
    accuracy: float


@dataclass(frozen=True)
class HeldBackCurve:
    """A law fitted without some points, the points it saw and the ones it predicts. `params` is the model
    size the curve is drawn at for a joint law, None for a per-model one."""

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
    """A held-back point: what was measured, what the law fitted without it predicted, and the interval."""

    series: str
    metric: str
    x_name: str
    x: float
    params: float | None
    measured: float
    predicted: float
    interval: tuple[float, float]

    @property
    def covered(self) -> bool:
        """Whether the measured accuracy lies inside the prediction interval."""
        return self.interval[0] <= self.measured <= self.interval[1]

    @property
    def error_points(self) -> float:
        """Predicted minus measured accuracy, in accuracy points."""
        return 100 * (self.predicted - self.measured)

    def to_dict(self) -> dict[str, Any]:
        """The `predictions` entry of `mixer report --json`."""
        return {
            "series": self.series, "metric": self.metric, "x_name": self.x_name, "x": self.x, "params": self.params,
            "measured": self.measured, "predicted": self.predicted, "interval": list(self.interval),
            "interval_kind": INTERVAL_KIND, "covered": self.covered, "error_points": self.error_points,
        }


def predict_held_back(curve: HeldBackCurve) -> list[Prediction]:
    """One prediction per held-back point of the curve, in accuracy."""
    x = np.array([point.x for point in curve.held_back])
    inputs = curve.inputs(x)
    error, (low, high) = curve.fit.error(inputs), curve.fit.error_band(inputs, one_run=True)
    return [
        Prediction(series=curve.fit.series, metric=curve.fit.metric, x_name=curve.fit.x_name, x=point.x,
                   params=curve.params, measured=point.accuracy, predicted=float(1 - error[i]),
                   interval=(float(1 - high[i]), float(1 - low[i])))
        for i, point in enumerate(curve.held_back)
    ]


def hold_back(holdout: str, series: str, points: list[SizedPoint], *, x_name: str, metric: str,
              n_bootstrap: int) -> HeldBackCurve:
    """Fit without the points at the largest x ('largest', the per-model law) or of the largest model
    ('largest-model', the joint law over the remaining sizes). Raises `CannotFit` saying why."""
    if holdout not in HOLDOUTS:
        raise CannotFit(f"--holdout must be one of {', '.join(HOLDOUTS)}, got {holdout!r}")
    by_model = holdout == "largest-model"
    size = (lambda point: point.params) if by_model else (lambda point: point.x)
    largest = max(map(size, points))
    fitted = [point for point in points if size(point) < largest]
    if not fitted:
        held = "model size" if by_model else x_name
        raise CannotFit(f"{series}: 1 distinct {held}, nothing left to fit once the largest is held back")
    fit = fit_scaling_law([p.x for p in fitted], [1 - p.accuracy for p in fitted],
                          params=[p.params for p in fitted] if by_model else None, series=series, x_name=x_name,
                          metric=metric, n_bootstrap=n_bootstrap)
    held_back = [point for point in points if size(point) == largest]
    return HeldBackCurve(fit, fitted, held_back, largest if by_model else None)

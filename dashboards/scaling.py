"""Scaling laws: error as a saturating power law E(x) = a·x^(−b) + c of data size or compute, per model.

Each series is fitted with scipy's `curve_fit`; its confidence intervals come from a pairs bootstrap (refit on
points resampled with replacement), which needs no assumption about the noise of a handful of trials.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

PARAMETER_NAMES = ("a", "b", "c")
# a >= 0 keeps error falling with x; b in [0, 5] spans every exponent seen in practice; c in [0, 1] because
# the error is a fraction.
_LOWER = (0.0, 0.0, 0.0)
_UPPER = (np.inf, 5.0, 1.0)


class NotEnoughPoints(ValueError):
    """A series has fewer distinct x values than the law has parameters, so a fit would be meaningless."""


def saturating_power_law(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """E(x) = a·x^(−b) + c: error that falls as a power of x towards the floor c."""
    return a * np.power(x, -b) + c


def _fit_normalised(x: np.ndarray, error: np.ndarray) -> np.ndarray:
    """(a, b, c) in original units. x is divided by its geometric mean first: with x up to 1e15 (FLOPs),
    a would otherwise span dozens of orders of magnitude and the optimiser would stall."""
    scale = float(np.exp(np.log(x).mean()))
    floor = 0.5 * float(error.min())
    initial = (max(float(np.median(error)) - floor, 1e-3), 0.5, floor)
    with warnings.catch_warnings():
        # With exactly three points the covariance cannot be estimated; we never use it.
        warnings.simplefilter("ignore", OptimizeWarning)
        (a, b, c), _ = curve_fit(
            saturating_power_law, x / scale, error, p0=initial, bounds=(_LOWER, _UPPER), maxfev=10_000
        )
    return np.array([a * scale**b, b, c])


@dataclass(frozen=True)
class ScalingFit:
    """A fitted law for one series: parameters, their bootstrap intervals, and the bootstrap draws."""

    series: str
    x_name: str
    metric: str
    n_points: int
    x_range: tuple[float, float]
    parameters: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    confidence: float
    bootstrap_draws: np.ndarray = field(repr=False)  # (n_successful, 3) parameters refitted on resamples

    def error(self, x: np.ndarray) -> np.ndarray:
        """The fitted error at x."""
        return saturating_power_law(np.asarray(x, dtype=float), *(self.parameters[n] for n in PARAMETER_NAMES))

    def error_band(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise (low, high) of the fitted error over the bootstrap draws, at this fit's confidence."""
        curves = np.stack([saturating_power_law(np.asarray(x, dtype=float), *draw) for draw in self.bootstrap_draws])
        tail = 50 * (1 - self.confidence)
        return np.percentile(curves, tail, axis=0), np.percentile(curves, 100 - tail, axis=0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no bootstrap draws)."""
        return {
            "series": self.series,
            "x": self.x_name,
            "metric": self.metric,
            "law": "error = a * x**(-b) + c",
            "n_points": self.n_points,
            "x_range": list(self.x_range),
            "parameters": self.parameters,
            # JSON has no NaN: an interval the bootstrap could not estimate is null.
            "intervals": {
                name: None if math.isnan(low) else [low, high] for name, (low, high) in self.intervals.items()
            },
            "confidence": self.confidence,
            "bootstrap_fits": len(self.bootstrap_draws),
        }


def fit_scaling_law(
    x: Iterable[float],
    error: Iterable[float],
    *,
    series: str = "",
    x_name: str = "x",
    metric: str = "error",
    n_bootstrap: int = 300,
    confidence: float = 0.95,
    seed: int = 0,
) -> ScalingFit:
    """Fit E(x) = a·x^(−b) + c to the points and bootstrap `confidence` intervals for a, b and c.

    Raises `NotEnoughPoints` when there are fewer distinct x values than the law's three parameters.
    """
    x, error = np.asarray(list(x), dtype=float), np.asarray(list(error), dtype=float)
    label = f"{series or 'series'}, {metric} vs {x_name}"
    distinct = len(np.unique(x))
    if distinct < len(PARAMETER_NAMES):
        raise NotEnoughPoints(
            f"{label}: {distinct} distinct point(s), but E = a·x^(−b) + c has {len(PARAMETER_NAMES)} parameters; "
            "not fitted"
        )
    if np.any(x <= 0):
        raise ValueError(f"{label}: x must be positive for a power law, got {x.min()}")
    try:
        best = _fit_normalised(x, error)
    except RuntimeError as failure:
        raise RuntimeError(f"{label}: curve_fit did not converge ({failure})") from None
    rng = np.random.default_rng(seed)
    draws = []
    # With exactly as many distinct points as parameters the curve interpolates every resample: the bootstrap
    # spread would be zero, which is no confidence at all, so the intervals are left undefined (NaN).
    for _ in range(n_bootstrap if distinct > len(PARAMETER_NAMES) else 0):
        pick = rng.integers(0, len(x), len(x))
        if len(np.unique(x[pick])) < len(PARAMETER_NAMES):
            continue  # a resample with too few distinct sizes cannot identify the law
        try:
            draws.append(_fit_normalised(x[pick], error[pick]))
        except RuntimeError:  # curve_fit gave up on this resample; the others still describe the spread
            continue
    draws = np.array(draws).reshape(-1, len(PARAMETER_NAMES))
    tail = 50 * (1 - confidence)
    intervals = {
        name: (
            (float(np.percentile(draws[:, i], tail)), float(np.percentile(draws[:, i], 100 - tail)))
            if len(draws)
            else (float("nan"), float("nan"))
        )
        for i, name in enumerate(PARAMETER_NAMES)
    }
    return ScalingFit(
        series=series,
        x_name=x_name,
        metric=metric,
        n_points=len(x),
        x_range=(float(x.min()), float(x.max())),
        parameters=dict(zip(PARAMETER_NAMES, map(float, best))),
        intervals=intervals,
        confidence=confidence,
        bootstrap_draws=draws,
    )


def best_points(points: Iterable[tuple[str, float, float]]) -> dict[str, list[tuple[float, float]]]:
    """Per series, one (x, accuracy) point per distinct x: the best trial there, as the paper reports the
    best hyperparameters per model and data size. Points come as (series, x, accuracy); sorted by x."""
    best: dict[str, dict[float, float]] = defaultdict(dict)
    for series, x, accuracy in points:
        best[series][x] = max(accuracy, best[series].get(x, -np.inf))
    return {series: sorted(by_x.items()) for series, by_x in sorted(best.items())}


def fit_series(
    points: dict[str, list[tuple[float, float]]],
    *,
    x_name: str,
    metric: str,
    n_bootstrap: int = 300,
    confidence: float = 0.95,
) -> tuple[list[ScalingFit], list[str]]:
    """Fit every series of (x, accuracy) points as error = 1 − accuracy. Returns the fits and one sentence
    per series that could not be fitted, saying why."""
    fits, refusals = [], []
    for series, series_points in points.items():
        x, accuracy = zip(*series_points)
        try:
            fits.append(
                fit_scaling_law(
                    x,
                    1.0 - np.asarray(accuracy),
                    series=series,
                    x_name=x_name,
                    metric=metric,
                    n_bootstrap=n_bootstrap,
                    confidence=confidence,
                )
            )
        except (ValueError, RuntimeError) as refusal:  # NotEnoughPoints is a ValueError
            refusals.append(str(refusal))
    return fits, refusals

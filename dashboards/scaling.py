"""Scaling laws of an error rate or a loss: E(x) = a·x^(−b) + c per model, and E(N, x) = E∞ + A·N^(−α) + B·x^(−β)
across the sizes N of one model family, x being data size or compute. Fitting and intervals live in
`dashboards.lawfit`, the metric kinds in `dashboards.kinds`; this module holds the two laws, refuses data that
cannot pin them down, says why, and says which fitted parameters the data left unidentified.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from scipy import stats

from dashboards.kinds import ERROR, MetricKind
from dashboards.lawfit import Law, LawFit, fit_law

_TINY = 1e-9  # lower bound of the amplitudes: log E needs E > 0
_MAX_EXPONENT = 5.0  # spans every exponent seen in practice
# An interval wider than this says nothing: three decades for an amplitude (or a floor with no upper bound),
# half the allowed range for an exponent or an error floor. Two residual degrees of freedom are needed at least.
_UNIDENTIFIED_DECADES = 3.0
_UNIDENTIFIED_SHARE = 0.5
MIN_BAND_DOF = 2


def saturating_power_law(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """E(x) = a·x^(−b) + c: error that falls as a power of x towards the floor c (broadcasts)."""
    return a * np.power(x, -b) + c


def _power_law_error(theta: np.ndarray, z: np.ndarray) -> np.ndarray:
    return saturating_power_law(z[:, 0], *(theta[..., i, None] for i in range(3)))


def _power_law_starts(z: np.ndarray, error: np.ndarray) -> np.ndarray:
    floors = np.array([0.0, 0.5, 0.9]) * error.min()
    return np.array([(max(np.median(error) - c, 1e-3), b, c) for b in (0.1, 0.3, 0.6, 1.0, 2.0) for c in floors])


def _power_law_in_input_units(theta: np.ndarray, scale: np.ndarray) -> np.ndarray:
    a, b, c = np.moveaxis(theta, -1, 0)
    return np.stack([a * scale[0] ** b, b, c], axis=-1)


def _power_law(kind: MetricKind) -> Law:
    return Law(
        formula=f"{kind.symbol} = a * x**(-b) + c",
        parameters=("a", "b", "c"),
        lower=(_TINY, 0.0, 0.0),  # the value falls with x towards a floor c that is itself a value of the kind
        upper=(np.inf, _MAX_EXPONENT, kind.ceiling),
        error=_power_law_error,
        starts=_power_law_starts,
        in_input_units=_power_law_in_input_units,
    )


def _joint_law_error(theta: np.ndarray, z: np.ndarray) -> np.ndarray:
    floor, a, alpha, b, beta = (theta[..., i, None] for i in range(5))
    return floor + a * z[:, 0] ** (-alpha) + b * z[:, 1] ** (-beta)


def _joint_law_starts(z: np.ndarray, error: np.ndarray) -> np.ndarray:
    return np.array([
        (floor, max(np.median(error) - floor, 1e-3) / 2, alpha, max(np.median(error) - floor, 1e-3) / 2, beta)
        for floor in (0.0, 0.5 * error.min()) for alpha in (0.2, 0.5, 1.0) for beta in (0.2, 0.5, 1.0)
    ])


def _joint_law_in_input_units(theta: np.ndarray, scale: np.ndarray) -> np.ndarray:
    floor, a, alpha, b, beta = np.moveaxis(theta, -1, 0)
    return np.stack([floor, a * scale[0] ** alpha, alpha, b * scale[1] ** beta, beta], axis=-1)


def _joint_law(kind: MetricKind) -> Law:
    return Law(
        formula=f"{kind.symbol} = E_inf + A * N**(-alpha) + B * x**(-beta)",
        parameters=("E_inf", "A", "alpha", "B", "beta"),
        lower=(0.0, _TINY, 0.0, _TINY, 0.0),
        upper=(kind.ceiling, np.inf, _MAX_EXPONENT, np.inf, _MAX_EXPONENT),
        error=_joint_law_error,
        starts=_joint_law_starts,
        in_input_units=_joint_law_in_input_units,
    )


class CannotFit(ValueError):
    """The points cannot pin the law down (too few sizes, or error that does not fall); the message says why."""


@dataclass(frozen=True)
class ScalingFit:
    """A law fitted to one series (a model, or a model family across its sizes) with its intervals.

    `inputs` names the law's input columns: (x,) for a per-model law, (params, x) for a joint one."""

    series: str
    metric: str
    inputs: tuple[str, ...]
    n_points: int
    input_ranges: tuple[tuple[float, float], ...]
    law_fit: LawFit

    @property
    def x_name(self) -> str:
        """The data-size or compute axis this law is a function of."""
        return self.inputs[-1]

    @property
    def x_range(self) -> tuple[float, float]:
        """The smallest and largest x the law was fitted on."""
        return self.input_ranges[-1]

    @property
    def is_joint(self) -> bool:
        """Whether the law spans model sizes as well as x."""
        return len(self.inputs) > 1

    @cached_property
    def parameters(self) -> dict[str, float]:
        """The fitted parameters in the units of the inputs."""
        return self.law_fit.parameters()

    @cached_property
    def intervals(self) -> dict[str, tuple[float, float]]:
        """Each parameter's interval at `confidence`."""
        return self.law_fit.parameter_intervals()

    @cached_property
    def identified(self) -> dict[str, bool]:
        """Per parameter, whether the data pin it down: at least `MIN_BAND_DOF` residual degrees of freedom and
        an interval narrower than three decades (amplitudes, unbounded floors) or half its allowed range."""
        law = self.law_fit.law
        upper = law.in_input_units(np.array(law.upper), self.law_fit.scale)
        verdicts = {}
        for i, name in enumerate(law.parameters):
            low, high = self.intervals[name]
            if law.lower[i] > 0 or not np.isfinite(upper[i]):
                reference = low if low > 0 else max(self.parameters[name], _TINY)
                verdicts[name] = bool(np.log10(high / reference) <= _UNIDENTIFIED_DECADES)
            else:
                verdicts[name] = bool(high - low <= _UNIDENTIFIED_SHARE * (upper[i] - law.lower[i]))
        return {name: verdict and self.has_band for name, verdict in verdicts.items()}

    @property
    def has_band(self) -> bool:
        """Whether the residuals leave enough degrees of freedom (`MIN_BAND_DOF`) for a band worth drawing."""
        return self.law_fit.dof >= MIN_BAND_DOF

    @property
    def kind(self) -> MetricKind:
        """Whether the law fits an error rate (of an accuracy) or a loss."""
        return self.law_fit.kind

    @property
    def confidence(self) -> float:
        """The coverage the intervals are drawn for."""
        return self.law_fit.confidence

    def error(self, inputs: np.ndarray) -> np.ndarray:
        """The fitted value of the law (error rate or loss) at inputs: x values, or (params, x) rows for a joint
        law."""
        return self.law_fit.error(inputs)

    def error_band(self, inputs: np.ndarray, *, one_run: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) value of the law at inputs: its confidence band, or with `one_run` the prediction interval
        of a single trial's measurement."""
        return self.law_fit.error_intervals(inputs, one_run=one_run)

    def metric_at(self, inputs: np.ndarray) -> np.ndarray:
        """The fitted metric (accuracy, or the loss itself) at inputs."""
        return self.kind.to_metric(self.error(inputs))

    def metric_band(self, inputs: np.ndarray, *, one_run: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) metric at inputs, as `error_band` in the metric's own units."""
        return self.kind.metric_interval(*self.error_band(inputs, one_run=one_run))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (no bootstrap draws)."""
        return {
            "series": self.series,
            "x": self.x_name,
            "inputs": list(self.inputs),
            "metric": self.metric,
            "kind": self.kind.name,
            "law": self.law_fit.law.formula,
            "n_points": self.n_points,
            "x_range": list(self.x_range),
            "parameters": self.parameters,
            "intervals": {name: list(bounds) for name, bounds in self.intervals.items()},
            "identified": self.identified,
            "residual_dof": self.law_fit.dof,
            "confidence": self.confidence,
            "bootstrap_fits": len(self.law_fit.draws),
        }


def _check_sizes(label: str, name: str, values: np.ndarray, needed: int, reason: str) -> None:
    distinct = len(np.unique(values, axis=0))
    if distinct < needed:
        raise CannotFit(f"{label}: {distinct} distinct {name} value(s), but {reason} needs {needed}; not fitted")


def _check_error_falls(label: str, x: np.ndarray, error: np.ndarray, kind_name: str) -> None:
    """Refuse when the mean value per x is flat or does not mostly fall with x: b is then unidentifiable."""
    sizes = np.unique(x)
    means = np.array([error[x == size].mean() for size in sizes])
    rho = stats.spearmanr(sizes, means).statistic
    if not rho < -0.5:
        raise CannotFit(
            f"{label}: the {kind_name} does not fall with x (Spearman ρ = {rho:+.2f} over {len(sizes)} sizes, "
            f"{means[0]:.3g} at the smallest, {means[-1]:.3g} at the largest), so its exponent is not identifiable; "
            "not fitted"
        )


def fit_scaling_law(
    x: Iterable[float],
    error: Iterable[float],
    *,
    series: str = "",
    x_name: str = "x",
    metric: str = "error",
    kind: MetricKind = ERROR,
    params: Iterable[float] | None = None,
    n_bootstrap: int = 300,
    confidence: float = 0.95,
    seed: int = 0,
) -> ScalingFit:
    """Fit E(x) = a·x^(−b) + c to the points (values of `kind`: error rates or losses), or with `params` (model
    sizes N, one per point) the joint law E∞ + A·N^(−α) + B·x^(−β), and bootstrap `confidence` intervals. Every
    point is a trial: repeated trials at one size (seeds) all enter the fit. Returns the fit.

    Raises `CannotFit` when there are fewer distinct sizes than the law has parameters plus one (no residual
    left to measure the noise), fewer than 3 model sizes for a joint law (E∞, A and α would be confounded),
    or a value that does not fall with x."""
    x, error = np.asarray(list(x), dtype=float), np.asarray(list(error), dtype=float)
    label = f"{series or 'series'}, {metric} vs {x_name}"
    if np.any(x <= 0):
        raise CannotFit(f"{label}: x must be positive for a power law, got {x.min()}")
    if params is None:
        law, inputs = _power_law(kind), x[:, None]
        _check_sizes(label, x_name, x, 4,
                     "E = a·x^(−b) + c has 3 parameters and, with one more to measure the noise,")
    else:
        law, inputs = _joint_law(kind), np.column_stack([np.asarray(list(params), dtype=float), x])
        if np.any(inputs[:, 0] <= 0):
            raise CannotFit(f"{label}: a trial has no parameter count (tag mixer.params), so no joint law; not fitted")
        _check_sizes(label, "model size", inputs[:, 0], 3, "separating E∞ from A·N^(−α)")
        _check_sizes(label, x_name, x, 3, "fitting B·x^(−β)")
        _check_sizes(label, "(model size, x)", inputs, 6,
                     "the joint law has 5 parameters and, with one more to measure the noise,")
    _check_error_falls(label, x, error, kind.name)
    fitted = fit_law(law, inputs, error, kind=kind, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    return ScalingFit(
        series=series,
        metric=metric,
        inputs=(x_name,) if params is None else ("params", x_name),
        n_points=len(x),
        input_ranges=tuple((float(column.min()), float(column.max())) for column in inputs.T),
        law_fit=fitted,
    )


def replicate_key(config: dict[str, str]) -> tuple:
    """What makes two trials replicates: the same config apart from seeds."""
    return tuple(sorted((key, value) for key, value in config.items() if key.rsplit(".", 1)[-1] != "seed"))


def chosen_trials(points: Iterable[tuple[Hashable, float, float, tuple]], *, higher_is_better: bool = True
                  ) -> dict[Hashable, list[tuple[float, float]]]:
    """Per series, the (x, value) points of the best configuration at each x (every one of its seeds), as the
    paper fits the best hyperparameters per model and size. Points come as (series, x, value, replicate key);
    each series is sorted by x."""
    groups: dict[Hashable, dict[float, dict[tuple, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for series, x, value, key in points:
        groups[series][x][key].append(value)
    sign = 1 if higher_is_better else -1
    return {
        series: [(x, value) for x in sorted(by_x)
                 for value in max(by_x[x].values(), key=lambda runs: sign * sum(runs) / len(runs))]
        for series, by_x in sorted(groups.items())
    }


def fit_series(
    points: dict[str, list[tuple[float, float]]],
    *,
    x_name: str,
    metric: str,
    kind: MetricKind = ERROR,
    n_bootstrap: int = 300,
    confidence: float = 0.95,
) -> tuple[list[ScalingFit], list[str]]:
    """Fit every series of (x, metric) points (accuracies as error = 1 − accuracy, or losses). Returns the fits
    and one sentence per series that could not be fitted, saying why."""
    fits, refusals = [], []
    for series, series_points in points.items():
        x, values = zip(*series_points)
        try:
            fits.append(fit_scaling_law(x, kind.to_law(values), series=series, x_name=x_name, metric=metric,
                                        kind=kind, n_bootstrap=n_bootstrap, confidence=confidence))
        except CannotFit as refusal:
            refusals.append(str(refusal))
    return fits, refusals


def fit_joint(
    points: dict[str, list[tuple[float, float, float]]],
    *,
    x_name: str,
    metric: str,
    kind: MetricKind = ERROR,
    n_bootstrap: int = 300,
) -> tuple[list[ScalingFit], list[str]]:
    """Fit the joint law to every family of (params, x, metric) points that spans at least two model sizes.
    Returns the fits and one sentence per family that could not be fitted."""
    fits, refusals = [], []
    for family, family_points in points.items():
        params, x, values = map(np.asarray, zip(*family_points))
        if len(np.unique(params)) < 2:
            continue  # one size: the per-model law says it all
        try:
            fits.append(fit_scaling_law(x, kind.to_law(values), params=params, series=family, x_name=x_name,
                                        metric=metric, kind=kind, n_bootstrap=n_bootstrap))
        except CannotFit as refusal:
            refusals.append(str(refusal))
    return fits, refusals


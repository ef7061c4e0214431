"""Robust least squares for a scaling law, and a residual bootstrap that gives its intervals honest widths.

A law maps inputs (model size, data size, compute) to an error rate or a loss (`dashboards.kinds`). The fit
minimises scipy's Huber loss on log residuals from a grid of starting points, within bounds, keeping the best.
Residuals are scaled by the noise the metric's kind carries: a test-set error rate is a binomial count with sd
√(E(1 − E)/n), so log E has sd ∝ √((1 − E)/E) and a 98%-accurate point is several times noisier in log space
than a 50% one (without that scale the intervals at the largest sizes, the ones a held-back prediction needs,
come out too narrow); a loss is log-normal, one sd in log space everywhere.

Intervals come from a residual bootstrap: the sizes are set by design and only the measurement is random, so
each replicate adds resampled residuals (every trial's, seeds included) to the fitted curve and refits. With
few points the residuals underestimate the noise and the bootstrap spread is itself uncertain, so each
interval is widened about the estimate by t(m − p)/z, the ratio a linear model's exact t interval has to its
normal one, m being the number of distinct inputs: repeated trials at one size (seeds) sharpen the noise
estimate but not the curve's shape, which only distinct sizes pin down (with two seeds per size and t(n − p),
a loss law's interval at a held-back size covered 87% instead of 95%). One more run's noise, in a prediction interval, is the larger of the residuals' sd and, where
trials repeat a configuration (seeds), the pooled sd among those repeats. Over 200 synthetic sweeps drawn from a
known law (tests/test_dashboards_coverage.py) these intervals cover the true parameters and the held-back points
at their nominal rate, for both kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import stats
from scipy.optimize import least_squares

from dashboards.kinds import ERROR, MetricKind

HUBER_EFFICIENCY = 1.345  # Huber's constant: 95% efficiency under Gaussian noise, bounded outlier influence


@dataclass(frozen=True)
class Law:
    """A law: its formula, parameter names and bounds, and how to evaluate and start it.

    `error(theta, z)` takes parameters (..., p) and inputs (n, k) divided by their geometric means, and returns
    the law's values (..., n), error rates or losses. `starts(z, error)` proposes (m, p) starting points. `in_input_units(theta, scale)` turns
    parameters (..., p) of the normalised inputs into parameters of the inputs as given."""

    formula: str
    parameters: tuple[str, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    error: Callable[[np.ndarray, np.ndarray], np.ndarray]
    starts: Callable[[np.ndarray, np.ndarray], np.ndarray]
    in_input_units: Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class LawFit:
    """A law fitted to (inputs, value) points of one metric kind, with its bootstrap replicates.

    `theta` and `draws` are parameters of the normalised inputs; `standardised_residuals` are the log residuals
    divided by their noise scale and inflated by √(n/(n − p)), the pool the bootstrap resamples; `seed_spread` is
    the pooled sd, in the same units, among trials at identical inputs (0 when none repeat); `dof` is the number
    of distinct inputs less the number of parameters."""

    law: Law
    kind: MetricKind
    scale: np.ndarray
    theta: np.ndarray
    draws: np.ndarray = field(repr=False)
    standardised_residuals: np.ndarray = field(repr=False)
    seed_spread: float
    dof: int
    confidence: float
    seed: int

    @property
    def widening(self) -> float:
        """t(dof)/z at this confidence: how much wider than the bootstrap spread each interval is drawn."""
        tail = 1 - (1 - self.confidence) / 2
        return float(stats.t.ppf(tail, self.dof) / stats.norm.ppf(tail))

    def interval(self, estimate: np.ndarray, replicates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) for an estimate from its bootstrap replicates (axis 0): the percentile interval's
        distances from the estimate, times `widening`."""
        tail = 50 * (1 - self.confidence)
        low, high = np.percentile(replicates, [tail, 100 - tail], axis=0)
        return (estimate - self.widening * np.maximum(estimate - low, 0),
                estimate + self.widening * np.maximum(high - estimate, 0))

    def parameters(self) -> dict[str, float]:
        """The fitted parameters in the units of the inputs."""
        values = self.law.in_input_units(self.theta, self.scale)
        return dict(zip(self.law.parameters, map(float, values)))

    def parameter_intervals(self) -> dict[str, tuple[float, float]]:
        """Each parameter's interval in the units of the inputs, clipped to the law's bounds. Amplitudes (the
        parameters bounded away from zero) span decades and are widened on a log scale, so they stay positive."""
        amplitude = np.array(self.law.lower) > 0

        def to_scale(values: np.ndarray) -> np.ndarray:
            return np.where(amplitude, np.log(np.where(amplitude, values, 1.0)), values)

        estimate = to_scale(self.law.in_input_units(self.theta, self.scale))
        low, high = self.interval(estimate, to_scale(self.law.in_input_units(self.draws, self.scale)))
        low, high = (np.where(amplitude, np.exp(bound), bound) for bound in (low, high))
        upper = self.law.in_input_units(np.array(self.law.upper), self.scale)
        return {name: (float(max(lo, bound)), float(min(hi, upper[i])))
                for i, (name, lo, hi, bound) in enumerate(zip(self.law.parameters, low, high, self.law.lower))}

    def error(self, inputs: np.ndarray) -> np.ndarray:
        """The fitted value (error rate or loss) at inputs (n, k)."""
        return self.law.error(self.theta, _as_rows(inputs) / self.scale)

    def error_intervals(self, inputs: np.ndarray, *, one_run: bool) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) value at inputs (n, k): a confidence interval for the law's mean, or with `one_run` a
        prediction interval for what one more trial would measure (its noise included)."""
        z = _as_rows(inputs) / self.scale
        estimate = np.log(self.law.error(self.theta, z))
        replicates = np.log(self.law.error(self.draws, z))
        if one_run:
            # Gaussian at the residuals' sd rather than the residuals themselves: with five of them, a resampled
            # 97.5% quantile would be just the largest residual.
            spread = max(float(np.sqrt(np.mean(self.standardised_residuals**2))), self.seed_spread)
            # One noise draw per replicate, shared along the inputs, so that a band over a grid is smooth.
            noise = np.random.default_rng(self.seed + 1).normal(0, spread, (len(replicates), 1))
            replicates = replicates + noise * self.kind.log_noise_scale(np.exp(estimate))
        low, high = self.interval(estimate, replicates)
        return np.exp(low), np.minimum(np.exp(high), self.kind.ceiling)  # an error rate stays within 100%


def _as_rows(inputs: np.ndarray) -> np.ndarray:
    inputs = np.asarray(inputs, dtype=float)
    return inputs.reshape(len(inputs), -1)


def _seed_spread(inputs: np.ndarray, standardised: np.ndarray) -> float:
    """The pooled sd of `standardised` log values among rows of `inputs` that repeat (seeds); 0 when none do."""
    _, group = np.unique(inputs, axis=0, return_inverse=True)
    group = group.ravel()
    dof = len(group) - group.max() - 1
    if dof == 0:
        return 0.0
    means = np.bincount(group, weights=standardised) / np.bincount(group)
    return float(np.sqrt(np.sum((standardised - means[group]) ** 2) / dof))


def _refit(law: Law, z: np.ndarray, log_errors: np.ndarray, noise: np.ndarray, starts: np.ndarray,
           f_scale: float, loss: str) -> tuple[np.ndarray, np.ndarray]:
    """Fit every row of log_errors (m, n) from the matching row of starts (m, p). Returns the parameters
    (m, p) and each fit's cost (m,). One small scipy call per row: stacking the rows into one block-diagonal
    problem was slower, as its single trust region waits for the slowest row."""
    theta, cost = np.empty_like(starts, dtype=float), np.empty(len(starts))
    for row, (observed, start) in enumerate(zip(log_errors, starts)):
        result = least_squares(
            lambda parameters: (np.log(law.error(parameters, z)) - observed) / noise,
            np.clip(start, law.lower, law.upper), bounds=(law.lower, law.upper), loss=loss, f_scale=f_scale,
            x_scale="jac",
        )
        theta[row], cost[row] = result.x, result.cost
    return theta, cost


def fit_law(law: Law, inputs: np.ndarray, error: np.ndarray, *, kind: MetricKind = ERROR, n_bootstrap: int = 300,
            confidence: float = 0.95, seed: int = 0) -> LawFit:
    """Fit `law` to values of `kind` (error rates or losses) measured at inputs (n, k) and bootstrap it. Returns
    the fit; the caller checks identifiability."""
    inputs, error = _as_rows(inputs), np.asarray(error, dtype=float)
    scale = np.exp(np.log(inputs).mean(axis=0))
    z, log_errors = inputs / scale, np.log(np.clip(error, 1e-6, None))
    noise = kind.log_noise_scale(error)
    n, p = len(error), len(law.parameters)
    starts = law.starts(z, error)
    # Plain least squares from the grid finds the basin; the median absolute residual there sets the noise
    # scale (an outlier would inflate a root-mean-square one), and Huber refits from the best start.
    theta, cost = _refit(law, z, np.tile(log_errors, (len(starts), 1)), noise, starts, 1.0, "linear")
    best = theta[np.argmin(cost)]
    scaled = (log_errors - np.log(law.error(best, z))) / noise
    sigma = max(1.4826 * float(np.median(np.abs(scaled - np.median(scaled)))) * np.sqrt(n / (n - p)), 1e-6)
    f_scale = HUBER_EFFICIENCY * sigma
    best = _refit(law, z, log_errors[None], noise, best[None], f_scale, "huber")[0][0]
    fitted = np.log(law.error(best, z))
    standardised = (log_errors - fitted) / noise * np.sqrt(n / (n - p))
    standardised -= standardised.mean()
    rng = np.random.default_rng(seed)
    resampled = fitted + rng.choice(standardised, (n_bootstrap, n)) * noise
    draws = _refit(law, z, resampled, noise, np.tile(best, (n_bootstrap, 1)), f_scale, "huber")[0]
    return LawFit(law=law, kind=kind, scale=scale, theta=best, draws=draws, standardised_residuals=standardised,
                  seed_spread=_seed_spread(inputs, log_errors / noise), dof=len(np.unique(inputs, axis=0)) - p,
                  confidence=confidence, seed=seed)

"""The intervals are honest: over 200 synthetic sweeps drawn from a known law, nominal 95% intervals cover the
true parameters, the true held-back value and a held-back measurement at least 90% of the time, for an error
rate with binomial test-set noise and for a loss with log-normal noise measured over two seeds per size."""

from __future__ import annotations

import numpy as np

from dashboards.kinds import LOSS
from dashboards.scaling import fit_scaling_law, saturating_power_law

TRUE = {"a": 3.0, "b": 0.45, "c": 0.04}
SIZES = np.array([80, 240, 800, 2400, 4800, 8000], dtype=float)  # train sizes of fractions 0.01 … 1.0
TEST_IMAGES = 2000  # each measured error is a binomial count over this many test images
DRAWS = 200
# A validation loss falling towards 1.8 nats; each run's loss is off by a factor exp(N(0, 0.02)).
TRUE_LOSS = {"a": 40.0, "b": 0.5, "c": 1.8}
LOSS_NOISE = 0.02
SEEDS = 2


def measure(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    return rng.binomial(TEST_IMAGES, saturating_power_law(x, **TRUE)) / TEST_IMAGES


def measure_loss(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    return saturating_power_law(x, **TRUE_LOSS) * np.exp(rng.normal(0, LOSS_NOISE, len(x)))


def coverage(rng, truth: dict, sizes: np.ndarray, measure_at, **fit_options) -> dict[str, float]:
    """Per true parameter, and for the law and one measurement at the largest size (held back), the share of
    `DRAWS` fits whose 95% interval held it."""
    fitted, held_back = sizes[sizes < sizes.max()], sizes.max()[None]
    true_held_back = saturating_power_law(held_back, **truth)[0]
    covered = {name: 0 for name in (*truth, "law at held-back x", "measurement at held-back x")}
    for draw in range(DRAWS):
        fit = fit_scaling_law(fitted, measure_at(rng, fitted), n_bootstrap=100, seed=draw, **fit_options)
        for name, value in truth.items():
            low, high = fit.intervals[name]
            covered[name] += low <= value <= high
        low, high = fit.error_band(held_back)
        covered["law at held-back x"] += low[0] <= true_held_back <= high[0]
        low, high = fit.error_band(held_back, one_run=True)
        covered["measurement at held-back x"] += low[0] <= measure_at(rng, held_back)[0] <= high[0]
    return {name: float(count) / DRAWS for name, count in covered.items()}


def test_nominal_95_percent_intervals_cover_at_least_90_percent_of_draws():
    rates = coverage(np.random.default_rng(2024), TRUE, SIZES, measure)
    print(f"coverage of nominal 95% intervals over {DRAWS} draws:", {name: round(r, 3) for name, r in rates.items()})
    assert min(rates.values()) >= 0.90, rates


def test_loss_intervals_with_seeds_cover_at_least_90_percent_of_draws():
    rates = coverage(np.random.default_rng(7), TRUE_LOSS, np.repeat(SIZES, SEEDS), measure_loss, kind=LOSS)
    print(f"loss coverage of nominal 95% intervals over {DRAWS} draws:", {name: round(r, 3) for name, r in rates.items()})
    assert min(rates.values()) >= 0.90, rates

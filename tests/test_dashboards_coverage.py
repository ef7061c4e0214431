"""The intervals are honest: over 200 synthetic sweeps drawn from a known law with binomial test-set noise,
nominal 95% intervals cover the true parameters, the true held-back error and a held-back measurement at
least 90% of the time."""

from __future__ import annotations

import numpy as np

from dashboards.scaling import fit_scaling_law, saturating_power_law

TRUE = {"a": 3.0, "b": 0.45, "c": 0.04}
SIZES = np.array([80, 240, 800, 2400, 4800, 8000], dtype=float)  # train sizes of fractions 0.01 … 1.0
TEST_IMAGES = 2000  # each measured error is a binomial count over this many test images
DRAWS = 200


def measure(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    return rng.binomial(TEST_IMAGES, saturating_power_law(x, **TRUE)) / TEST_IMAGES


def test_nominal_95_percent_intervals_cover_at_least_90_percent_of_draws():
    rng = np.random.default_rng(2024)
    fitted, held_back = SIZES[:-1], SIZES[-1:]
    true_held_back = saturating_power_law(held_back, **TRUE)[0]
    covered = {name: 0 for name in (*TRUE, "law at held-back x", "measurement at held-back x")}
    for draw in range(DRAWS):
        fit = fit_scaling_law(fitted, measure(rng, fitted), n_bootstrap=100, seed=draw)
        for name, value in TRUE.items():
            low, high = fit.intervals[name]
            covered[name] += low <= value <= high
        low, high = fit.error_band(held_back)
        covered["law at held-back x"] += low[0] <= true_held_back <= high[0]
        low, high = fit.error_band(held_back, one_run=True)
        covered["measurement at held-back x"] += low[0] <= measure(rng, held_back)[0] <= high[0]
    rates = {name: float(count) / DRAWS for name, count in covered.items()}
    print(f"coverage of nominal 95% intervals over {DRAWS} draws:", {name: round(r, 3) for name, r in rates.items()})
    assert min(rates.values()) >= 0.90, rates

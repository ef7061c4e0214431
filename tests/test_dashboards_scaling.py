"""Scaling-law fits: laws recovered from points that follow them, robust to an outlier, every seed used, and
refusals that say why when the points cannot pin a law down."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dashboards.scaling import CannotFit, chosen_trials, fit_joint, fit_scaling_law, fit_series, saturating_power_law

SIZES = np.array([250, 500, 1000, 2000, 4000, 8000, 16000], dtype=float)
TRUE = (3.0, 0.45, 0.04)


def noisy_errors(x: np.ndarray, seed: int = 0) -> np.ndarray:
    return saturating_power_law(x, *TRUE) + np.random.default_rng(seed).normal(0, 0.002, len(x))


def test_fit_recovers_the_law_and_its_interval_holds_the_truth():
    fit = fit_scaling_law(SIZES, noisy_errors(SIZES), series="Ti/4", x_name="train_size", n_bootstrap=200)
    assert fit.parameters["b"] == pytest.approx(TRUE[1], abs=0.08)
    assert fit.parameters["c"] == pytest.approx(TRUE[2], abs=0.02)
    for name, value in zip("abc", TRUE):
        low, high = fit.intervals[name]
        assert low < value < high
    assert np.abs(fit.error(SIZES) - saturating_power_law(SIZES, *TRUE)).max() < 0.005
    band_low, band_high = fit.error_band(SIZES)
    run_low, run_high = fit.error_band(SIZES, one_run=True)
    assert np.all(band_low <= fit.error(SIZES)) and np.all(fit.error(SIZES) <= band_high)
    assert np.all(run_high - run_low > band_high - band_low)  # one run's noise widens the interval
    json.dumps(fit.to_dict(), allow_nan=False)


def test_fit_is_unchanged_by_the_units_of_x():
    """FLOPs reach 1e15: fitting in those units gives the same exponent as fitting in examples."""
    in_examples = fit_scaling_law(SIZES, noisy_errors(SIZES), n_bootstrap=20)
    in_flops = fit_scaling_law(SIZES * 6e9, noisy_errors(SIZES), n_bootstrap=20)
    assert in_flops.parameters["b"] == pytest.approx(in_examples.parameters["b"], rel=1e-3)
    assert in_flops.parameters["c"] == pytest.approx(in_examples.parameters["c"], abs=1e-4)
    assert in_flops.error(SIZES[:1] * 6e9) == pytest.approx(in_examples.error(SIZES[:1]), rel=1e-3)


def test_one_wild_trial_barely_moves_the_exponent():
    x = np.repeat(SIZES, 2)
    error = saturating_power_law(x, *TRUE) * np.exp(np.random.default_rng(1).normal(0, 0.02, len(x)))
    error[9] *= 1.8  # one of the seeds at 4000 examples diverged
    fit = fit_scaling_law(x, error, n_bootstrap=20)
    assert fit.n_points == 14 and fit.parameters["b"] == pytest.approx(TRUE[1], abs=0.06)


def test_refuses_fewer_distinct_sizes_than_parameters_plus_one():
    with pytest.raises(CannotFit, match=r"resnet18, test_top1 vs train_size: 3 distinct train_size value\(s\).*4;"):
        fit_scaling_law([500, 1000, 2000, 2000], [0.2, 0.15, 0.14, 0.13], series="resnet18", x_name="train_size",
                        metric="test_top1")


def test_refuses_error_that_does_not_fall():
    flat = 0.1 + np.random.default_rng(0).normal(0, 0.005, len(SIZES))
    flat[-1] = 0.11
    with pytest.raises(CannotFit, match="error does not fall with x.*exponent is not identifiable"):
        fit_scaling_law(SIZES, flat)


def test_chosen_trials_keep_every_seed_of_the_best_configuration():
    points = chosen_trials([
        ("Ti/4", 1000, 0.80, ("lr", "0.1")), ("Ti/4", 1000, 0.84, ("lr", "0.01")), ("Ti/4", 1000, 0.86, ("lr", "0.01")),
        ("Ti/4", 500, 0.7, ("lr", "0.01")), ("resnet18", 500, 0.6, ("lr", "0.01")),
    ])
    assert points == {"Ti/4": [(500, 0.7), (1000, 0.84), (1000, 0.86)], "resnet18": [(500, 0.6)]}


def test_fit_series_fits_what_it_can_and_says_why_it_skips_the_rest():
    accuracy = 1 - noisy_errors(SIZES)
    fits, refusals = fit_series(
        {"Ti/4": list(zip(SIZES, accuracy)), "resnet18": [(500.0, 0.7)]},
        x_name="train_size", metric="test_top1", n_bootstrap=20,
    )
    assert [fit.series for fit in fits] == ["Ti/4"]
    assert len(refusals) == 1 and refusals[0].startswith("resnet18, test_top1 vs train_size: 1 distinct train_size")


def test_joint_law_recovers_both_exponents_and_needs_three_model_sizes():
    n, d = (grid.ravel() for grid in np.meshgrid([5e5, 2e6, 8e6, 3e7], SIZES))
    error = (0.02 + 5.0 * n**-0.35 + 3.0 * d**-0.45) * np.exp(np.random.default_rng(2).normal(0, 0.01, len(n)))
    (fit,), refusals = fit_joint({"Mixer": list(zip(n, d, 1 - error))}, x_name="train_size", metric="test_top1",
                                 n_bootstrap=50)
    assert not refusals and fit.is_joint and fit.inputs == ("params", "train_size")
    assert fit.parameters["alpha"] == pytest.approx(0.35, abs=0.08)
    assert fit.parameters["beta"] == pytest.approx(0.45, abs=0.05)
    low, high = fit.intervals["beta"]
    assert low < 0.45 < high
    two_sizes = [(params, x, accuracy) for params, x, accuracy in zip(n, d, 1 - error) if params < 3e6]
    fits, refusals = fit_joint({"Mixer": two_sizes}, x_name="train_size", metric="test_top1", n_bootstrap=10)
    assert not fits and "2 distinct model size value(s), but separating E∞ from A·N^(−α) needs 3" in refusals[0]

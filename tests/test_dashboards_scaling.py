"""Scaling-law fits: E(x) = a·x^(−b) + c recovered from points that follow it, refusals when it cannot be."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dashboards.scaling import NotEnoughPoints, best_points, fit_scaling_law, fit_series, saturating_power_law

SIZES = np.array([250, 500, 1000, 2000, 4000, 8000, 16000], dtype=float)
TRUE = (3.0, 0.45, 0.04)


def noisy_errors(x: np.ndarray, seed: int = 0) -> np.ndarray:
    return saturating_power_law(x, *TRUE) + np.random.default_rng(seed).normal(0, 0.002, len(x))


def test_fit_recovers_the_law_and_its_interval_holds_the_truth():
    fit = fit_scaling_law(SIZES, noisy_errors(SIZES), series="Ti/4", x_name="train_size", n_bootstrap=200)
    assert fit.parameters["b"] == pytest.approx(TRUE[1], abs=0.08)
    assert fit.parameters["c"] == pytest.approx(TRUE[2], abs=0.02)
    low, high = fit.intervals["b"]
    assert low < TRUE[1] < high and high - low < 0.5
    assert len(fit.bootstrap_draws) > 150
    assert np.abs(fit.error(SIZES) - saturating_power_law(SIZES, *TRUE)).max() < 0.005
    band_low, band_high = fit.error_band(SIZES)
    assert np.all(band_low <= band_high)


def test_fit_is_unchanged_by_the_units_of_x():
    """FLOPs reach 1e15: fitting in those units gives the same exponent as fitting in examples."""
    in_examples = fit_scaling_law(SIZES, noisy_errors(SIZES), n_bootstrap=0)
    in_flops = fit_scaling_law(SIZES * 6e9, noisy_errors(SIZES), n_bootstrap=0)
    assert in_flops.parameters["b"] == pytest.approx(in_examples.parameters["b"], rel=1e-3)
    assert in_flops.parameters["c"] == pytest.approx(in_examples.parameters["c"], abs=1e-4)
    assert in_flops.error(SIZES[:1] * 6e9) == pytest.approx(in_examples.error(SIZES[:1]), rel=1e-3)


def test_refuses_fewer_distinct_points_than_parameters():
    with pytest.raises(NotEnoughPoints, match=r"resnet18, test_top1 vs train_size: 2 distinct point\(s\).*3 parameters"):
        fit_scaling_law([500, 1000, 1000], [0.2, 0.15, 0.14], series="resnet18", x_name="train_size", metric="test_top1")


def test_exact_fit_has_no_interval_and_stays_valid_json():
    fit = fit_scaling_law(SIZES[:3], noisy_errors(SIZES[:3]), n_bootstrap=100)
    assert len(fit.bootstrap_draws) == 0
    summary = fit.to_dict()
    assert summary["intervals"] == {"a": None, "b": None, "c": None}
    json.dumps(summary, allow_nan=False)


def test_best_points_keep_the_best_trial_per_series_and_size():
    points = best_points([("Ti/4", 1000, 0.8), ("Ti/4", 1000, 0.85), ("Ti/4", 500, 0.7), ("resnet18", 500, 0.6)])
    assert points == {"Ti/4": [(500, 0.7), (1000, 0.85)], "resnet18": [(500, 0.6)]}


def test_fit_series_fits_what_it_can_and_says_why_it_skips_the_rest():
    accuracy = 1 - noisy_errors(SIZES)
    fits, refusals = fit_series(
        {"Ti/4": list(zip(SIZES, accuracy)), "resnet18": [(500.0, 0.7)]},
        x_name="train_size", metric="test_top1", n_bootstrap=20,
    )
    assert [fit.series for fit in fits] == ["Ti/4"]
    assert fits[0].parameters["b"] == pytest.approx(TRUE[1], abs=0.08)
    assert len(refusals) == 1 and refusals[0].startswith("resnet18, test_top1 vs train_size: 1 distinct point")

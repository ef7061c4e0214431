"""Compute-optimal allocation (Chinchilla's approach 3): from a joint law L(N, D) = E∞ + A·N^(−α) + B·D^(−β) and a
FLOPs model C = k·N^γ·D, the model size N and data size D that minimise the law at a compute budget C.

The optimum is found on a fine logarithmic grid of N along the iso-FLOP curve, for the fitted parameters and
for every bootstrap replicate, so its intervals are the law's own (percentile, widened by t(n − p)/z as every
interval of `dashboards.lawfit`). With γ = 1 the grid reproduces the closed form
N* = (αA/βB)^(1/(α+β)) · (C/k)^(β/(α+β)) (Hoffmann et al. 2022, eq. 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dashboards.scaling import CannotFit, ScalingFit

_GRID_POINTS = 4001
_GRID_REACH = 1e4  # the grid spans the fitted model sizes widened by this factor each way
_FLOPS_MODEL_TOLERANCE = np.log(1.5)  # runs whose compute is off C = k·N^γ·D by more (rms) are not described by it


@dataclass(frozen=True)
class FlopsModel:
    """Training compute as C = k·N^γ·D (N parameters, D training examples or tokens)."""

    k: float
    gamma: float = 1.0

    @classmethod
    def fitted(cls, params: np.ndarray, data: np.ndarray, flops: np.ndarray, *, label: str = "runs") -> FlopsModel:
        """The model whose log(C/D) = log k + γ·log N best fits the runs (least squares); γ = 1 when they
        span a single model size. Returns it; raises `CannotFit`, its message starting with `label`, when the
        runs' compute departs from it by more than 1.5× (rms), as when every run took the same number of steps
        whatever its data size."""
        params, per_example = np.asarray(params, float), np.asarray(flops, float) / np.asarray(data, float)
        if len(np.unique(params)) < 2:
            model = cls(k=float(np.exp(np.mean(np.log(per_example / params)))))
        else:
            gamma, log_k = np.polyfit(np.log(params), np.log(per_example), 1)
            model = cls(k=float(np.exp(log_k)), gamma=float(gamma))
        misfit = np.sqrt(np.mean((np.log(per_example) - np.log(model.k * params**model.gamma)) ** 2))
        if misfit > _FLOPS_MODEL_TOLERANCE:
            raise CannotFit(f"{label}: the runs' training compute is off {model.describe()} by a factor of "
                            f"{np.exp(misfit):.3g} (rms): it does not grow with data size as C ∝ D (equal-step "
                            "budgets?), so there is no compute-optimal split of C between N and D")
        return model

    def data_at(self, params: np.ndarray, flops: float) -> np.ndarray:
        """The data size D that spends `flops` on models of `params` parameters."""
        return flops / (self.k * np.asarray(params, float) ** self.gamma)

    def describe(self) -> str:
        """The model as a formula, e.g. `C = 6·N·D`."""
        power = "" if abs(self.gamma - 1) < 1e-9 else f"^{self.gamma:.3g}"
        return f"C = {self.k:.3g}·N{power}·D"


@dataclass(frozen=True)
class ComputeOptimal:
    """The compute-optimal point of one joint law at budget `flops`: N, D and the law's value there (in the
    metric's units), each with its 95% interval, and how far each lies beyond what the law was fitted on."""

    series: str
    metric: str
    flops: float
    flops_model: str
    params: float
    params_interval: tuple[float, float]
    data: float
    data_interval: tuple[float, float]
    predicted: float
    predicted_interval: tuple[float, float]
    extrapolation: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """The `mixer predict --flops --json` entry."""
        return {
            "series": self.series, "metric": self.metric, "flops": self.flops, "flops_model": self.flops_model,
            "params": self.params, "params_interval": list(self.params_interval), "data": self.data,
            "data_interval": list(self.data_interval), "predicted": self.predicted,
            "predicted_interval": list(self.predicted_interval), "interval_kind": "95% interval of the law's value",
            "extrapolation": self.extrapolation,
        }


def _iso_flop_grid(fit: ScalingFit, flops_model: FlopsModel, flops: float) -> tuple[np.ndarray, np.ndarray]:
    low, high = fit.input_ranges[0]
    params = np.geomspace(low / _GRID_REACH, high * _GRID_REACH, _GRID_POINTS)
    return params, flops_model.data_at(params, flops)


def iso_flop_values(fit: ScalingFit, flops_model: FlopsModel, flops: float, params: np.ndarray) -> np.ndarray:
    """The law's metric along the iso-FLOP curve at `flops`, at model sizes `params`."""
    return fit.metric_at(np.column_stack([params, flops_model.data_at(params, flops)]))


def compute_optimal(fit: ScalingFit, flops_model: FlopsModel, flops: float, *, fitted_flops: float
                    ) -> ComputeOptimal:
    """The optimal N, D and metric of joint law `fit` at budget `flops`, with bootstrap intervals. `fitted_flops`
    is the largest compute the law was fitted on, for the extrapolation factor. Returns the optimum; raises
    `CannotFit` when the law has no optimum within 10⁴ times its fitted model sizes (α or β near 0)."""
    law_fit = fit.law_fit
    params, data = _iso_flop_grid(fit, flops_model, flops)
    z = np.column_stack([params, data]) / law_fit.scale
    best = np.argmin(law_fit.law.error(law_fit.theta, z))
    if best in (0, len(params) - 1):
        side = "smaller" if best == 0 else "larger"
        raise CannotFit(f"{fit.series}, {fit.metric}: at {flops:.3g} FLOPs the law keeps improving towards ever "
                        f"{side} models (α = {fit.parameters['alpha']:.3g}, β = {fit.parameters['beta']:.3g}), "
                        "so it has no compute-optimal size")
    replicate_best = np.argmin(law_fit.law.error(law_fit.draws, z), axis=-1)
    log_params, replicate_log_params = np.log(params[best]), np.log(params[replicate_best])
    params_low, params_high = np.exp(law_fit.interval(log_params, replicate_log_params))
    data_low, data_high = flops_model.data_at(np.array([params_high, params_low]), flops)
    value = law_fit.law.error(law_fit.theta, z[best][None])[0]
    replicate_values = law_fit.law.error(law_fit.draws, z[best][None])[:, 0]
    low, high = law_fit.interval(np.log(value), np.log(replicate_values))
    predicted_low, predicted_high = fit.kind.metric_interval(np.exp(low), np.exp(high))
    return ComputeOptimal(
        series=fit.series, metric=fit.metric, flops=float(flops), flops_model=flops_model.describe(),
        params=float(params[best]), params_interval=(float(params_low), float(params_high)),
        data=float(data[best]), data_interval=(float(data_low), float(data_high)),
        predicted=float(fit.kind.to_metric(value)),
        predicted_interval=(float(predicted_low), float(predicted_high)),
        extrapolation={"flops": float(flops / fitted_flops), "params": float(params[best] / fit.input_ranges[0][1]),
                       "data": float(data[best] / fit.input_ranges[1][1])},
    )


def optima_at(fits: list[ScalingFit], runs: dict[str, list[tuple[float, float, float]]], flops: float
              ) -> tuple[list[ComputeOptimal], list[str]]:
    """The compute-optimal point at budget `flops` of every joint law in `fits`, its FLOPs model fitted to its
    family's runs (`runs`: family -> (params, data, flops) per run). Returns the optima and why any law has none."""
    optima, notes = [], []
    for fit in fits:
        family_runs = runs.get(fit.series, [])
        if not family_runs:
            notes.append(f"{fit.series}: no run logged its training compute, so there is no FLOPs model")
            continue
        params, data, run_flops = map(np.asarray, zip(*family_runs))
        try:
            flops_model = FlopsModel.fitted(params, data, run_flops, label=f"{fit.series}, {fit.metric}")
            optima.append(compute_optimal(fit, flops_model, flops, fitted_flops=float(run_flops.max())))
        except CannotFit as refusal:
            notes.append(str(refusal))
    return optima, notes

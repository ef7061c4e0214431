"""The expanded plan of a sweep, without starting Ray: its trials, axes, model sizes and training cost.

`mixer sweep validate` prints it, and `mixer sweep run` before starting Ray. A Mixer's size and MACs are arithmetic
(`mixer_core.sizes`), so planning imports no torch; a timm baseline is built on PyTorch's meta device and counted.
Dataset sizes and the training split come from the data layer (`mixer_core.data.facts`), never from reading
images. Training FLOPs are `mixer_core.sizes.training_flops`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any

from mixer_core.config import ModelConfig, RunConfig, image_shape_problem
from mixer_core.data.facts import dataset_facts, estimated_train_size
from mixer_core.data.memory import in_memory_problem
from mixer_core.sizes import mixer_macs, mixer_parameters, training_flops
from mixer_core.variants import VARIANTS
from sweeps.spec import (
    OPTUNA_SEARCHERS,
    SpecError,
    SweepSpec,
    build_run_config,
    grid_choices,
    is_linked,
    linked_settings,
)
from sweeps.tables import format_table

# Keys that change what a trial costs; the plan bounds a search by the extremes of these only.
_COST_KEYS = (
    "model.variant",
    "model.timm_model",
    "data.name",
    "data.image_size",
    "data.fraction",
    "data.batch_size",
    "train.epochs",
    "train.steps",
    "train.examples",
)


@dataclass(frozen=True)
class ModelCost:
    """One model at one input shape: its size and forward cost per image."""

    model: str  # a Mixer variant or a timm model name
    image_shape: tuple[int, int, int]
    num_classes: int
    params: int
    gmacs: float


def trial_configs(spec: SweepSpec) -> list[dict[str, Any]]:
    """The grid's points in axis order, each a dict of dotted key path -> value (a linked axis -> its label);
    `[{}]` without a grid."""
    choices = grid_choices(spec)
    return [dict(zip(choices, values)) for values in itertools.product(*choices.values())]


def trial_count(spec: SweepSpec) -> int:
    """How many trials the sweep runs: grid points × num_samples, or num_samples for Optuna."""
    if spec.searcher in OPTUNA_SEARCHERS:
        return spec.num_samples
    return len(trial_configs(spec)) * spec.num_samples


def plan_sweep(spec: SweepSpec) -> dict[str, Any]:
    """The sweep's plan as plain data: `name`, `source`, `searcher`, `scheduler`, `trial_count`, `axes`
    (key path -> values or distribution, as text), `models` (model, image_shape, num_classes, params, gmacs)
    and `train_flops` for all trials (an upper bound for searched sweeps; None when the data size is unknown)
    with a `flops_note`. Raises `SpecError` if a trial's model cannot take its input size."""
    costs: dict[tuple, ModelCost] = {}
    total_flops, unknown = 0.0, set()
    optuna = spec.searcher in OPTUNA_SEARCHERS
    for params in [{}] if optuna else trial_configs(spec):
        worst = 0.0
        for bound in _cost_bounds(spec, include_grid=optuna):
            config = build_run_config(spec, {**params, **bound})
            _check_in_memory(spec, config)
            cost, examples = _model_cost(spec, config, costs), estimated_examples(config)
            if cost is None or examples is None:
                unknown.add(config.data.name)
                continue
            worst = max(worst, training_flops(cost.gmacs * 1e9, examples))
        total_flops += worst * spec.num_samples
    note = "upper bound: every trial at its most costly setting" if spec.search or optuna else "all trials"
    if unknown:
        note = f"{', '.join(sorted(unknown))} data of unknown size: set data.image_size and train.steps or train.examples"
    return {
        "name": spec.name,
        "source": spec.source,
        "searcher": spec.searcher,
        "scheduler": spec.scheduler.type,
        "trial_count": trial_count(spec),
        "axes": _describe_axes(spec),
        "models": [asdict(cost) for cost in costs.values()],
        "train_flops": None if unknown else total_flops,
        "flops_note": note,
    }


def estimated_examples(config: RunConfig) -> int | None:
    """Training examples one run sees: its example or step budget, else epochs × the fraction's size."""
    if config.train.examples is not None:
        return config.train.examples
    if config.train.steps is not None:
        return config.train.steps * config.data.batch_size
    size = estimated_train_size(config.data)
    return None if size is None else math.ceil(config.train.epochs * size)


def format_plan(plan: dict[str, Any]) -> str:
    """The plan for people: header, axes, a table of models, and the training cost."""
    rows = [
        {
            "model": cost["model"],
            "input": "x".join(map(str, cost["image_shape"])),
            "classes": cost["num_classes"],
            "params_M": cost["params"] / 1e6,
            "GMACs": cost["gmacs"],
        }
        for cost in plan["models"]
    ]
    return "\n".join(
        [
            f"sweep {plan['name']} ({plan['source']}): {plan['trial_count']} trials, searcher {plan['searcher']}, "
            f"scheduler {plan['scheduler']}",
            *(f"  {key}: {values}" for key, values in plan["axes"].items()),
            "",
            format_table(rows),
            "",
            f"estimated training FLOPs: {_flops_text(plan['train_flops'])} ({plan['flops_note']})",
        ]
    )


def _flops_text(flops: float | None) -> str:
    return "unknown" if flops is None else f"{flops:.3g}"


def _cost_bounds(spec: SweepSpec, include_grid: bool) -> list[dict[str, Any]]:
    """Settings of the cost-relevant searched keys whose maximum bounds any sampled trial's cost
    (Optuna also chooses among grid values, so they count as searched then)."""
    dims = {key: dist.endpoint_values() for key, dist in spec.search.items() if key in _COST_KEYS}
    if include_grid:
        dims.update({key: values for key, values in grid_choices(spec).items() if key in _COST_KEYS or is_linked(key)})
    return [dict(zip(dims, values)) for values in itertools.product(*dims.values())]


def _describe_axes(spec: SweepSpec) -> dict[str, str]:
    axes, linked = {}, linked_settings(spec)
    for key, values in grid_choices(spec).items():
        axes[f"grid {key}"] = ", ".join(map(str, values))
        for label, settings in linked.get(key, {}).items():  # a linked axis: what each label sets
            axes[f"  {key}={label}"] = " ".join(f"{path}={value}" for path, value in settings.items())
    for key, dist in spec.search.items():
        if dist.type == "categorical":
            axes[f"search {key}"] = "{" + ", ".join(map(str, dist.choices)) + "}"
        else:
            axes[f"search {key}"] = f"{dist.type}{' log' if dist.log else ''} [{dist.low:g}, {dist.high:g}]"
    return axes


def _model_cost(spec: SweepSpec, config: RunConfig, cache: dict[tuple, ModelCost]) -> ModelCost | None:
    """The model's size and MACs at the trial's input shape; None when the data's image size is unknown."""
    facts = dataset_facts(config.data)
    if facts.image_shape is None and config.data.image_size is None:
        return None
    channels = facts.image_shape[0] if facts.image_shape else 3
    height, width = (config.data.image_size,) * 2 if config.data.image_size else facts.image_shape[1:]
    name = config.model.name
    key = (name, (channels, height, width), facts.num_classes or 0, config.model.timm_patch_size)
    if key in cache:
        return cache[key]
    problem = image_shape_problem(config.model, height, width)
    if problem:
        raise SpecError(f"{spec.source}: {_where_varied(spec, 'model.variant')}: {config.data.name} images: {problem}")
    if config.model.timm_model:
        try:
            params, macs = _counted_size(config.model, key[2], key[1])
        except ValueError as error:  # a setting the model cannot take (e.g. head_bias_init without a head bias)
            raise SpecError(f"{spec.source}: {_where_varied(spec, 'model.timm_model')}: {error}") from None
    else:
        variant = VARIANTS[config.model.variant]
        params = mixer_parameters(variant, height, channels, key[2])
        macs = mixer_macs(variant, height, channels, key[2])
    cache[key] = ModelCost(name, key[1], key[2], params, macs / 1e9)
    return cache[key]


def _check_in_memory(spec: SweepSpec, config: RunConfig) -> None:
    """Raise `SpecError` when the trial's training data would be decoded whole into memory over the limit."""
    problem = in_memory_problem(config.data)
    if problem:
        raise SpecError(f"{spec.source}: {_where_varied(spec, 'data.path')}: {problem}")


def _counted_size(model: ModelConfig, num_classes: int, image_shape: tuple[int, int, int]) -> tuple[int, int]:
    """Parameters and forward MACs of a timm baseline, built on the meta device (no memory, no initialisation)."""
    import torch  # only baselines need it; a plan of Mixers stays free of torch's import time

    from mixer_core.build import build_model, forward_macs
    from mixer_core.model import count_parameters

    with torch.device("meta"):
        network = build_model(model, num_classes, image_shape)
        return count_parameters(network), forward_macs(network, image_shape)


def _where_varied(spec: SweepSpec, key: str) -> str:
    """The spec entry that varies `key`: `grid.<key>`, `search.<key>`, a linked `grid.<axis>`, else `base.<key>`."""
    for kind, axes in (("grid", spec.grid), ("search", spec.search)):
        if key in axes:
            return f"{kind}.{key}"
    linked = linked_settings(spec)
    return next((f"grid.{axis}" for axis in linked if any(key in s for s in linked[axis].values())), f"base.{key}")

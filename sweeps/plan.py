"""The expanded plan of a sweep, without starting Ray: its trials, axes, model sizes, training cost and memory.

`mixer sweep validate` prints it, and `mixer sweep run` before starting Ray. A Mixer's size and MACs are arithmetic
(`mixer_core.sizes`), so planning imports no torch; a timm baseline is built on PyTorch's meta device and counted.
Dataset sizes and the training split come from the data layer (`mixer_core.data.facts`), never from reading
images. Training FLOPs are `mixer_core.sizes.training_flops`.

Memory (`mixer_core.memory`): per model and micro-batch, what one worker holds (parameters, gradients, optimizer
state, activations with and without checkpointing, bf16 and fp32) beside the device memory the spec declares
(`resources.accelerator_memory_gb`, or known from `resources.accelerator_type`). A trial that would not fit is
refused before anything starts, with the micro-batch that fits: an out-of-memory error comes only after the
cluster has started and the data loaders have filled, once per trial and retry, and the estimate is measured to
be 4-10% above real eager use (an upper bound for compiled runs), so a refused trial would not have run.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any

from mixer_core.config import ModelConfig, RunConfig, image_shape_problem
from mixer_core.data.facts import dataset_facts, estimated_train_size
from mixer_core.data.memory import in_memory_problem
from mixer_core.memory import (
    ActivationBytes,
    MemoryEstimate,
    largest_fitting_micro_batch,
    mixer_activation_bytes,
    mixer_transient_bytes,
    training_memory,
    usable_device_bytes,
)
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
    "train.micro_batch_size",
    "model.grad_checkpointing",
    "train.epochs",
    "train.steps",
    "train.examples",
)


@dataclass(frozen=True)
class ModelCost:
    """One model at one input shape: its size, forward cost and training activations per image."""

    model: str  # a Mixer variant or a timm model name
    image_shape: tuple[int, int, int]
    num_classes: int
    params: int
    gmacs: float
    activations: dict[str, ActivationBytes]  # per precision, "bf16" and "fp32"
    transient: dict[str, float]  # bytes per image of the backward pass's short-lived buffers, per precision


@dataclass(frozen=True)
class MemoryRow:
    """What one worker of a trial holds, in GB, and whether it fits the device."""

    model: str
    micro_batch: int
    precision: str  # the trial's: bf16 on accelerators with train.bf16, else fp32
    checkpointing: bool
    weights_and_optimizer_gb: float  # parameters, gradients, optimizer state, DDP buckets, bf16 weight copies
    activations_fp32_gb: float
    activations_bf16_gb: float
    activations_fp32_checkpointed_gb: float
    activations_bf16_checkpointed_gb: float
    total_gb: float  # in the trial's precision and checkpointing, with the backward pass's transient buffers
    device_gb: float | None
    fits: bool | None  # whether total_gb fits device_gb less the runtime's reserve (None: no device declared)
    fits_micro_batch: int | None  # the largest micro-batch that fits the device (None: unknown or none)


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
    memory: dict[tuple, MemoryRow] = {}
    total_flops, unknown = 0.0, set()
    optuna = spec.searcher in OPTUNA_SEARCHERS
    for params in [{}] if optuna else trial_configs(spec):
        worst = 0.0
        for bound in _cost_bounds(spec, include_grid=optuna):
            config = build_run_config(spec, {**params, **bound})
            _check_in_memory(spec, config)
            _check_tiling(spec, config)
            cost, examples = _model_cost(spec, config, costs), estimated_examples(config)
            if cost is not None:
                row = _memory_row(spec, config, cost)
                memory.setdefault((row.model, row.micro_batch, row.checkpointing, row.precision), row)
            if cost is None or examples is None:
                unknown.add(config.data.name)
                continue
            worst = max(worst, training_flops(cost.gmacs * 1e9, examples))
        total_flops += worst * spec.num_samples
    note = "upper bound: every trial at its most costly setting" if spec.search or optuna else "all trials"
    if unknown:
        note = f"{', '.join(sorted(unknown))} data of unknown size: set data.image_size and train.steps or train.examples"
    models = [{key: value for key, value in asdict(cost).items() if key not in ("activations", "transient")}
              for cost in costs.values()]
    return {
        "name": spec.name,
        "source": spec.source,
        "searcher": spec.searcher,
        "scheduler": spec.scheduler.type,
        "trial_count": trial_count(spec),
        "axes": _describe_axes(spec),
        "models": models,
        "train_flops": None if unknown else total_flops,
        "flops_note": note,
        "memory": [asdict(row) for row in memory.values()],
    }


def memory_problems(plan: dict[str, Any]) -> list[str]:
    """One line per model of the plan whose trial does not fit its device, with the micro-batch that does."""
    problems = []
    for row in plan["memory"]:
        if row["fits"] is not False:
            continue
        fits = row["fits_micro_batch"]
        advice = (f"set train.micro_batch_size: {fits}" if fits else
                  "not even one example fits; set model.grad_checkpointing: true" if not row["checkpointing"] else
                  "not even one example fits, even with activation checkpointing")
        problems.append(
            f"{plan['source']}: {row['model']}: needs ~{row['total_gb']:.1f} GB per device at micro-batch "
            f"{row['micro_batch']} ({row['precision']}{', checkpointed' if row['checkpointing'] else ''}); "
            f"the device has {row['device_gb']:g} GB: {advice}"
        )
    return problems


def _check_tiling(spec: SweepSpec, config: RunConfig) -> None:
    try:
        config.check_batch_tiling(spec.resources.workers_per_trial)
    except ValueError as problem:
        where = _where_varied(spec, "data.batch_size")
        raise SpecError(f"{spec.source}: {where}: {problem} (resources.workers_per_trial "
                        f"{spec.resources.workers_per_trial})") from None


def _memory_row(spec: SweepSpec, config: RunConfig, cost: ModelCost) -> MemoryRow:
    """The memory of one worker of a trial of `config` (see `MemoryRow`)."""
    resources, workers = spec.resources, spec.resources.workers_per_trial
    per_worker = config.data.batch_size // workers
    micro_batch = config.train.micro_batch_size or per_worker
    precision = "bf16" if config.train.bf16 and (resources.use_gpu or resources.use_tpu) else "fp32"
    checkpointing = config.model.grad_checkpointing

    def estimate(micro: int, checkpointed: bool = checkpointing, kind: str = precision) -> MemoryEstimate:
        return training_memory(cost.params, cost.activations[kind], cost.transient[kind], micro,
                               recipe=config.train.recipe, checkpointing=checkpointed, workers=workers,
                               bf16=kind == "bf16")

    run = estimate(micro_batch)
    device_gb = resources.device_memory_gb
    usable = None if device_gb is None else usable_device_bytes(device_gb)
    return MemoryRow(
        model=cost.model,
        micro_batch=micro_batch,
        precision=precision,
        checkpointing=checkpointing,
        weights_and_optimizer_gb=run.weights_and_optimizer / 1e9,
        activations_fp32_gb=estimate(micro_batch, False, "fp32").activations / 1e9,
        activations_bf16_gb=estimate(micro_batch, False, "bf16").activations / 1e9,
        activations_fp32_checkpointed_gb=estimate(micro_batch, True, "fp32").activations / 1e9,
        activations_bf16_checkpointed_gb=estimate(micro_batch, True, "bf16").activations / 1e9,
        total_gb=run.total / 1e9,
        device_gb=device_gb,
        fits=None if usable is None else run.total <= usable,
        fits_micro_batch=None if usable is None else largest_fitting_micro_batch(estimate, usable, per_worker),
    )


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
            *_memory_lines(plan["memory"]),
        ]
    )


def _memory_lines(memory: list[dict[str, Any]]) -> list[str]:
    """The memory table: GB per worker; `act` columns are activations at the micro-batch (`ckpt`: checkpointed)."""
    if not memory:
        return []
    rows = [
        {
            "model": row["model"],
            "micro_batch": row["micro_batch"],
            "weights+grads+opt": row["weights_and_optimizer_gb"],
            "act_fp32": row["activations_fp32_gb"],
            "act_bf16": row["activations_bf16_gb"],
            "act_fp32_ckpt": row["activations_fp32_checkpointed_gb"],
            "act_bf16_ckpt": row["activations_bf16_checkpointed_gb"],
            "total": row["total_gb"],
            "as_run": f"{row['precision']}{' ckpt' if row['checkpointing'] else ''}",
            "device": row["device_gb"],
            "fits": {True: "yes", None: "-", False: f"no: micro_batch {row['fits_micro_batch'] or 0} fits"}[
                row["fits"]],
        }
        for row in memory
    ]
    return ["", "estimated memory per worker, GB (eager PyTorch; total = as run, with the backward's buffers):",
            format_table(rows)]


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
            cache[key] = _counted_cost(config.model, key[2], key[1])
        except ValueError as error:  # a setting the model cannot take (e.g. head_bias_init without a head bias)
            raise SpecError(f"{spec.source}: {_where_varied(spec, 'model.timm_model')}: {error}") from None
        return cache[key]
    variant = VARIANTS[config.model.variant]
    cache[key] = ModelCost(
        name, key[1], key[2],
        params=mixer_parameters(variant, height, channels, key[2]),
        gmacs=mixer_macs(variant, height, channels, key[2]) / 1e9,
        activations={kind: mixer_activation_bytes(variant, height, channels, key[2], bf16=kind == "bf16")
                     for kind in ("bf16", "fp32")},
        transient={kind: mixer_transient_bytes(variant, height, bf16=kind == "bf16") for kind in ("bf16", "fp32")},
    )
    return cache[key]


def _check_in_memory(spec: SweepSpec, config: RunConfig) -> None:
    """Raise `SpecError` when the trial's training data would be decoded whole into memory over the limit."""
    problem = in_memory_problem(config.data)
    if problem:
        raise SpecError(f"{spec.source}: {_where_varied(spec, 'data.path')}: {problem}")


def _counted_cost(model: ModelConfig, num_classes: int, image_shape: tuple[int, int, int]) -> ModelCost:
    """A timm baseline's size, MACs and activations, counted on the meta device (no memory, no initialisation).

    Activations are autograd's saved tensors in fp32; bf16 is taken as half of them (LayerNorm inputs kept in
    fp32 make it some 10% more for a ViT). With checkpointing, what the checkpointed forward keeps plus one
    checkpointed unit (a block or stage) recomputed; that unit's activations also stand for the transient buffers.
    """
    import torch  # only baselines need it; a plan of Mixers stays free of torch's import time

    from mixer_core.activations import saved_activation_bytes
    from mixer_core.build import build_model, forward_macs
    from mixer_core.model import count_parameters

    with torch.device("meta"):
        network = build_model(model, num_classes, image_shape)
        # Two images: BatchNorm refuses a batch of one where the feature map has shrunk to one value per channel.
        full = saved_activation_bytes(network, image_shape, batch_size=2) / 2
        network.set_grad_checkpointing(True)
        kept = saved_activation_bytes(network, image_shape, batch_size=2) / 2
        units = len(getattr(network, "blocks", getattr(network, "stages", [None])))
        fp32 = ActivationBytes(full=full, checkpointed=kept + full / units)
        return ModelCost(
            model.timm_model, image_shape, num_classes,
            params=count_parameters(network),
            gmacs=forward_macs(network, image_shape) / 1e9,
            activations={"fp32": fp32, "bf16": ActivationBytes(fp32.full / 2, fp32.checkpointed / 2)},
            transient={"fp32": full / units, "bf16": full / units / 2},
        )


def _where_varied(spec: SweepSpec, key: str) -> str:
    """The spec entry that varies `key`: `grid.<key>`, `search.<key>`, a linked `grid.<axis>`, else `base.<key>`."""
    for kind, axes in (("grid", spec.grid), ("search", spec.search)):
        if key in axes:
            return f"{kind}.{key}"
    linked = linked_settings(spec)
    return next((f"grid.{axis}" for axis in linked if any(key in s for s in linked[axis].values())), f"base.{key}")

"""The sweep spec: a YAML file naming a base run config, what to vary, how to search and on what resources.

A spec is checked completely before anything starts: unknown keys, wrong types, empty grid axes, values a
run config would refuse (the rules of `mixer_core.config`, applied to the base and to every grid value and
search bound), searcher/objective/scheduler combinations that cannot work, and (with `check_resources`)
resources the cluster lacks. Every problem becomes one line of a `SpecError` that names the spec file and the
key path (`sweeps/x.yaml: grid.train.lr[2]: ...`), with a close match for typos.

A grid axis named without dots (`recipe`) is linked: each of its values is a mapping of config key paths set
together (one model with its own learning rate), named by an optional `label:` (default: the model it sets).
Searchers choose among the labels; `build_run_config` expands a label into its settings.
"""

from __future__ import annotations

import hashlib
import json
import math
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from mixer_core import metrics
from mixer_core.config import RunConfig, StrictModel
from mixer_core.config_io import (
    ConfigError,
    apply_override,
    config_fields,
    key_path_problem,
    parse_config,
    parse_override,
    read_mapping,
    set_by_path,
)
from mixer_core.config_messages import clip, format_validation_error, shown, suggestion, validation_problems
from mixer_core.memory import ACCELERATOR_MEMORY_GB
from mixer_core.redact import redacted

SEARCHERS = ("grid", "random", "optuna-tpe", "optuna-nsga2")
OPTUNA_SEARCHERS = ("optuna-tpe", "optuna-nsga2")
STORAGE_SCHEMES = ("s3", "gs")
LABEL = "label"  # the optional key that names a linked grid value
SWEEP_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # a directory name, and safe inside MLflow filter strings
MAX_NAME_CHARS = 128  # names end up in directory names, MLflow tags and tables
MAX_DESCRIPTION_CHARS = 2000


class SpecError(ValueError):
    """A sweep spec that cannot run; one line per problem, each naming the spec file and the key path."""


class Distribution(StrictModel):
    """One Optuna search dimension: `float` (optionally `log`), `int`, or `categorical` over `choices`."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Distribution:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical distribution needs a non-empty list of choices")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("a categorical distribution takes only choices (no low/high/log/step)")
            return self
        if self.choices is not None:
            raise ValueError(f"choices belong to a categorical distribution, not to type {self.type}")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} distribution needs both low and high")
        if self.low >= self.high:
            raise ValueError(f"low must be below high, got low={self.low} high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log distribution needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined (Optuna samples log-uniformly without steps)")
        if self.type == "int" and not all(float(v).is_integer() for v in (self.low, self.high, self.step or 1)):
            raise ValueError("an int distribution needs integer low, high and step")
        return self

    def endpoint_values(self) -> list[Any]:
        """The values that bound this dimension: every choice, or low and high (as ints for `int`)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


class Objective(StrictModel):
    """A metric reported by the training loop (`mixer_core.metrics`) and whether to maximise or minimise it."""

    metric: str
    mode: Literal["max", "min"]


class Scheduler(StrictModel):
    """Trial scheduling: `fifo` runs every trial to the end; `asha` stops weak ones early.

    ASHA's `grace_period` and `max_t` count `time_attr`: training reports (one per `train.eval_every_epochs`)
    or epochs.
    """

    type: Literal["fifo", "asha"] = "fifo"
    time_attr: Literal["training_iteration", "epoch"] = "training_iteration"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1.0)
    max_t: int = Field(100, ge=1)

    @model_validator(mode="after")
    def _asha_fields_only_for_asha(self) -> Scheduler:
        asha_fields = self.model_fields_set & {"time_attr", "grace_period", "reduction_factor", "max_t"}
        if self.type == "fifo" and asha_fields:
            raise ValueError(f"{', '.join(sorted(asha_fields))}: only for type asha, not fifo")
        if self.grace_period > self.max_t:
            raise ValueError(f"grace_period {self.grace_period} exceeds max_t {self.max_t}")
        return self


class Resources(StrictModel):
    """What one trial asks of the cluster: a Ray Train worker group of `workers_per_trial` DDP workers; on TPUs
    (`use_tpu`) one worker per chip of a `tpu_topology` slice of `accelerator_type` (e.g. TPU-V6E, 2x4: 8)."""

    workers_per_trial: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)  # fractional CPUs let several trials share a laptop's cores
    gpus_per_worker: float | None = Field(None, ge=0.0)  # None: 1 with use_gpu, else 0
    max_concurrent_trials: int | None = Field(None, ge=1)
    use_tpu: bool = False
    tpu_topology: str | None = Field(None, pattern=r"^[1-9][0-9]*(x[1-9][0-9]*){1,2}$")  # chips per axis: 2x4
    # Ray's accelerator type names (`ray.util.accelerators`: A100-40G, H100, TPU-V6E, ...); the memory plan reads
    # the device memory of known ones (`mixer_core.memory.ACCELERATOR_MEMORY_GB`), or accelerator_memory_gb.
    # Only TPU trials are placed by it (Ray reserves a slice of that type); GPU trials go to any GPU.
    accelerator_type: str | None = None
    accelerator_memory_gb: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _known_device_memory(self) -> Resources:
        known = self.accelerator_type in ACCELERATOR_MEMORY_GB or self.accelerator_memory_gb
        if self.accelerator_type and not known:
            raise ValueError(
                f"accelerator_type {shown(self.accelerator_type)} has no known memory"
                f"{suggestion(self.accelerator_type, list(ACCELERATOR_MEMORY_GB))}; or set accelerator_memory_gb"
            )
        return self

    @model_validator(mode="after")
    def _tpu_slice(self) -> Resources:
        if not self.use_tpu:
            if self.tpu_topology:
                raise ValueError("tpu_topology is set but use_tpu is false")
            return self
        if self.use_gpu:
            raise ValueError("use_tpu and use_gpu are both true; a trial runs on one kind of accelerator")
        if not self.tpu_topology or not (self.accelerator_type or "").startswith("TPU-"):
            raise ValueError("use_tpu needs tpu_topology (e.g. 2x4) and accelerator_type (e.g. TPU-V6E)")
        chips = math.prod(int(side) for side in self.tpu_topology.split("x"))
        if "workers_per_trial" in self.model_fields_set and self.workers_per_trial != chips:
            raise ValueError(f"workers_per_trial is {self.workers_per_trial} but a {self.tpu_topology} slice runs one "
                             f"worker per chip: {chips} (leave workers_per_trial out)")
        self.workers_per_trial = chips
        return self

    @property
    def device_memory_gb(self) -> float | None:
        """Memory of one accelerator: `accelerator_memory_gb`, else the known figure of `accelerator_type`."""
        return self.accelerator_memory_gb or ACCELERATOR_MEMORY_GB.get(self.accelerator_type or "")

    @model_validator(mode="after")
    def _gpus_follow_use_gpu(self) -> Resources:
        if self.gpus_per_worker is None:
            self.gpus_per_worker = 1.0 if self.use_gpu else 0.0
        elif self.gpus_per_worker > 0 and not self.use_gpu:
            raise ValueError(f"gpus_per_worker is {self.gpus_per_worker} but use_gpu is false")
        elif self.use_gpu and self.gpus_per_worker == 0:
            raise ValueError("use_gpu is true but gpus_per_worker is 0")
        return self


class CheckpointPolicy(StrictModel):
    """Which checkpoints Ray keeps per trial; the score defaults to the (first) objective."""

    num_to_keep: int | None = Field(2, ge=1)  # None keeps all
    score_attribute: str | None = None
    score_order: Literal["max", "min"] | None = None  # defaults to the objective's mode for an objective metric


class SweepSpec(StrictModel):
    """A validated sweep spec. `source` is the file it came from (for messages)."""

    name: str = Field(pattern=SWEEP_NAME_PATTERN, max_length=MAX_NAME_CHARS)  # names a directory under storage_path
    experiment: str | None = Field(None, min_length=1, max_length=MAX_NAME_CHARS)  # MLflow's; defaults to `name`
    description: str = Field("", max_length=MAX_DESCRIPTION_CHARS)
    base: RunConfig = RunConfig()
    grid: dict[str, list[Any]] = {}  # config key path (or linked axis) -> values; trials are their product
    search: dict[str, Distribution] = {}  # config key path -> distribution (random and Optuna searchers)
    objective: list[Objective] = Field([Objective(metric=metrics.VAL_TOP1, mode="max")], min_length=1, max_length=2)
    searcher: Literal[SEARCHERS] = "grid"  # type: ignore[valid-type]
    scheduler: Scheduler = Scheduler()
    num_samples: int = Field(1, ge=1)  # grid/random: repeats of the grid; Optuna: trials
    seed: int = 0  # seeds the searcher
    resources: Resources = Resources()
    # Retries of a trial after an infrastructure failure (`sweeps.engine.failures`); -1 retries forever. Deterministic
    # errors are never retried.
    max_failures: int = Field(3, ge=-1)
    storage_path: str = "ray_results"  # local directory (relative to the cwd) or s3:// / gs:// URL
    # The Optuna study's database, any SQLAlchemy URL (`postgresql://...`); default: `sweeps.engine.optuna_storage_url`
    optuna_storage: str | None = Field(None, pattern=r"^[A-Za-z][A-Za-z0-9+]*://")
    checkpoint: CheckpointPolicy = CheckpointPolicy()

    _source: str = PrivateAttr("<spec>")

    @field_validator("objective", mode="before")
    @classmethod
    def _one_objective_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _defaults_from_other_fields(self) -> SweepSpec:
        if self.experiment is None:
            self.experiment = self.name
        if self.resources.use_tpu and self.base.train.device == "auto":
            self.base.train.device = "tpu"  # `auto` never means TPU (mixer_core.device); a TPU sweep does
        elif self.resources.use_tpu and self.base.train.device != "tpu":
            raise ValueError(f"base.train.device is {self.base.train.device} but resources.use_tpu is true")
        modes = {objective.metric: objective.mode for objective in self.objective}
        self.checkpoint.score_attribute = self.checkpoint.score_attribute or self.objective[0].metric
        self.checkpoint.score_order = self.checkpoint.score_order or modes.get(self.checkpoint.score_attribute)
        return self

    @property
    def source(self) -> str:
        """The spec file this spec was read from."""
        return self._source

    def resolved_storage_path(self) -> str:
        """Where Ray stores results: an absolute local path (relative ones are taken from the cwd) or a URL."""
        if "://" in self.storage_path:
            return self.storage_path.rstrip("/")
        return str(Path(self.storage_path).expanduser().resolve())


# ---------------------------------------------------------------------------------------------- loading


def load_spec(path: str | Path, overrides: list[str] = ()) -> SweepSpec:
    """Read and fully validate a sweep spec; `overrides` are `key.path=value` strings (values read as YAML).

    An override whose first part is a spec field (`num_samples=2`, `resources.workers_per_trial=2`,
    `grid.data.fraction=[0.1, 1.0]`) sets that field; any other (`train.epochs=1`, or `base.train.epochs=1`)
    sets the base config and pins the key: a grid axis or search dimension of the same key is dropped.
    """
    source = str(path)
    try:
        data = read_mapping(path, "sweep spec")
    except ConfigError as error:  # it names the file
        raise SpecError(str(error)) from None
    try:
        for override in overrides:
            _apply_override(data, override)
    except ConfigError as error:
        raise SpecError(f"{source}: {error}") from None
    return validate_spec(data, source)


def validate_spec(data: dict[str, Any], source: str = "<spec>") -> SweepSpec:
    """Validate a spec mapping (as read from YAML); raise `SpecError` listing every problem."""
    run_sections = sorted(set(data) & set(RunConfig.model_fields) - set(SweepSpec.model_fields))
    if run_sections and "base" not in data:
        raise SpecError(f"{source}: a run config ({', '.join(run_sections)} at the top), not a sweep spec: run it with "
                        f"`mixer train {source}`, or put it under `base:` of a spec")
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(format_validation_error(error, source, SweepSpec, data)) from None
    spec._source = source
    problems = _semantic_problems(spec)
    if problems:
        raise SpecError("\n".join(f"{source}: {key_path}: {message}" for key_path, message in problems))
    return spec


def _apply_override(data: dict[str, Any], override: str) -> None:
    """Set a spec field (`num_samples=2`, `grid.data.fraction=[0.1, 1.0]`), or a base key (`base.train.lr=0.1`,
    or bare `train.lr=0.1`) which pins it: a grid axis or search dimension of that key is dropped."""
    key, value = parse_override(override)
    top, _, rest = key.partition(".")
    if top in ("grid", "search") and rest:
        _section(data, top, key)[rest] = value  # the axis name itself holds dots
    elif top in SweepSpec.model_fields and top != "base":
        set_by_path(data, key, value)
    else:
        config_key = apply_override(_section(data, "base", key), override)
        for axes in (_section(data, "grid", key), _section(data, "search", key)):
            axes.pop(config_key, None)
        for axis, values in data["grid"].items():
            linked_values = values if is_linked(axis) and isinstance(values, list) else []
            for value in filter(lambda value: isinstance(value, dict), linked_values):
                value.pop(config_key, None)


def _section(data: dict[str, Any], top: str, key: str) -> dict[str, Any]:
    """The spec's mapping `top` (created when missing or null) that `--set key` changes; `ConfigError` if the spec
    holds something else there."""
    if data.get(top) is None:
        data[top] = {}
    if not isinstance(data[top], dict):
        raise ConfigError(f"--set {clip(key)}: {top} is a {type(data[top]).__name__} in the spec, not a mapping")
    return data[top]


def is_linked(axis: str) -> bool:
    """Whether a grid axis is linked (named without dots; every run-config key path has one)."""
    return "." not in axis


def linked_label(value: dict[str, Any]) -> str:
    """A linked value's name: its `label`, else the model it sets, else its settings as `key=value` text."""
    if LABEL in value:
        return str(value[LABEL])
    model = value.get("model.timm_model") or value.get("model.variant")
    return str(model) if model else ", ".join(f"{key}={setting}" for key, setting in value.items())


def linked_settings(spec: SweepSpec) -> dict[str, dict[str, dict[str, Any]]]:
    """Each linked grid axis: label -> the settings (config key path -> value) that value sets together."""
    return {
        axis: {linked_label(value): _settings(value) for value in values}
        for axis, values in spec.grid.items()
        if is_linked(axis)
    }


def _settings(value: dict[str, Any]) -> dict[str, Any]:
    return {key: setting for key, setting in value.items() if key != LABEL}


def grid_choices(spec: SweepSpec) -> dict[str, list[Any]]:
    """What a searcher chooses among on each grid axis: its values, or a linked axis's labels (plain strings,
    as Optuna's categorical choices must be)."""
    return {
        axis: [linked_label(value) for value in values] if is_linked(axis) else list(values)
        for axis, values in spec.grid.items()
    }


def build_run_config(spec: SweepSpec, params: dict[str, Any]) -> RunConfig:
    """The trial's run config: the spec's base with `params` (dotted config key path -> value, or linked axis ->
    label) set on it."""
    data = spec.base.model_dump()
    linked = linked_settings(spec)
    for key, value in params.items():
        for path, setting in (linked[key][value] if key in linked else {key: value}).items():
            set_by_path(data, path, setting)
    try:
        return parse_config(data, spec.source)
    except ConfigError as error:
        raise SpecError(str(error)) from None


def spec_hash(spec: SweepSpec | str | Path) -> str:
    """A short stable hash of the validated spec (defaults filled in), so equal sweeps hash equal. Passwords are
    left out (`mixer_core.redact`), as from the spec MLflow keeps, which `mixer sweep resume` hashes again."""
    if not isinstance(spec, SweepSpec):
        spec = load_spec(spec)
    canonical = json.dumps(redacted(spec.model_dump(mode="json")), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def check_resources(spec: SweepSpec, available: dict[str, float]) -> None:
    """Raise `SpecError` if one trial's workers cannot fit in `available` (e.g. `ray.cluster_resources()`)."""
    resources = spec.resources
    workers = resources.workers_per_trial
    problems = []
    have_cpus = float(available.get("CPU", 0))
    have_gpus = float(available.get("GPU", 0))
    if resources.use_gpu and have_gpus == 0:
        problems.append(("resources.use_gpu", "is true but the cluster has no GPUs"))
    elif workers * resources.gpus_per_worker > have_gpus:
        problems.append(
            (
                "resources.gpus_per_worker",
                f"{workers} workers x {resources.gpus_per_worker:g} GPUs need {workers * resources.gpus_per_worker:g}"
                f" GPUs; the cluster has {have_gpus:g}",
            )
        )
    if workers * resources.cpus_per_worker > have_cpus:
        problems.append(
            (
                "resources.workers_per_trial",
                f"{workers} workers x {resources.cpus_per_worker:g} CPUs need {workers * resources.cpus_per_worker:g}"
                f" CPUs; the cluster has {have_cpus:g} (lower resources.cpus_per_worker or workers_per_trial)",
            )
        )
    if problems:
        raise SpecError("\n".join(f"{spec.source}: {key_path}: {message}" for key_path, message in problems))


# ---------------------------------------------------------------------------------------------- checks


def _semantic_problems(spec: SweepSpec) -> list[tuple[str, str]]:
    """Problems pydantic cannot see: key paths into the run config, their values, and combinations."""
    problems = []
    base = spec.base.model_dump()
    for key, values in spec.grid.items():
        problems += _linked_shape_problems(key, values) if is_linked(key) else _key_problems("grid", key)
        if not values:
            problems.append((f"grid.{key}", "empty grid axis: give at least one value"))
    for key, distribution in spec.search.items():
        problems += _key_problems("search", key)
        if key in spec.grid:
            problems.append((f"search.{key}", "is also a grid axis; vary a key in grid or in search, not both"))
    problems += _linked_overlap_problems(spec)
    if not problems:  # values can only be checked against keys that exist
        for key, values in spec.grid.items():
            if is_linked(key):
                problems += _linked_value_problems(base, key, values)
            else:
                problems += _value_problems(base, key, values, lambda i, key=key: f"grid.{key}[{i}]")
        for key, distribution in spec.search.items():
            problems += _distribution_problems(base, key, distribution)
    problems += _searcher_problems(spec)
    problems += _metric_problems(spec)
    problems += _batch_split_problems(spec)
    if "://" in spec.storage_path:
        scheme = spec.storage_path.split("://", 1)[0]
        if scheme not in STORAGE_SCHEMES:
            problems.append(("storage_path", f"unsupported scheme {scheme}://; use a local path, s3:// or gs://"))
    return problems


def _key_problems(section: str, key: str) -> list[tuple[str, str]]:
    problem = key_path_problem(key)
    return [(f"{section}.{key}", problem)] if problem else []


def _value_problems(base: dict, key: str, values: list[Any], where) -> list[tuple[str, str]]:
    return [
        (where(i), message) for i, value in enumerate(values) for _, message in _settings_problems(base, {key: value})
    ]


def _settings_problems(base: dict, settings: dict[str, Any]) -> list[tuple[str, str]]:
    """(config key path, message) for each run-config rule that `base` with `settings` set on it breaks."""
    data = json.loads(json.dumps(base))  # a deep copy of plain data
    for key, value in settings.items():
        set_by_path(data, key, value)
    try:
        RunConfig.model_validate(data)
    except ValidationError as error:
        return validation_problems(error, RunConfig, data)
    return []


def _linked_shape_problems(axis: str, values: list[Any]) -> list[tuple[str, str]]:
    """A linked axis's values must be mappings of known config keys, with distinct labels."""
    if not all(isinstance(value, dict) for value in values):  # most likely a config key, misspelt
        return [(f"grid.{axis}", f"{key_path_problem(axis)} (or, for a linked axis, give mappings of config keys)")]
    problems, labels = [], {}
    for i, value in enumerate(values):
        where = f"grid.{axis}[{i}]"
        if not all(isinstance(key, str) for key in value):
            problems.append((where, f"keys are config key paths (text), got {shown(next(k for k in value if not isinstance(k, str)))}"))
            continue
        problems += [problem for key in _settings(value) for problem in _key_problems(where, key)]
        label = linked_label(value)
        if not _settings(value):
            problems.append((where, "a linked value sets at least one config key"))
        elif not isinstance(value.get(LABEL, ""), str) or not label:
            problems.append((f"{where}.{LABEL}", f"a label is a non-empty name, got {value[LABEL]!r}"))
        elif label in labels:
            problems.append((where, f"label {label!r} is grid.{axis}[{labels[label]}]'s too; give each its own label"))
        labels.setdefault(label, i)
    return problems


def _linked_overlap_problems(spec: SweepSpec) -> list[tuple[str, str]]:
    """A key set by a linked value must not be varied anywhere else too."""
    varied = {key: f"grid.{key}" for key in spec.grid if not is_linked(key)}
    varied.update({key: f"search.{key}" for key in spec.search})
    problems = []
    for axis, values in spec.grid.items():
        if not is_linked(axis):
            continue
        keys = {key for value in values if isinstance(value, dict) for key in _settings(value)}
        problems += [(f"grid.{axis}", f"sets {key}, which {varied[key]} varies too") for key in sorted(keys & {*varied})]
        varied.update({key: f"grid.{axis}" for key in keys})
    return problems


def _linked_value_problems(base: dict, axis: str, values: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Each linked value's settings, checked together on the base as one run config."""
    return [
        (f"grid.{axis}[{i}]" + (f".{path}" if path else ""), message)
        for i, value in enumerate(values)
        for path, message in _settings_problems(base, _settings(value))
    ]


def _distribution_problems(base: dict, key: str, distribution: Distribution) -> list[tuple[str, str]]:
    if distribution.type == "float" and _is_int_setting(key):
        return [(f"search.{key}.type", f"{key} is an integer setting; use type int or categorical")]
    if distribution.type == "categorical":
        return _value_problems(base, key, distribution.choices, lambda i: f"search.{key}.choices[{i}]")
    bounds = ("low", "high")
    return _value_problems(base, key, distribution.endpoint_values(), lambda i: f"search.{key}.{bounds[i]}")


def _searcher_problems(spec: SweepSpec) -> list[tuple[str, str]]:
    problems = []
    if spec.searcher == "grid" and spec.search:
        problems.append(("search", "searcher grid cannot sample distributions; use searcher random or optuna-tpe"))
    if spec.searcher in OPTUNA_SEARCHERS and not (spec.search or spec.grid):
        problems.append(("search", f"searcher {spec.searcher} needs a search dimension or grid axis to choose"))
    two_objectives = len(spec.objective) == 2
    if spec.searcher == "optuna-nsga2" and not two_objectives:
        problems.append(("searcher", "optuna-nsga2 is for two objectives; give two or use optuna-tpe"))
    if two_objectives and spec.searcher not in OPTUNA_SEARCHERS:
        problems.append(("objective", f"two objectives need searcher optuna-nsga2 or optuna-tpe, not {spec.searcher}"))
    if two_objectives and spec.scheduler.type == "asha":
        problems.append(("scheduler.type", "asha stops trials on one metric; use fifo with two objectives"))
    return problems


def _metric_problems(spec: SweepSpec) -> list[tuple[str, str]]:
    known = metrics.all_metric_names(spec.base.eval.fewshot_shots, spec.base.eval.fewshot_labels)
    problems = []
    for i, objective in enumerate(spec.objective):
        if objective.metric not in known:
            where = "objective.metric" if len(spec.objective) == 1 else f"objective[{i}].metric"
            problems.append((where, f"unknown metric {objective.metric!r}{suggestion(objective.metric, known)}"))
    if len(spec.objective) == 2 and spec.objective[0].metric == spec.objective[1].metric:
        problems.append(("objective", f"the two objectives are the same metric {spec.objective[0].metric!r}"))
    attribute = spec.checkpoint.score_attribute
    if attribute not in known and attribute not in [objective.metric for objective in spec.objective]:
        problems.append(("checkpoint.score_attribute", f"unknown metric {attribute!r}{suggestion(attribute, known)}"))
    if spec.checkpoint.score_order is None:
        problems.append(("checkpoint.score_order", f"give max or min: {attribute!r} is not an objective"))
    return problems


def _batch_split_problems(spec: SweepSpec) -> list[tuple[str, str]]:
    """Every `data.batch_size` a trial can get (base, grid, linked values, search choices and bounds) must split
    evenly between the trial's DDP workers (`mixer_core.train` gives each `batch_size / workers_per_trial`)."""
    workers = spec.resources.workers_per_trial
    return [
        (where, f"{value} does not split evenly between resources.workers_per_trial={workers} workers")
        for where, value in setting_values(spec, "data.batch_size")
        if isinstance(value, int) and value % workers
    ]


def setting_values(spec: SweepSpec, key: str) -> list[tuple[str, Any]]:
    """(spec key path, value) for every value a trial's config key `key` can take: the base's (unless a grid axis
    or search dimension replaces it), each grid and linked value, each search choice or bound."""
    varied = key in spec.grid or key in spec.search  # then the base's value is never trained with
    places = [] if varied else [(f"base.{key}", _value_at(spec.base, key))]
    for axis, values in spec.grid.items():
        if axis == key:
            places += [(f"grid.{axis}[{i}]", value) for i, value in enumerate(values)]
        elif is_linked(axis):
            places += [(f"grid.{axis}[{i}].{key}", value[key]) for i, value in enumerate(values)
                       if isinstance(value, dict) and key in value]  # not a mapping: `_linked_shape_problems` says so
    if key in spec.search:
        places += [(f"search.{key}", value) for value in spec.search[key].endpoint_values()]
    return places


def _value_at(config: RunConfig, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _is_int_setting(key: str) -> bool:
    annotation = config_fields()[key]
    return int in (typing.get_args(annotation) or (annotation,)) and float not in typing.get_args(annotation)

"""The run config: one typed object shared by `mixer train` and every sweep trial.

A config is data: a YAML mapping with the sections `model`, `data`, `train` and `eval`. Unknown keys and
wrong types are errors that name the key path, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DATASET_NAMES = (
    "digits",
    "mnist_idx",
    "cifar10",
    "cifar100",
    "mnist",
    "fashion_mnist",
    "imagefolder",
    "parquet",
    "synthetic",
)
PERMUTATIONS = ("none", "patches", "pixels_within_patches", "pixels")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """Which network to train: a Mixer variant from `mixer_core.model.VARIANTS`, or a timm baseline."""

    variant: str = "Ti/4"
    timm_model: str | None = None  # a timm model name trained instead of a Mixer (baselines, issue 6)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    stoch_depth: float = Field(0.0, ge=0.0, lt=1.0)
    gelu_approximate: Literal["none", "tanh"] = "none"
    head_bias_init: float = 0.0


class AugmentConfig(_Section):
    """Training-time augmentation (paper Appendix B); all off by default."""

    inception_crop: bool = False
    flip: bool = False
    randaugment_magnitude: int = Field(0, ge=0, le=30)  # 0 switches RandAugment off
    randaugment_layers: int = Field(2, ge=1)
    mixup: float = Field(0.0, ge=0.0)  # mixup alpha; 0 switches mixup off


class DataConfig(_Section):
    """One dataset, its nested training fraction, and the held-out splits carved from it."""

    name: Literal[DATASET_NAMES] = "digits"  # type: ignore[valid-type]
    path: str | None = None  # root folder, IDX folder, image folder, or Parquet glob/URL
    download: bool = False  # torchvision sources only
    image_size: int | None = Field(None, gt=0)  # resize to this square size; None keeps the native size
    fraction: float = Field(1.0, gt=0.0, le=1.0)  # nested subset of the training split (JFT subset study)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # "upstream validation" carved from training data
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)  # for sources without a test split of their own
    batch_size: int = Field(128, gt=0)
    num_workers: int = Field(0, ge=0)
    augment: AugmentConfig = AugmentConfig()
    permutation: Literal[PERMUTATIONS] = "none"  # type: ignore[valid-type]
    permutation_seed: int = 0
    permutation_patch_size: int | None = Field(None, gt=0)  # the model's patch size; needed by patch permutations
    synthetic_examples: int = Field(6000, gt=0)
    synthetic_classes: int = Field(10, gt=1)
    synthetic_difficulty: float = Field(0.5, ge=0.0, le=1.0)


class TrainConfig(_Section):
    """The optimisation recipe: `pretrain` (Adam, linear schedule) or `finetune` (SGD momentum, cosine)."""

    recipe: Literal["pretrain", "finetune"] = "pretrain"
    epochs: float | None = Field(10, gt=0)
    steps: int | None = Field(None, gt=0)  # budget mode: a fixed step count whatever the fraction
    examples: int | None = Field(None, gt=0)  # budget mode: a fixed number of examples seen
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0.0)
    loss: Literal["softmax", "sigmoid"] = "softmax"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = True  # autocast on CUDA; ignored on CPU
    compile: bool = False
    eval_every_epochs: float = Field(1.0, gt=0.0)
    log_every_steps: int = Field(50, gt=0)
    checkpoint_every_epochs: float | None = Field(1.0, gt=0.0)
    init_from: str | None = None  # our checkpoint or a timm Mixer state dict (fine-tuning)


class EvalConfig(_Section):
    """Evaluations run after training: top-1 always, few-shot linear when `fewshot_shots` is not empty."""

    fewshot_shots: list[int] = [1, 5, 10, 25]
    fewshot_seeds: int = Field(3, gt=0)
    fewshot_l2: float = Field(1024.0, ge=0.0)

    @field_validator("fewshot_shots")
    @classmethod
    def _positive_shots(cls, shots: list[int]) -> list[int]:
        if any(s <= 0 for s in shots):
            raise ValueError(f"shots must be positive, got {shots}")
        return shots


class RunConfig(_Section):
    """Everything one training run needs."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()


class ConfigError(ValueError):
    """A config that cannot be used; the message names the source and the key path."""


def format_validation_error(error: ValidationError, source: str, prefix: str = "") -> str:
    """One readable line per problem: `source: key.path: message`."""
    lines = []
    for problem in error.errors():
        path = ".".join(str(part) for part in (prefix, *problem["loc"]) if part != "")
        lines.append(f"{source}: {path or '<root>'}: {problem['msg']}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "<config>") -> RunConfig:
    """Validate a mapping into a `RunConfig`; raise `ConfigError` naming every wrong key path."""
    try:
        return RunConfig.model_validate(data or {})
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source)) from None


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run config and apply `key.path=value` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    data = data.get("base", data)  # a sweep spec's base config is a run config too
    for override in overrides:
        set_by_path(data, *parse_override(override))
    return parse_config(data, str(path))


def parse_override(override: str) -> tuple[str, Any]:
    """Split `train.lr=0.01` into (`train.lr`, 0.01), the value read as YAML."""
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected key.path=value")
    return key.strip(), yaml.safe_load(value)


_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:/")  # two letters at least: `C:/` is a Windows path


def resolve_paths(config: RunConfig, base_dir: str | Path) -> RunConfig:
    """`config` with its relative local paths (`data.path`, `train.init_from`) made absolute against `base_dir`.

    URIs (`s3://...`, MLflow's `runs:/...`) and absolute paths are kept. A sweep resolves against the directory
    the user ran it from, since trials run in processes whose working directory is Ray's, not the user's.
    """

    def absolute(path: str | None) -> str | None:
        if path is None or _URI_SCHEME.match(path) or Path(path).is_absolute():
            return path
        return str((Path(base_dir) / path).resolve())

    return config.model_copy(update={
        "data": config.data.model_copy(update={"path": absolute(config.data.path)}),
        "train": config.train.model_copy(update={"init_from": absolute(config.train.init_from)}),
    })


def set_by_path(data: dict[str, Any], dotted_key: str, value: Any) -> None:
    """Set `data[a][b][c] = value` for `a.b.c`, creating intermediate mappings."""
    *parents, leaf = dotted_key.split(".")
    for part in parents:
        data = data.setdefault(part, {})
        if not isinstance(data, dict):
            raise ConfigError(f"{dotted_key}: {part} is not a mapping")
    data[leaf] = value

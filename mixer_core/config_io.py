"""Reading run configs: YAML files, `--set KEY=VALUE` overrides, key paths and relative paths.

The schema and its rules are `mixer_core.config`; this module turns files and command lines into it, with
`ConfigError`s that name the file and key path (`mixer_core.config_messages`). The sweep spec reads its files
and overrides with the same functions.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mixer_core.config import RunConfig
from mixer_core.config_messages import as_model, format_validation_error, suggestion

ModelT = typing.TypeVar("ModelT", bound=BaseModel)


class ConfigError(ValueError):
    """A config that cannot be used; the message names the source and the key path."""


# ---------------------------------------------------------------------------------------------- reading


def read_mapping(path: str | Path, kind: str) -> dict[str, Any]:
    """The YAML mapping in `path`; `ConfigError` naming the file when it is missing, not YAML or not a mapping.

    `kind` names what the file should be in the message (`config`, `sweep spec`).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such {kind} file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if data is None:  # an empty file: every default
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_as(model: type[ModelT], data: Any, source: str, prefix: str = "") -> ModelT:
    """Validate `data` into `model`; raise `ConfigError` with one line per problem (see `format_validation_error`)."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source, model, data, prefix)) from None


def parse_config(data: dict[str, Any], source: str = "<config>") -> RunConfig:
    """Validate a mapping into a `RunConfig`; raise `ConfigError` naming every wrong key path."""
    return parse_as(RunConfig, data or {}, source)


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML run config, or a sweep spec's `base:`, and apply `--set` overrides (see `apply_override`)."""
    data = read_mapping(path, "config")
    data = data.get("base", data) or {}  # a sweep spec's base config is a run config too
    for override in overrides:
        try:
            apply_override(data, override)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
    return parse_config(data, str(path))


# ---------------------------------------------------------------------------------------------- overrides


def parse_override(override: str) -> tuple[str, Any]:
    """Split a `--set` value `train.lr=0.01` into (`train.lr`, 0.01), the value read as YAML."""
    key, sep, value = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected KEY=VALUE, e.g. train.lr=0.01")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {key.strip()}: the value is not valid YAML: {error}") from None


def apply_override(data: dict[str, Any], override: str) -> str:
    """Set one `--set` override on a run-config mapping and return its key path.

    The key is a run-config path (`train.lr=0.01`, `data.path=data/mnist-t10k`); `base.train.lr`, as a sweep
    spec spells it, is the same key. An unknown key is a `ConfigError` with a close match.
    """
    key, value = parse_override(override)
    config_key = key.removeprefix("base.")
    problem = key_path_problem(config_key)
    if problem:
        raise ConfigError(f"--set {key}: {problem}")
    set_by_path(data, config_key, value)
    return config_key


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


# ---------------------------------------------------------------------------------------------- key paths


def config_fields() -> dict[str, Any]:
    """Every settable run-config key path (`model.variant`, `data.augment.mixup`, `train.lr`, ...) and its type."""
    return _leaf_fields(RunConfig)


def key_path_problem(key: str) -> str | None:
    """Why `key` is not a settable run-config key path (unknown, with a close match, or a section), or None."""
    leaves = list(config_fields())
    if key in leaves:
        return None
    inside = [path for path in leaves if path.startswith(key + ".")]
    if inside:
        return f"is a section, not a setting; name one of {', '.join(inside)}"
    return f"unknown config key {key!r}{suggestion(key, leaves)}"


def _leaf_fields(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    leaves = {}
    for name, field in model.model_fields.items():
        section = as_model(field.annotation)
        if section is not None:
            leaves.update(_leaf_fields(section, f"{prefix}{name}."))
        else:
            leaves[f"{prefix}{name}"] = field.annotation
    return leaves

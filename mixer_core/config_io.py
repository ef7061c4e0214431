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
from mixer_core.config_messages import as_model, clip, format_validation_error, shown, suggestion

ModelT = typing.TypeVar("ModelT", bound=BaseModel)


class ConfigError(ValueError):
    """A config that cannot be used; the message names the source and the key path."""


# ---------------------------------------------------------------------------------------------- reading

MAX_FILE_BYTES = 1 << 20  # a spec or config is a few kB; anything this large is not one
MAX_NESTING = 32  # mapping and list levels; the deepest real config has five


class _StrictYamlLoader(yaml.SafeLoader):
    """YAML as configs use it: no aliases (an alias bomb expands tenfold per level), no duplicate keys (the last
    would silently win), at most `MAX_NESTING` levels (PyYAML recurses once per level)."""

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201 (PyYAML's signature)
        if self.check_event(yaml.AliasEvent):
            raise yaml.MarkedYAMLError(problem="aliases (*name) are not allowed; write the value out",
                                       problem_mark=self.peek_event().start_mark)
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_NESTING:
                raise yaml.MarkedYAMLError(problem=f"nested more than {MAX_NESTING} levels deep",
                                           problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN201 (PyYAML's signature)
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.MarkedYAMLError(problem=f"duplicate key {shown(key)}", problem_mark=key_node.start_mark)
            seen.add(key if isinstance(key, typing.Hashable) else id(key_node))
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """`text` read as YAML by `_StrictYamlLoader`; `ConfigError` in one line (`line L, column C: problem`)."""
    try:
        return yaml.load(text, Loader=_StrictYamlLoader)  # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"not valid YAML{where}: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"not valid YAML: {shown(str(error))}") from None


def read_mapping(path: str | Path, kind: str) -> dict[str, Any]:
    """The YAML mapping in `path`; `ConfigError` naming the file when it is missing, a directory, too large, not
    UTF-8, not YAML (see `load_yaml`) or not a mapping.

    `kind` names what the file should be in the message (`config`, `sweep spec`).
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a {kind} file")
    if not path.is_file():
        raise ConfigError(f"{path}: no such {kind} file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size} bytes; a {kind} file is at most {MAX_FILE_BYTES}")
    try:
        data = load_yaml(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                          f"{error.start}); save it as UTF-8") from None
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
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
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: base: expected a mapping (a run config), got {type(data).__name__}")
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
        raise ConfigError(f"--set {shown(override)}: expected KEY=VALUE, e.g. train.lr=0.01")
    try:
        return key.strip(), load_yaml(value)
    except ConfigError as error:
        raise ConfigError(f"--set {clip(key.strip())}: the value is {error}") from None


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
    """Set `data[a][b][c] = value` for `a.b.c`, creating intermediate mappings (and one for a null section);
    `ConfigError` when a section on the way holds something else."""
    *parents, leaf = dotted_key.split(".")
    for depth, part in enumerate(parents):
        if data.get(part) is None:
            data[part] = {}
        data = data[part]
        if not isinstance(data, dict):
            section = ".".join(parents[: depth + 1])
            raise ConfigError(f"{dotted_key}: {section} is a {type(data).__name__}, not a mapping")
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
        listed = ", ".join(inside[:4]) + (f" (or {len(inside) - 4} more)" if len(inside) > 4 else "")
        return f"is a section, not a setting; name one of {listed}"
    return f"unknown config key {shown(key)}{suggestion(key, leaves)}"


def _leaf_fields(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    leaves = {}
    for name, field in model.model_fields.items():
        section = as_model(field.annotation)
        if section is not None:
            leaves.update(_leaf_fields(section, f"{prefix}{name}."))
        else:
            leaves[f"{prefix}{name}"] = field.annotation
    return leaves

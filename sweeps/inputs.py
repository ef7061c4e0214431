"""What a sweep reads must exist before any compute is spent on it: every local `data.path` (a folder, file or
glob) of a source that reads files and does not download them, every local `train.init_from`, and every
`model.timm_model` that timm knows. `mixer sweep validate` and `mixer sweep run` check them (`check_inputs`); the
spec's own rules are `sweeps.spec`'s. Paths are taken relative to the working directory, as trials take them
(`mixer_core.config.resolve_paths`); a spec bound for a cluster names paths on its nodes, so away from them a
missing file is a warning, not a refusal.
"""

from __future__ import annotations

import glob
from pathlib import Path

from mixer_core.config import SOURCES_WITHOUT_PATH
from sweeps.spec import SpecError, SweepSpec, setting_values

_URL_PREFIXES = ("s3://", "gs://", "http://", "https://", "hf://", "runs:/")  # checked where they are read


def check_inputs(spec: SweepSpec, *, files_here: bool) -> list[str]:
    """Raise `SpecError` naming the spec file and key path of each unknown timm model and, when the trials read
    this machine's files (`files_here`: Ray started here), each missing file. Otherwise missing files may be on the
    cluster's nodes: returns their lines, for a warning."""
    models, files = _model_problems(spec), _file_problems(spec)
    problems = models + (files if files_here else [])
    if problems:
        raise SpecError("\n".join(f"{spec.source}: {where}: {message}" for where, message in problems))
    return [f"{spec.source}: {where}: {message} on this machine" for where, message in files]


def _file_problems(spec: SweepSpec) -> list[tuple[str, str]]:
    """(spec key path, message) for each missing data path or `init_from` checkpoint."""
    problems = []
    if spec.base.data.name not in SOURCES_WITHOUT_PATH and not spec.base.data.download:
        problems += [(where, f"no such file or folder: {path}")
                     for where, path in setting_values(spec, "data.path") if _missing(path)]
    problems += [(where, f"no such checkpoint: {path}")
                 for where, path in setting_values(spec, "train.init_from") if _missing(path)]
    for i, dataset in enumerate(spec.base.eval.fewshot_datasets):
        if _missing(dataset.path):
            problems.append((f"base.eval.fewshot_datasets[{i}].path", f"no such file or folder: {dataset.path}"))
    return problems


def _model_problems(spec: SweepSpec) -> list[tuple[str, str]]:
    """(spec key path, message) for each timm model name timm does not know."""
    timm_models = [(where, name) for where, name in setting_values(spec, "model.timm_model") if name]
    if not timm_models:
        return []
    import timm  # about a second: only for specs that train timm models

    return [(where, f"timm has no model {name!r} (see timm.list_models())")
            for where, name in timm_models if not timm.is_model(name)]


def _missing(path: str | None) -> bool:
    if not path or path.startswith(_URL_PREFIXES):
        return False
    return not glob.glob(str(Path(path).expanduser())) if glob.has_magic(path) else not Path(path).expanduser().exists()

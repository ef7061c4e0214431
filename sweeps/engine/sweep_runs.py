"""Which run of a sweep is which: each `mixer sweep run` gets a short id and its own Tune folder
(`<storage_path>/<name>-<id>`); a second run of a name is refused while one is running; and `mixer sweep resume`
restores only from the folder the sweep's own spec names, only when that spec still validates as it did.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from sweeps.spec import SweepSpec, spec_hash, validate_spec
from sweeps.tracking import queries, schema

_SWEEP_ID = re.compile(r"^[0-9a-f]{8}$")


class SweepConflict(RuntimeError):
    """A sweep of the same name is running; the message names it."""


def new_sweep_id() -> str:
    """A fresh short id for one run of a sweep."""
    return uuid.uuid4().hex[:8]


def experiment_dir(spec: SweepSpec, sweep_id: str) -> str:
    """Where Tune keeps one run's state: `<storage_path>/<name>-<id>` (an absolute path or a URL)."""
    return f"{spec.resolved_storage_path()}/{spec.name}-{sweep_id}"


def sweep_id_of(directory: str) -> str:
    """The sweep id in a Tune folder named by `experiment_dir`."""
    return directory.rsplit("-", 1)[-1]


def refuse_if_running(uri: str, name: str) -> None:
    """Raise `SweepConflict` naming the running sweep called `name`, if there is one in the MLflow store."""
    running = queries.find_sweep_run(uri, name, status="RUNNING")
    if running is None or running.data.tags.get(schema.TAG_SWEEP) != name:
        return
    sweep_id = running.data.tags.get(schema.TAG_SWEEP_ID, "?")
    raise SweepConflict(
        f"sweep {name} is already running (id {sweep_id}, MLflow run {running.info.run_id}); wait for it, stop it"
        f" with Ctrl-C, or give this one another name (--set name=...). If its driver died, finish it with:"
        f" mixer sweep resume {sweep_id}"
    )


def resumable(uri: str, parent: Any) -> tuple[SweepSpec, str]:
    """The spec and Tune folder of the sweep whose parent run is `parent`.

    The folder is derived from the recorded spec's `storage_path`, name and the run's sweep id, never read from
    a free-form tag; the spec must validate now exactly as it did when the sweep started. Raises `LookupError`
    saying what differs otherwise.
    """
    tags = parent.data.tags
    name, sweep_id = tags.get(schema.TAG_SWEEP), tags.get(schema.TAG_SWEEP_ID, "")
    if not _SWEEP_ID.match(sweep_id):
        raise LookupError(f"sweep {name}: MLflow run {parent.info.run_id} has no valid sweep id ({sweep_id!r})")
    source = f"sweep {name} {sweep_id} (MLflow run {parent.info.run_id})"
    spec = validate_spec(queries.load_spec_artifact(uri, parent.info.run_id), source)
    if spec.name != name:
        raise LookupError(f"{source}: its recorded spec names another sweep, {spec.name!r}")
    if spec_hash(spec) != tags.get(schema.TAG_SPEC_HASH):
        recorded = queries.load_spec_artifact(uri, parent.info.run_id, schema.VALIDATED_SPEC_ARTIFACT)
        differences = "; ".join(spec_changes(recorded, spec.model_dump(mode="json"))) or "its spec hash differs"
        raise LookupError(
            f"{source}: its spec validates differently now than when it started (defaults changed in this version"
            f" of mixer-sweeps?), so its trials would not continue as they began: {differences}"
        )
    return spec, experiment_dir(spec, sweep_id)


def spec_changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key: recorded -> current` for every spec key whose value differs (dotted paths)."""
    then, now = schema.flatten(recorded), schema.flatten(current)
    return [
        f"{key}: {then.get(key, '(unset)')!r} -> {now.get(key, '(unset)')!r}"
        for key in sorted(then.keys() | now.keys())
        if then.get(key) != now.get(key)
    ]

"""Weights kept as MLflow artifacts: a trial's final checkpoint logged on its sweep's run, and a
`train.init_from` given as `runs:/RUN_ID/PATH` fetched back to a local directory before training starts.

`mixer_core` reads local paths only; this module is the border. MLflow and pyarrow are imported inside the
functions: `mixer train` loads this module for every run, and only a run that starts from an MLflow artifact
pays the seconds MLflow takes to import.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mixer_core.config import RunConfig

RUN_URI_PREFIX = "runs:/"
BEST_CHECKPOINT_ARTIFACT = "best_checkpoint"


def log_checkpoint(uri: str, run_id: str, checkpoint: str, artifact_path: str = BEST_CHECKPOINT_ARTIFACT) -> str:
    """Log the checkpoint directory `checkpoint` (a local path, or an `s3://`/`gs://` URI from a cluster's
    storage) under `artifact_path` of run `run_id`; returns its `runs:/RUN_ID/PATH` URI."""
    import pyarrow.fs

    from sweeps.tracking.store import RetryingMlflowClient

    client = RetryingMlflowClient(uri)
    if "://" in checkpoint:
        with tempfile.TemporaryDirectory(prefix="mixer-checkpoint-") as local:
            pyarrow.fs.copy_files(checkpoint, local)
            client.log_artifacts(run_id, local, artifact_path)
    else:
        client.log_artifacts(run_id, checkpoint, artifact_path)
    return f"{RUN_URI_PREFIX}{run_id}/{artifact_path}"


def fetch_init_from(config: RunConfig, directory: Path, uri: str | None = None) -> RunConfig:
    """`config` with a `runs:/RUN_ID/PATH` `train.init_from` downloaded under `directory` from the MLflow store
    `uri` (default: `sweeps.tracking.store.tracking_uri()`) and replaced by the local path; any other config as is.

    Raises `FileNotFoundError` naming the URI when the store has no such run or artifact, `ConnectionError` when
    the store cannot be reached (an infrastructure failure, `sweeps.engine.failures`).
    """
    source = config.train.init_from
    if not (source and source.startswith(RUN_URI_PREFIX)):
        return config
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    from sweeps.tracking.store import is_unavailable, tracking_uri

    try:
        local = download_artifacts(artifact_uri=source, dst_path=str(directory), tracking_uri=uri or tracking_uri())
    except (MlflowException, OSError) as error:
        if is_unavailable(error):  # the store, not the artifact, is missing: a retry may find it
            raise ConnectionError(f"train.init_from {source}: MLflow store unavailable: {error}") from None
        raise FileNotFoundError(f"train.init_from {source}: {error}") from None
    return config.model_copy(update={"train": config.train.model_copy(update={"init_from": local})})

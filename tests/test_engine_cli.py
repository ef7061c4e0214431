"""`mixer sweep` on bad specs: exit status 2, one message naming the file and the key path, and nothing
started: no Ray, no MLflow store, no results directory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mixer_cli import main

# (what is wrong, spec fields / --set overrides, the key path the message must name)
MISTAKES = [
    ("typo in a top-level key", {"serach": {}}, [], "serach"),
    ("wrong type", {"num_samples": "two"}, [], "num_samples"),
    ("empty grid axis", {"grid": {"train.lr": []}}, [], "grid.train.lr"),
    ("fraction above 1", {"grid": {"data.fraction": [0.5, 1.5]}}, [], "grid.data.fraction[1]"),
    ("unknown variant", {"base": {"model": {"variant": "Q/4"}}}, [], "base.model.variant"),
    ("unknown dataset", {"base": {"data": {"name": "imagenet21k"}}}, [], "base.data.name"),
    ("unknown config key in a grid", {"grid": {"train.lrr": [0.1]}}, [], "grid.train.lrr"),
    ("unknown searcher", {"searcher": "bayes"}, [], "searcher"),
    ("unknown objective metric", {"objective": {"metric": "val_acc", "mode": "max"}}, [], "objective.metric"),
    ("log distribution from 0", {"searcher": "optuna-tpe",
                                 "search": {"train.lr": {"type": "float", "low": 0, "high": 1, "log": True}}},
     [], "search.train.lr"),
    ("grace period beyond max_t", {"scheduler": {"type": "asha", "grace_period": 5, "max_t": 2}}, [], "scheduler"),
    ("unsupported storage", {"storage_path": "ftp://host/results"}, [], "storage_path"),
    ("more workers than CPUs", {"resources": {"workers_per_trial": 10000}}, [], "resources.workers_per_trial"),
    ("GPU on a machine without one", {"resources": {"use_gpu": True}}, [], "resources.use_gpu"),
    ("bad override value", {}, ["--set", "train.epochs=-1"], "train.epochs"),
    ("override of an unknown key", {}, ["--set", "train.epoch=1"], "train.epoch"),
]


@pytest.mark.parametrize(("mistake", "fields", "overrides", "key_path"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_bad_spec_exits_2_naming_file_and_key(mistake, fields, overrides, key_path, tiny_spec, mlflow_store,
                                               tmp_path, capsys):
    spec = tiny_spec("bad", **fields)
    status = main(["sweep", "run", str(spec), *overrides])
    captured = capsys.readouterr()
    assert status == 2, mistake
    assert captured.out == ""
    assert str(spec) in captured.err and key_path in captured.err, captured.err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


def test_bad_spec_starts_no_ray_and_validate_agrees(tiny_spec, mlflow_store, tmp_path):
    spec = tiny_spec("bad", grid={"data.fraction": [0.0]})
    probe = (
        "import sys; from mixer_cli import main; "
        f"status = main(['sweep', 'run', {str(spec)!r}, '--json']); print(status, 'ray' in sys.modules)"
    )
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert ran.stdout.split() == ["2", "False"], ran.stderr
    assert "grid.data.fraction[0]" in ran.stderr
    assert main(["sweep", "validate", str(spec)]) == 2
    assert not (tmp_path / "mlflow.db").exists()


def test_a_sweeps_driver_imports_no_torch(tiny_spec, mlflow_store):
    """The driver plans, searches and reads results without torch: Tune's TensorBoard logger, which would
    import it (1.8 s before the first trial on 2 cores), is off. The trials import torch in their own process."""
    spec = tiny_spec("driver-imports", base={"train": {"epochs": 1}})
    probe = (
        "import sys; from mixer_cli import main; "
        f"status = main(['sweep', 'run', {str(spec)!r}, '--json']); "
        "print(status, sorted(m for m in ('torch', 'timm', 'tensorboardX') if m in sys.modules))"
    )
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert ran.stdout.splitlines()[-1] == "0 []", ran.stderr[-3000:]


def test_a_trial_process_imports_no_mlflow():
    """What a trial's process imports to train (both launchers, streaming included) leaves MLflow to the sweep's
    writer (`sweeps.tracking.writer`), so no trial pays for importing it."""
    probe = (
        "import sys, sweeps.engine.trial, sweeps.engine.worker, sweeps.stream, mixer_core.train, mixer_core.data; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))"
    )
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    assert ran.stdout.strip() == "[]"


def test_validate_prints_the_plan_as_json(tiny_spec, capsys):
    spec = tiny_spec("plan", grid={"train.lr": [0.001, 0.003], "data.fraction": [0.5, 1.0]})
    assert main(["sweep", "validate", str(spec), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["trial_count"] == 4
    assert [model["model"] for model in plan["models"]] == ["Ti/4"]


def test_resume_of_an_unknown_sweep_exits_2(mlflow_store, capsys):
    assert main(["sweep", "resume", "never-ran"]) == 2
    assert "never-ran" in capsys.readouterr().err

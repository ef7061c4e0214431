"""What every `mixer` command shares: `--version`, stdout that holds only the JSON document with `--json`, and one
message with exit status 2 for a sweep that does not exist."""

from __future__ import annotations

from importlib.metadata import version

import json
import threading

import pytest

from mixer_cli import main
from mixer_cli.output import emit_json, json_stdout


def test_version_prints_the_installed_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"mixer {version('mixer-sweeps')}\n"


def test_with_json_stdout_holds_the_document_alone(capsys):
    # Ray prints its workers' error messages on sys.stdout from a thread of its own, at any time.
    with json_stdout():
        ray_message = threading.Thread(target=print, args=("(raylet) A worker died or was killed",))
        ray_message.start()
        ray_message.join()
        emit_json({"trials": []})
    printed = capsys.readouterr()
    assert json.loads(printed.out) == {"trials": []}
    assert "A worker died" in printed.err
    print("after")  # stdout is given back
    assert capsys.readouterr().out == "after\n"


@pytest.mark.parametrize("command", [["sweep", "resume"], ["report"]], ids=" ".join)
def test_no_such_sweep_is_one_message_and_exit_2_in_every_command(mlflow_store, capsys, command):
    from mlflow import MlflowClient

    MlflowClient(mlflow_store).search_experiments()  # the store exists, and holds no sweep
    assert main([*command, "never-ran"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mixer ")]
    assert len(errors) == 1 and errors[0].startswith(f"mixer {' '.join(command)}: ") and "'never-ran'" in errors[0]

"""`mixer train` as a user runs it: the shipped configs, --set, --json, --resume, and config errors."""

from __future__ import annotations

import json
from pathlib import Path

from mixer_cli import main
from mixer_core import metrics as m
from mixer_core.config_io import load_config

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--set", "train.epochs=1", "--set", "eval.fewshot_shots=[1]", "--set", "eval.fewshot_seeds=1"]


def test_train_digits_json_prints_one_document_and_resume_finishes_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert main(["train", "sweeps/train_digits.yaml", *QUICK, "--json", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    final = json.loads(captured.out)
    assert final[m.STEP] == 1294 // 64 and final[m.TEST_TOP1] > 0.5 and m.fewshot_top1(1) in final
    assert "Ti/4" in captured.err and "100%" in captured.err  # the progress bar is on stderr

    # Resuming a finished run evaluates its final checkpoint again; the table names every metric.
    assert main(["train", "sweeps/train_digits.yaml", *QUICK, "--resume", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert m.TEST_TOP1 in table and f"{final[m.TEST_TOP1]:.4g}" in table


def test_bad_override_is_one_message_naming_the_key(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert main(["train", "sweeps/train_digits.yaml", "--set", "train.lr=-1", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "sweeps/train_digits.yaml: train.lr:" in captured.err


def test_train_mnist_config_reads_the_shipped_mnist_files_from_the_repo_root(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    config = load_config("sweeps/train_mnist.yaml")
    assert config.model.variant == "Ti/7" and config.data.name == "mnist_idx"
    budget = ["--set", "train.steps=3", "--set", "eval.fewshot_shots=[5]", "--no-checkpoints", "--json",
              "--set", "eval.fewshot_datasets=[{name: digits, label: digits}]", "--set", "eval.fewshot_seeds=1"]
    assert main(["train", "sweeps/train_mnist.yaml", *budget]) == 0
    final = json.loads(capsys.readouterr().out)
    assert final[m.TRAIN_SIZE] > 6000 and final[m.EXAMPLES_SEEN] == 3 * 128
    # downstream 5-shot on digits (resized to MNIST's 28x28), at the end and at the best upstream validation
    assert final[m.BEST_STEP] == 3 and final[m.best(m.fewshot_top1(5, "digits"))] == final[m.fewshot_top1(5, "digits")]


def test_an_unknown_variant_is_one_message_with_a_close_match_and_exit_2(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert main(["train", "sweeps/train_digits.yaml", "--set", "model.variant=Ti/5"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "mixer train: sweeps/train_digits.yaml: model.variant: unknown Mixer variant 'Ti/5'; did you mean 'Ti/4'?\n"
    )


def test_steps_and_examples_together_are_refused_before_training(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert main(["train", "sweeps/train_digits.yaml", "--set", "train.steps=5", "--set", "train.examples=640"]) == 2
    assert "sweeps/train_digits.yaml: train: steps and examples are both set" in capsys.readouterr().err


def test_an_unknown_key_suggests_the_key_path(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert main(["train", "sweeps/train_digits.yaml", "--set", "trian.lr=0.1"]) == 2
    assert "--set trian.lr: unknown config key 'trian.lr'; did you mean 'train.lr'?" in capsys.readouterr().err


def test_base_prefixed_keys_set_the_run_config_as_in_a_sweep(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    budget = ["--set", "base.train.steps=2", "--set", "base.eval.fewshot_shots=[]", "--no-checkpoints", "--json"]
    assert main(["train", "sweeps/quickstart.yaml", *budget]) == 0
    assert json.loads(capsys.readouterr().out)[m.STEP] == 2

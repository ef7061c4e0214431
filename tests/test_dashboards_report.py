"""`mixer report` against a real MLflow sqlite store holding sweeps in the sweep engine's schema."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from dashboards_fixtures import TRUE_LAWS, shared_store
from mlflow import MlflowClient

from dashboards.checkpoints import CheckpointError, load_trial_mixer
from dashboards.runs import SweepNotFound, Trial, load_sweep
from mixer_cli import main
from mixer_core.checkpoint import load_checkpoint

MLFLOW_URL = "https://mlflow.example.org"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, Path]:
    return shared_store(tmp_path_factory)


def run_report(capsys, uri: str, sweep: str, out: Path, *extra: str) -> tuple[int, dict | None, str]:
    status = main(["report", sweep, "--tracking-uri", uri, "--out", str(out), "--bootstrap", "60",
                   "--mlflow-url", MLFLOW_URL, "--json", *extra])
    captured = capsys.readouterr()
    return status, json.loads(captured.out) if status == 0 else None, captured.err


def test_load_sweep_reads_every_trial_by_the_sweep_tag(store, tmp_path):
    uri, _ = store
    sweep = load_sweep("fractions", uri=uri)
    assert len(sweep.trials) == 9
    assert sorted(t.status for t in sweep.trials).count("FAILED") == 1
    finished = [t for t in sweep.trials if t.status == "FINISHED"]
    assert {t.model for t in finished} == set(TRUE_LAWS)
    assert sorted(t.data_fraction for t in finished if t.model == "Ti/4") == [0.125, 0.25, 0.5, 1.0]
    assert all(0.7 < t.metric("test_top1") < 1 and t.metric("train_size") > 0 for t in finished)
    assert not sweep.has_permutation_axis and load_sweep("perm", uri=uri).has_permutation_axis

    with pytest.raises(SweepNotFound, match="sweeps recorded there: fractions, perm, sizes, sparse"):
        load_sweep("nope", uri=uri)
    missing_store = tmp_path / "elsewhere" / "mlflow.db"
    with pytest.raises(SweepNotFound, match="no MLflow store here"):
        load_sweep("fractions", uri=f"sqlite:///{missing_store}")
    assert not missing_store.exists()


def test_report_fits_both_models_writes_figures_and_logs_on_the_parent_run(store, capsys, tmp_path):
    uri, _ = store
    status, document, progress = run_report(capsys, uri, "fractions", tmp_path / "report")
    assert status == 0 and "[mixer report] fitting test_top1 against training examples" in progress
    assert document["metrics"] == ["test_top1", "fewshot_5shot_top1"]

    fits = {(f["series"], f["metric"], f["x"]): f for f in document["fits"]}
    for model, (_, true_b, true_c) in TRUE_LAWS.items():
        for x in ("train_size", "train_flops"):
            fit = fits[(model, "test_top1", x)]
            low, high = fit["intervals"]["b"]
            assert fit["n_points"] == 4 and low <= fit["parameters"]["b"] <= high
        assert 1 - fits[(model, "test_top1", "train_size")]["parameters"]["c"] > 0.85
    assert any("trial_008 (FAILED)" in note for note in document["notes"])

    names = {Path(path).name for path in document["figures"]}
    assert names == {
        "scaling_test_top1_vs_train_size.png", "scaling_test_top1_vs_train_flops.png",
        "scaling_fewshot_5shot_top1_vs_train_size.png", "scaling_fewshot_5shot_top1_vs_train_flops.png",
        "cost_test_top1.png", "stem_filters.png", "token_mixing.png",
    }
    assert all(Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for path in document["figures"])
    assert document["weights_trial"] == "trial_003"  # the best Ti/4 trial: the largest fraction

    html = Path(document["report"]).read_text()
    assert html.count("data:image/png;base64,") == len(names)
    sweep = load_sweep("fractions", uri=uri)
    assert f'{MLFLOW_URL}/#/experiments/{sweep.experiment_id}/runs/{sweep.trials[0].run_id}' in html

    logged = {item.path for item in MlflowClient(uri).list_artifacts(document["parent_run_id"], "report")}
    assert {"report/report.html", "report/summary.json", "report/figures"} <= logged


def test_report_says_which_series_have_too_few_points(store, capsys, tmp_path):
    uri, _ = store
    status, document, _ = run_report(capsys, uri, "sparse", tmp_path / "sparse", "--no-log")
    assert status == 0
    assert {f["series"] for f in document["fits"]} == {"Ti/4"}
    assert "resnet18, test_top1 vs train_size: 2 distinct train_size value(s), but E = a·x^(−b) + c has 3 " \
           "parameters and, with one more to measure the noise, needs 4; not fitted" in document["notes"]


def test_permutation_axis_draws_the_permutation_study(store, capsys, tmp_path):
    uri, _ = store
    status, document, _ = run_report(capsys, uri, "perm", tmp_path / "perm", "--no-log", "--metric", "test_top1")
    assert status == 0 and document["metrics"] == ["test_top1"]
    assert "permutation_study.png" in {Path(path).name for path in document["figures"]}
    assert {row["permutation"] for row in document["trials"]} == {"none", "patches", "pixels"}


def test_report_defaults_to_the_best_upstream_validation_metrics_and_says_so(store, capsys, tmp_path):
    from dashboards.analysis import BEST_NOTE

    uri, _ = store
    status, document, _ = run_report(capsys, uri, "transfer", tmp_path / "transfer", "--no-log")
    # downstream 5-shot first; the pre-training set's own 5-shot (logged without best/ here) comes last
    assert status == 0 and document["metrics"] == ["best/test_top1", "best/fewshot_digits_5shot_top1",
                                                   "fewshot_5shot_top1"]
    assert BEST_NOTE in document["notes"]
    assert {f["metric"] for f in document["fits"]} == set(document["metrics"])
    html = Path(document["report"]).read_text()
    assert "digits 5-shot linear top-1 (best val)" in html
    assert "digits 5-shot linear top-1 during training" in html  # the permutation study draws few-shot curves
    status, document, _ = run_report(capsys, uri, "transfer", tmp_path / "final", "--no-log", "--metric", "test_top1")
    assert document["metrics"] == ["test_top1"] and BEST_NOTE not in document["notes"]


def test_unknown_sweep_exits_2_and_unknown_metric_exits_1_with_one_message(store, capsys, tmp_path):
    uri, _ = store
    status, _, error = run_report(capsys, uri, "missing", tmp_path / "x")
    assert status == 2 and "no sweep run tagged mixer.sweep='missing'" in error and "fractions" in error
    status, _, error = run_report(capsys, uri, "fractions", tmp_path / "x", "--metric", "fewshot_10shot_top1")
    assert status == 1 and "no finished trial of this sweep logged fewshot_10shot_top1" in error


def test_checkpoint_restores_the_trained_mixer(store, tmp_path):
    uri, root = store
    trial = next(t for t in load_sweep("fractions", uri=uri).trials if t.trial_id == "trial_003")
    model = load_trial_mixer(trial)
    saved = load_checkpoint(trial.checkpoint)["model"]
    assert model.grid_size == 7 and model.in_chans == 1 and model.num_classes == 10
    assert torch.equal(model.stem.weight, saved["stem.weight"])
    assert torch.equal(model.blocks[2].mlp_tokens.fc1.weight, saved["blocks.2.mlp_tokens.fc1.weight"])

    bare = tmp_path / "bare.pt"  # a bare state dict, as exported weights come
    torch.save(saved, bare)
    assert torch.equal(load_trial_mixer(_with_checkpoint(trial, bare)).head.weight, saved["head.weight"])

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"{broken}: cannot be read as a torch checkpoint"):
        load_trial_mixer(_with_checkpoint(trial, broken))


def _with_checkpoint(trial: Trial, path: Path) -> Trial:
    return replace(trial, checkpoint=str(path))


def test_token_mixing_units_are_sorted_by_frequency_and_paired_with_their_inverse_phase():
    import numpy as np

    from dashboards.figures import paired_frequency_order

    grid = np.arange(8)
    wave = lambda cycles, phase=0.0: np.tile(np.cos(2 * np.pi * cycles * grid / 8 + phase), (8, 1))  # noqa: E731
    # shuffled: 3, 1 and 2 cycles across the grid, each with its inverse-phase twin
    tiles = np.stack([wave(3), -wave(1), wave(2), wave(1), -wave(3), -wave(2)])
    order = paired_frequency_order(tiles).tolist()
    assert [set(order[i : i + 2]) for i in (0, 2, 4)] == [{1, 3}, {2, 5}, {0, 4}]
    shifted = np.stack([wave(1), wave(1, np.pi / 2), -wave(1)])  # a quarter-phase shift is no inverse
    assert paired_frequency_order(shifted).tolist()[:2] == [0, 2]


def test_a_fit_with_one_residual_degree_of_freedom_draws_no_band_and_says_why(store, capsys, tmp_path):
    # Four fractions and three parameters leave one residual degree of freedom: every interval is ~30 decades.
    uri, _ = store
    status = main(["report", "fractions", "--tracking-uri", uri, "--out", str(tmp_path / "report"),
                   "--bootstrap", "40", "--no-log"])
    printed = capsys.readouterr().out
    assert status == 0 and "not identified" in printed and "e+20" not in printed
    html = (tmp_path / "report" / "report.html").read_text()
    assert "<h1>Sweep fractions</h1>" in html
    assert "no band around Ti/4, resnet18 (Ti/4: 4 points for 3 parameters leave 1 residual degree(s) of freedom" \
        in html
    document = json.loads((tmp_path / "report" / "summary.json").read_text())
    fit = next(f for f in document["fits"] if f["series"] == "Ti/4" and f["x"] == "train_size")
    assert fit["residual_dof"] == 1 and not any(fit["identified"].values())

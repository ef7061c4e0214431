"""`mixer report --holdout` and `mixer predict` against a real MLflow store: held-back points predicted with
intervals, fitted parameters logged on the sweep run, predictions at sizes the sweep never ran."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dashboards_fixtures import FAMILY_PARAMS, FULL_TRAIN_SIZE, TRUE_JOINT_LAW, shared_store, true_error
from mlflow import MlflowClient
from test_dashboards_report import run_report

from mixer_cli import main


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, Path]:
    return shared_store(tmp_path_factory)


def run_predict(capsys, uri: str, *args: str) -> tuple[int, str, str]:
    status = main(["predict", *args, "--tracking-uri", uri, "--bootstrap", "60"])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_holdout_largest_predicts_the_largest_fraction_within_its_interval(store, capsys, tmp_path):
    uri, _ = store
    status, document, _ = run_report(capsys, uri, "sizes", tmp_path / "report", "--holdout", "largest",
                                     "--metric", "test_top1")
    assert status == 0
    predictions = document["predictions"]
    # 5 series (4 Mixer sizes and resnet18) × 2 seeds at the held-back fraction.
    assert len(predictions) == 10 and {p["x"] for p in predictions} == {FULL_TRAIN_SIZE}
    for p in predictions:
        low, high = p["interval"]
        assert p["metric"] == "test_top1" and low < p["predicted"] < high
        assert p["covered"] == (low <= p["measured"] <= high)
        assert p["error_points"] == pytest.approx(100 * (p["predicted"] - p["measured"]))
        assert abs(100 * (p["predicted"] - (1 - true_error(p["series"], FULL_TRAIN_SIZE)))) < 1.5
    assert sum(p["covered"] for p in predictions) >= 8
    figure = tmp_path / "report" / "figures" / "holdout_largest_test_top1.png"
    assert str(figure) in document["figures"] and figure.read_bytes()[:4] == b"\x89PNG"
    assert 'id="predictions"' in Path(document["report"]).read_text()

    logged = MlflowClient(uri).get_run(document["parent_run_id"]).data.metrics
    assert logged["scaling/test_top1/train_size/resnet18/b"] == pytest.approx(
        next(f for f in document["fits"] if f["series"] == "resnet18" and f["x"] == "train_size")["parameters"]["b"])
    assert logged["scaling/test_top1/params_and_train_size/Mixer/beta_low"] < TRUE_JOINT_LAW["beta"]
    assert logged[f"holdout/test_top1/resnet18/at_{FULL_TRAIN_SIZE}/covered"] in (0.0, 1.0)


def test_holdout_largest_model_predicts_it_from_the_joint_law_of_the_smaller_ones(store, capsys, tmp_path):
    uri, _ = store
    status, document, _ = run_report(capsys, uri, "sizes", tmp_path / "report", "--holdout", "largest-model",
                                     "--metric", "test_top1", "--no-log")
    assert status == 0
    predictions = document["predictions"]
    assert {p["series"] for p in predictions} == {"Mixer"} and len(predictions) == 10
    assert {p["params"] for p in predictions} == {FAMILY_PARAMS["L/4"]}
    assert sum(p["covered"] for p in predictions) >= 8
    assert "holdout largest-model: resnet18: 1 distinct model size, nothing left to fit once the largest is held " \
           "back" in document["notes"]


def test_holdout_on_best_metrics_names_figures_without_their_slash(store, capsys, tmp_path):
    # `best/test_top1` once reached the held-back figure's file name as a folder: FileNotFoundError.
    uri, _ = store
    out = tmp_path / "report"
    status = main(["report", "transfer_five", "--holdout", "largest", "--tracking-uri", uri, "--out", str(out),
                   "--bootstrap", "40", "--no-log"])
    printed = capsys.readouterr().out
    assert status == 0
    figures = {path.name for path in (out / "figures").iterdir()}
    assert {"holdout_largest_best_test_top1.png", "holdout_largest_best_fewshot_digits_5shot_top1.png"} <= figures
    assert "held back (largest)" in printed and "best/test_top1" in printed


def test_holdout_refuses_a_series_left_with_too_few_fractions(store, capsys, tmp_path):
    uri, _ = store
    status, document, _ = run_report(capsys, uri, "fractions", tmp_path / "report", "--holdout", "largest", "--no-log")
    assert status == 0 and document["predictions"] == []
    notes = " ".join(document["notes"])
    assert "holdout largest: Ti/4, test_top1 vs train_size: 3 distinct train_size value(s)" in notes


def test_predict_reads_every_model_law_at_a_size_never_run_and_warns_past_ten_times(store, capsys):
    uri, _ = store
    status, out, _ = run_predict(capsys, uri, "sizes", "--examples", "16000", "--metric", "test_top1", "--json")
    assert status == 0
    by_series = {p["series"]: p for p in json.loads(out)}
    assert set(by_series) == {*FAMILY_PARAMS, "resnet18"}
    for series, p in by_series.items():
        low, high = p["interval"]
        assert low < p["predicted"] < high and p["extrapolation"] == pytest.approx(2.0) and p["warning"] is None
        assert abs(p["predicted"] - true_error(series, 16000)) < 0.02
        assert p["predicted_accuracy"] == pytest.approx(1 - p["predicted"])
    status, out, _ = run_predict(capsys, uri, "sizes", "--examples", "3e5", "--metric", "test_top1")
    assert status == 0 and "37.5x" in out and "beyond the largest size fitted" in out
    assert "prediction interval for one run" in out


def test_predict_with_params_uses_the_joint_law_and_says_which_families_have_none(store, capsys):
    uri, _ = store
    status, out, err = run_predict(capsys, uri, "sizes", "--examples", "8000", "--params", "1e8",
                                   "--metric", "test_top1", "--json")
    assert status == 0
    (mixer,) = json.loads(out)
    law = TRUE_JOINT_LAW
    truth = law["E_inf"] + law["A"] * 1e8 ** -law["alpha"] + law["B"] * 8000 ** -law["beta"]
    assert mixer["series"] == "Mixer" and mixer["interval"][0] < truth < mixer["interval"][1]
    assert mixer["extrapolation"] == pytest.approx(1e8 / FAMILY_PARAMS["L/4"])
    assert "1 of 2 families have none" in err
    status, _, err = run_predict(capsys, uri, "perm", "--examples", "8000", "--params", "1e8")
    assert status == 1 and "no joint law of sweep 'perm' could be fitted" in err


def test_predicted_intervals_stay_within_what_an_error_rate_can_be(store, capsys):
    # Far below the fitted sizes the law's band is loose; an error rate still lies in [0, 1].
    uri, _ = store
    status, out, _ = run_predict(capsys, uri, "sizes", "--examples", "20", "--metric", "test_top1", "--json")
    assert status == 0
    for p in json.loads(out):
        assert 0 <= p["interval"][0] <= p["interval"][1] <= 1
        assert 0 <= p["accuracy_interval"][0] <= p["accuracy_interval"][1] <= 1

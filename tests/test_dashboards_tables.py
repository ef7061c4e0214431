"""`mixer fit TABLE` and `mixer predict TABLE --flops` on real files (CSV, Parquet, JSON lines) of runs drawn from
a known joint loss law, and `mixer predict SWEEP --flops` on a real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dashboards.kinds import ERROR, LOSS, kind_of_metric
from dashboards_fixtures import shared_store
from mixer_cli import main

TRUE = {"E_inf": 1.7, "A": 400.0, "alpha": 0.34, "B": 600.0, "beta": 0.28}
MODEL_SIZES = (1e7, 3e7, 1e8, 3e8)
DATA_SIZES = (1e8, 3e8, 1e9, 3e9, 1e10)
K = 6.0


def true_loss(params, data):
    return TRUE["E_inf"] + TRUE["A"] * np.power(params, -TRUE["alpha"]) + TRUE["B"] * np.power(data, -TRUE["beta"])


def runs_table(seed: int = 0, noise: float = 0.01) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    params, data = (grid.ravel() for grid in np.meshgrid(MODEL_SIZES, DATA_SIZES))
    return pd.DataFrame({"model": "lm", "N": params, "tokens": data, "flops": K * params * data,
                         "val_loss": true_loss(params, data) * np.exp(rng.normal(0, noise, len(params)))})


def fit(capsys, *args: str) -> tuple[int, str, str]:
    status = main(["fit", *args, "--bootstrap", "60"])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def csv_table(tmp_path) -> Path:
    path = tmp_path / "runs.csv"
    runs_table().to_csv(path, index=False)
    return path


def test_kind_follows_the_metric_name():
    assert kind_of_metric("best/val_loss") is LOSS and kind_of_metric("val_loss") is LOSS
    assert kind_of_metric("best/fewshot_digits_5shot_top1") is ERROR and kind_of_metric("tokens") is None


def test_fit_recovers_the_joint_loss_law_and_predicts_the_largest_model(csv_table, capsys, tmp_path):
    status, out, err = fit(capsys, str(csv_table), "--metric", "val_loss", "--params", "N", "--data", "tokens",
                           "--flops", "flops", "--group", "model", "--holdout", "largest-params", "--json", "--out",
                           str(tmp_path / "rep"))
    assert status == 0, err
    document = json.loads(out)
    (joint,) = [f for f in document["fits"] if len(f["inputs"]) == 2]
    assert joint["kind"] == "loss" and joint["law"].startswith("loss = E_inf")
    for name in ("E_inf", "alpha", "beta"):
        low, high = joint["intervals"][name]
        assert joint["identified"][name] and low <= joint["parameters"][name] <= high
    assert joint["intervals"]["E_inf"][0] <= TRUE["E_inf"] <= joint["intervals"]["E_inf"][1]
    assert abs(joint["parameters"]["alpha"] - TRUE["alpha"]) < 0.05
    assert abs(joint["parameters"]["beta"] - TRUE["beta"]) < 0.05
    predictions = document["predictions"]
    assert len(predictions) == len(DATA_SIZES) and {p["params"] for p in predictions} == {max(MODEL_SIZES)}
    assert all(abs(p["relative_error"]) < 0.03 for p in predictions)
    assert sum(p["covered"] for p in predictions) >= 4
    assert all(p["error_points"] is None and p["kind"] == "loss" for p in predictions)
    report = Path(document["report"])
    figures = {path.name for path in (report.parent / "figures").iterdir()}
    assert "holdout_largest_model_val_loss.png" in figures and "allocation_val_loss_lm.png" in figures
    html = report.read_text()
    assert "<h1>Table runs.csv</h1>" in html and "Compute-optimal allocation" in html and "Held-back prediction" in html and html.count("<tr>") > 20


def test_fit_predict_reads_every_row_of_another_table_in_any_format(csv_table, capsys, tmp_path):
    other = runs_table(seed=1).iloc[[0, 7, 19]].drop(columns="flops")
    for path, write in ((tmp_path / "other.parquet", other.to_parquet),
                        (tmp_path / "other.jsonl", lambda p: other.to_json(p, orient="records", lines=True))):
        write(path)
        status, out, err = fit(capsys, str(csv_table), "--metric", "val_loss", "--params", "N", "--data", "tokens",
                               "--group", "model", "--predict", str(path), "--json")
        assert status == 0, err
        rows = json.loads(out)
        assert [row["N"] for row in rows] == other["N"].tolist()
        for row in rows:
            low, high = row["interval"]
            assert low < row["predicted"] < high and row["law"] == "joint"
            assert abs(row["predicted"] - true_loss(row["N"], row["tokens"])) < 0.03 * row["predicted"]
            assert row["covered"] == (low <= row["val_loss"] <= high)
            assert row["relative_error"] == pytest.approx((row["predicted"] - row["val_loss"]) / row["val_loss"])


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.drop(columns="tokens"), "no column 'tokens'"),
    (lambda t: t.assign(val_loss=t["val_loss"].where(t.index != 2)), "column 'val_loss', row 3"),
    (lambda t: t.assign(N=t["N"].where(t.index != 4, 0.0)), "column 'N', row 5"),
    (lambda t: t.assign(N=t["N"].astype(object).where(t.index != 0, "big")), "column 'N', row 1"),
])
def test_a_malformed_table_is_one_message_naming_column_and_row(change, message, capsys, tmp_path):
    path = tmp_path / "bad.csv"
    change(runs_table()).to_csv(path, index=False)
    status, out, err = fit(capsys, str(path), "--metric", "val_loss", "--params", "N", "--data", "tokens")
    assert status == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"mixer fit: {path}: ") and message in err


def test_an_accuracy_out_of_range_or_an_unknown_metric_name_is_refused(capsys, tmp_path):
    path = tmp_path / "runs.csv"
    runs_table().to_csv(path, index=False)
    status, _, err = fit(capsys, str(path), "--metric", "val_loss", "--kind", "error", "--params", "N", "--data",
                         "tokens")
    assert status == 2 and "is not an accuracy in [0, 1]" in err
    status, _, err = fit(capsys, str(path), "--metric", "flops", "--params", "N", "--data", "tokens")
    assert status == 2 and "pass --kind error" in err


def test_predict_flops_on_a_table_finds_the_closed_form_optimum(csv_table, capsys):
    budget = 1e21
    status = main(["predict", str(csv_table), "--flops", str(budget), "--metric", "val_loss", "--params-column", "N",
                   "--data-column", "tokens", "--k", str(K), "--bootstrap", "60", "--json"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    (optimum,) = json.loads(captured.out)
    a, alpha, b, beta = TRUE["A"], TRUE["alpha"], TRUE["B"], TRUE["beta"]
    # Hoffmann et al. 2022, eq. 4: N* = G·(C/6)^(β/(α+β)), G = (αA/βB)^(1/(α+β)).
    closed_form = (alpha * a / (beta * b)) ** (1 / (alpha + beta)) * (budget / K) ** (beta / (alpha + beta))
    low, high = optimum["params_interval"]
    assert low < closed_form < high and optimum["params"] == pytest.approx(closed_form, rel=0.5)
    assert optimum["data"] == pytest.approx(budget / (K * optimum["params"]))
    assert optimum["flops_model"] == "C = 6·N·D" and optimum["extrapolation"]["flops"] > 1


def test_predict_flops_on_a_sweep_reads_its_logged_training_flops(tmp_path_factory, capsys):
    # The fixture's Mixer sizes all log the same MACs per image, so compute does not grow with N: at any budget
    # the law keeps improving towards larger models, and the command says so rather than print a grid edge.
    uri, _ = shared_store(tmp_path_factory)
    status = main(["predict", "sizes", "--flops", "1e13", "--metric", "test_top1", "--tracking-uri", uri,
                   "--bootstrap", "40"])
    captured = capsys.readouterr()
    assert status == 1
    assert "note: Mixer, test_top1: at 1e+13 FLOPs the law keeps improving towards ever larger models" in captured.err


def test_predict_flops_refuses_runs_whose_compute_does_not_grow_with_data(capsys, tmp_path):
    # Equal-step budgets: every run of a model costs the same whatever its data size, so C = k·N·D does not hold.
    path = tmp_path / "equal_steps.csv"
    table = runs_table()
    table.assign(flops=K * table["N"] * 1e9).to_csv(path, index=False)
    status = main(["predict", str(path), "--flops", "1e21", "--metric", "val_loss", "--params-column", "N",
                   "--data-column", "tokens", "--flops-column", "flops", "--bootstrap", "20"])
    err = capsys.readouterr().err
    assert status == 1
    assert "note: all runs, val_loss: the runs' training compute is off C = " in err
    assert "it does not grow with data size" in err

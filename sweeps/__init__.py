"""Sweep specs, the Ray Tune/Train/Optuna engine, MLflow logging and the `mixer` CLI."""

"""Sweep specs and their plans, the Ray Tune/Train/Optuna engine, MLflow tracking, the Ray Data stream and
benchmarks."""

"""`mixer bench`: the timing protocol and the command's output (speed itself is printed, never asserted)."""

from __future__ import annotations

import json

import pytest
import torch

from mixer_cli import main
from mixer_core.bench import time_interleaved


def test_models_take_turns_after_their_warm_up():
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in ("ours", "timm")}
    timings = time_interleaved(steps, warmup=2, repeats=3, device=torch.device("cpu"))
    assert calls == ["ours", "ours", "timm", "timm"] + ["ours", "timm"] * 3
    assert [len(seconds) for seconds in timings.values()] == [3, 3]


def test_mixer_bench_against_timm_prints_one_json_document(capsys):
    argv = ["bench", "--variant", "Ti/4", "--variant", "Ti/7", "--image-size", "28", "--batch-size", "4",
            "--warmup", "1", "--repeats", "2", "--vs-timm", "--json"]
    assert main(argv) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["settings"]["batch_size"] == 4 and document["matmul_peak_tflops"] > 0
    rows = document["rows"]
    keys = [(row["variant"], row["mode"], row["model"]) for row in rows]
    assert keys == [
        (variant, mode, model)
        for variant in ("Ti/4", "Ti/7") for mode in ("inference", "train") for model in ("mixer_core", "timm")
    ]
    for ours, timm in zip(rows[::2], rows[1::2]):
        assert ours["vs_timm"] == pytest.approx(ours["img_per_sec"] / timm["img_per_sec"])
        assert ours["img_per_sec"] == pytest.approx(4e3 / ours["ms_per_batch"])
        assert ours["img_per_sec_per_core"] == pytest.approx(ours["img_per_sec"] / torch.get_num_threads())
        assert ours["peak_fraction"] == pytest.approx(ours["tflops"] / document["matmul_peak_tflops"])
        assert timm["vs_timm"] is None


def test_mixer_bench_bf16_autocast_table(capsys):
    argv = ["bench", "--variant", "Ti/4", "--image-size", "32", "--batch-size", "2", "--dtype", "bf16",
            "--mode", "inference", "--warmup", "1", "--repeats", "1"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("cpu bf16, batch 2, 32 px")
    assert lines[3].split()[:3] == ["Ti/4", "inference", "mixer_core"]
    assert len(lines) == 4  # header line, column names, rule, one row

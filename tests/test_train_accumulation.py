"""Gradient accumulation is exact: in fp64 on CPU, optimizer steps on `data.batch_size: 64` in micro-batches
(`train.micro_batch_size`) leave the parameters where whole batches leave them, within 1e-10 relative: one
process and two DDP processes over gloo, with and without mixup and clipping, and through a resume from a
checkpoint taken between two optimizer steps."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mixer_core.checkpoint import checkpoint_name, load_checkpoint
from mixer_core.config_io import parse_config
from mixer_core.train import train

STEPS = 3
RELATIVE_TOLERANCE = 1e-10


def config(micro_batch_size: int | None, mixup: float = 0.0, grad_clip: float | None = None) -> dict:
    """Ti/4 on digits, a checkpoint after every optimizer step, no held-out evaluation."""
    return {
        "model": {"variant": "Ti/4"},
        "data": {"name": "digits", "batch_size": 64, "val_fraction": 0.0, "test_fraction": 0.0, "augment": {"mixup": mixup}},
        "train": {"steps": STEPS, "lr": 0.01, "weight_decay": 0.01, "grad_clip": grad_clip, "device": "cpu",
                  "micro_batch_size": micro_batch_size, "eval_every_steps": 1, "checkpoint_every_epochs": 0.001},
        "eval": {"fewshot_shots": [], "max_examples": 1},
    }


def train_fp64(settings: dict, work_dir: Path, resume_from: Path | None = None) -> None:
    """Train in float64 (weights, inputs, loss), checkpointing under `work_dir`."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        train(parse_config(settings), work_dir=work_dir, resume_from=resume_from)
    finally:
        torch.set_default_dtype(previous)


def final_parameters(work_dir: Path) -> dict[str, torch.Tensor]:
    """The parameters of a run's checkpoint after its last step."""
    return load_checkpoint(work_dir / "checkpoints" / checkpoint_name(STEPS))["model"]


def assert_same_parameters(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """All parameters within `RELATIVE_TOLERANCE` of `expected` as one vector, and each tensor relative to its
    own norm, or absolutely where that norm is below 1: the token-mixing output biases get no gradient in exact
    arithmetic (every path from them meets a LayerNorm over channels, which cancels a per-token shift), so Adam
    moves them by rounding noise alone (~1e-12) and only an absolute comparison means anything there."""
    assert actual.keys() == expected.keys()
    flat_actual, flat_expected = (torch.cat([tensor.flatten() for tensor in p.values()]) for p in (actual, expected))
    assert flat_expected.dtype == torch.float64
    overall = ((flat_actual - flat_expected).norm() / flat_expected.norm()).item()
    print(f"parameters: relative difference {overall:.1e}")
    assert overall <= RELATIVE_TOLERANCE
    for name, value in expected.items():
        error = (actual[name] - value).norm() / value.norm().clamp_min(1.0)
        assert error <= RELATIVE_TOLERANCE, f"{name}: relative difference {error:.2e}"


@pytest.mark.parametrize("mixup, grad_clip", [(0.0, None), (0.4, 0.05)], ids=["plain", "mixup-and-clipping"])
def test_micro_batches_of_16_step_like_whole_batches_of_64_and_resume_between_steps(tmp_path, mixup, grad_clip):
    train_fp64(config(None, mixup, grad_clip), tmp_path / "whole")
    train_fp64(config(16, mixup, grad_clip), tmp_path / "micro")
    whole = final_parameters(tmp_path / "whole")
    assert_same_parameters(final_parameters(tmp_path / "micro"), whole)

    # Resume from the checkpoint taken after the second of the three optimizer steps.
    second = tmp_path / "second"
    shutil.copytree(tmp_path / "micro" / "checkpoints" / checkpoint_name(STEPS - 1), second)
    train_fp64(config(16, mixup, grad_clip), tmp_path / "resumed", resume_from=second)
    assert_same_parameters(final_parameters(tmp_path / "resumed"), whole)


def _ddp_worker(rank: int, tmp_path: Path, mixup: float, grad_clip: float | None) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=rank, world_size=2)
    for name, micro_batch_size in (("whole", None), ("micro", 8)):
        train_fp64(config(micro_batch_size, mixup, grad_clip), tmp_path / name)
        dist.barrier()  # rank 0 writes the checkpoints; both runs must be done before the next starts
    dist.destroy_process_group()


@pytest.mark.parametrize("mixup, grad_clip", [(0.0, None), (0.4, 0.05)], ids=["plain", "mixup-and-clipping"])
def test_two_ddp_workers_with_micro_batches_of_8_step_like_whole_batches(tmp_path, mixup, grad_clip):
    """Each worker takes 32 of the 64 in 4 micro-batches; DDP synchronises once per optimizer step."""
    # fork: the children inherit the imported modules instead of importing torch, timm and sklearn again
    mp.start_processes(_ddp_worker, args=(tmp_path, mixup, grad_clip), nprocs=2, join=True, start_method="fork")
    assert_same_parameters(final_parameters(tmp_path / "micro"), final_parameters(tmp_path / "whole"))

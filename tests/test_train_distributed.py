"""The training loop under torch.distributed data parallel: two CPU processes over gloo, as the sweep engine runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mixer_core import metrics as m
from mixer_core.build import build_model
from mixer_core.config_io import parse_config
from mixer_core.data import build_splits
from mixer_core.evaluate import evaluate_fewshot_tasks, evaluate_top1, fewshot_tasks

CONFIG = {
    "model": {"variant": "Ti/4"},
    "data": {"name": "digits", "batch_size": 64},
    "train": {"steps": 6, "lr": 0.003, "log_every_steps": 2, "eval_every_epochs": 100, "device": "cpu"},
    "eval": {"fewshot_shots": [1], "fewshot_seeds": 1},
}


def _worker(rank: int, world_size: int, tmp_path: Path) -> None:
    from mixer_core.train import train

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=rank,
                            world_size=world_size)
    reports = []
    config = parse_config(CONFIG)
    train(config, lambda metrics, directory: reports.append([metrics, str(directory)]), work_dir=tmp_path / "run")
    [task] = fewshot_tasks(config.eval, config.data, build_splits(config.data))  # the pre-training data's own
    held = {"pool": len(task.pool), "pool_size": task.pool_size, "test": len(task.test), "test_size": task.test_size}
    (tmp_path / f"rank{rank}.json").write_text(json.dumps({"reports": reports, "held": held}))
    dist.destroy_process_group()


def test_two_ranks_report_the_same_metrics_and_rank_zero_checkpoints(tmp_path):
    # fork: the children inherit the imported modules instead of importing torch, timm and sklearn again
    mp.start_processes(_worker, args=(2, tmp_path), nprocs=2, join=True, start_method="fork")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    rank0, rank1 = (r["reports"] for r in ranks)
    assert [r[m.STEP] for r, _ in rank0] == [r[m.STEP] for r, _ in rank1] == [2, 4, 6]
    final0, final1 = rank0[-1][0], rank1[-1][0]
    for name in (m.TRAIN_LOSS, m.EXAMPLES_SEEN, m.VAL_TOP1, m.TEST_TOP1, m.fewshot_top1(1)):
        assert final0[name] == final1[name]  # losses and counts are reduced over ranks
    assert final0[m.EXAMPLES_SEEN] == 6 * 64  # the global batch is split 32 + 32
    assert rank0[-1][1].endswith("step_00000006") and rank1[-1][1] == "None"

    # Each rank evaluated half of the test split; together they agree with one process on the whole split.
    config = parse_config(CONFIG)
    splits = build_splits(config.data)
    model = build_model(config.model, splits.num_classes, splits.image_shape)
    model.load_state_dict(torch.load(Path(rank0[-1][1]) / "state.pt", weights_only=True)["model"])
    top1, _ = evaluate_top1(model, splits.test, batch_size=64, device=torch.device("cpu"))
    assert top1 == final0[m.TEST_TOP1]
    # Few-shot too: each rank held (decoded, extracted) half of the shots and of the test split, and the gathered
    # features give one process's numbers.
    pool_size, test_size = ranks[0]["held"]["pool_size"], ranks[0]["held"]["test_size"]
    assert [r["held"] for r in ranks] == [
        {"pool": (pool_size + 1 - rank) // 2, "pool_size": pool_size, "test": (test_size + 1 - rank) // 2,
         "test_size": test_size} for rank in (0, 1)]
    whole = evaluate_fewshot_tasks(model, fewshot_tasks(config.eval, config.data, splits), config.eval,
                                   batch_size=64, device=torch.device("cpu"))
    assert whole[m.fewshot_top1(1)] == pytest.approx(final0[m.fewshot_top1(1)], abs=1.01 / test_size)

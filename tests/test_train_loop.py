"""The training loop's parts alone, on real digits: prepare, open_epoch, train_step, evaluate, checkpoint, restore."""

from __future__ import annotations

import pytest
import torch

from mixer_core import metrics as m
from mixer_core.checkpoint import capture_rng_state
from mixer_core.config_io import parse_config
from mixer_core.data import DataError, build_splits
from mixer_core.data.fractions import check_enough_examples
from mixer_core.data.streamed import StreamedTraining
from mixer_core.train import (
    LoopState,
    Position,
    evaluate,
    maybe_checkpoint,
    open_epoch,
    prepare,
    restore,
    save_training_checkpoint,
    train_step,
    training_metrics,
)


def _config(seed: int = 0, **data):
    return parse_config({
        "model": {"variant": "Ti/4"},
        "data": {"name": "digits", "batch_size": 64, "fraction": 0.3, **data},
        "train": {"epochs": 2, "lr": 0.003, "warmup_steps": 2, "device": "cpu", "seed": seed,
                  "checkpoint_every_epochs": 0.5},
        "eval": {"fewshot_shots": [1], "fewshot_seeds": 1, "max_examples": 64},
    })


def _train_steps(run, position: Position, count: int) -> list[torch.Tensor]:
    losses, batches = [], open_epoch(run, position)
    for _ in range(count):
        images, labels = next(batches)
        loss, _ = train_step(run, images, labels)
        losses.append(loss)
        position.step, position.batch_in_epoch = position.step + 1, position.batch_in_epoch + 1
    return losses


def _same_tensors(a, b) -> bool:
    """Whether two nested state dicts hold equal tensors and values."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_tensors(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(_same_tensors, a, b))
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_prepare_counts_the_steps_and_train_step_moves_the_model():
    run = prepare(_config())
    assert run.splits.train_size == 389 and run.steps_per_epoch == 6 and run.num_steps == 12
    assert run.checkpoint_interval == 3 and run.eval_interval == 6
    before = [p.detach().clone() for p in run.model.parameters()]
    losses = _train_steps(run, Position(), 2)
    assert all(loss.requires_grad is False and torch.isfinite(loss) for loss in losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, run.model.parameters()))


def test_checkpoint_then_restore_puts_the_run_back_exactly(tmp_path):
    run, position = prepare(_config()), Position()
    _train_steps(run, position, 3)
    position.best = {m.best(m.VAL_TOP1): 0.5}
    rng = capture_rng_state()
    directory = save_training_checkpoint(run, position, {m.STEP: 3.0}, tmp_path)
    assert directory == tmp_path / "step_00000003"

    other = prepare(_config(seed=1))  # another initialisation, to be overwritten
    assert not _same_tensors(other.model.state_dict(), run.model.state_dict())
    restored, restored_rng = restore(other, directory)
    assert restored == position
    assert _same_tensors(other.model.state_dict(), run.model.state_dict())
    assert _same_tensors(other.optimizer.state_dict(), run.optimizer.state_dict())
    assert other.schedule.state_dict() == run.schedule.state_dict()
    assert _same_tensors(restored_rng, rng)


def test_a_restored_epoch_resumes_with_the_next_batch_and_the_saved_generators():
    run = prepare(_config())
    batches = open_epoch(run, Position())
    seen = [next(batches) for _ in range(2)]
    rng = capture_rng_state()
    following = next(batches)
    torch.rand(3)  # the generators move on after the checkpoint; the restore must put them back
    resumed = open_epoch(run, Position(step=2, batch_in_epoch=2), rng)
    assert _same_tensors(capture_rng_state(), rng)
    assert _same_tensors(next(resumed), following) and not _same_tensors(seen[1], following)


def test_an_epoch_done_moves_the_position_to_the_next_epoch():
    run = prepare(_config())
    position = Position(step=6, epoch=0, batch_in_epoch=6)
    assert len(list(open_epoch(run, position))) == run.steps_per_epoch
    assert (position.epoch, position.batch_in_epoch) == (1, 0)


def test_checkpoints_come_when_due_and_only_rank_zero_writes(tmp_path):
    run = prepare(_config())
    assert maybe_checkpoint(run, Position(step=2), {}, tmp_path) is None  # not due: two steps of three
    position = Position(step=3)
    assert maybe_checkpoint(run, position, {}, tmp_path) == tmp_path / "checkpoints" / "step_00000003"
    assert position.last_checkpoint_step == 3
    assert maybe_checkpoint(run, Position(step=12, last_checkpoint_step=9), {}, None) is None  # no work dir
    run.rank = 1
    other_rank = Position(step=6, last_checkpoint_step=3)
    assert maybe_checkpoint(run, other_rank, {}, tmp_path) is None and other_rank.last_checkpoint_step == 6
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000003"]


def test_evaluate_returns_the_metrics_and_keeps_the_best_evaluation():
    run = prepare(_config())
    position = Position(step=5)
    first = evaluate(run, position, final=False)
    assert {m.VAL_TOP1, m.VAL_LOSS, m.TEST_TOP1} <= first.keys() and m.fewshot_top1(1) not in first
    # val_top1 improved (on nothing): few-shot measured for the best record, which the report and position carry
    assert position.best[m.best(m.STEP)] == 5.0 and position.best[m.best(m.VAL_TOP1)] == first[m.VAL_TOP1]
    assert first[m.best(m.fewshot_top1(1))] == position.best[m.best(m.fewshot_top1(1))]
    position.step = 6
    again = evaluate(run, position, final=False)  # the same model: no improvement, no few-shot, best kept
    assert m.fewshot_top1(1) not in again and again[m.best(m.STEP)] == 5.0 and again[m.VAL_TOP1] == first[m.VAL_TOP1]
    assert m.fewshot_top1(1) in evaluate(run, position, final=True)


def test_training_metrics_cover_the_steps_since_the_last_report():
    run = prepare(_config())
    position = Position(step=4, examples_seen=256)
    state = LoopState(position, run_started=0.0, interval_started=0.0, last_lr=0.001,
                      losses=[torch.tensor(1.0), torch.tensor(3.0)], interval_examples=128)
    report = training_metrics(run, state, interval_seconds=2.0)
    assert report[m.TRAIN_LOSS] == 2.0 and report[m.IMAGES_PER_SEC] == 64.0 and report[m.LR] == 0.001
    assert report[m.EPOCH] == 256 / 389 and report[m.TRAIN_SIZE] == 389.0
    assert state.losses == [] and state.interval_examples == 0
    assert m.TRAIN_LOSS not in training_metrics(run, state, interval_seconds=1.0)  # nothing since


def test_too_little_data_is_one_data_error_in_memory_and_streamed():
    with pytest.raises(DataError, match="data.fraction=0.01 leaves 3 training examples"):
        check_enough_examples(3, 0, _config(fraction=0.01).data)
    parquet = _config(name="parquet", path="shards", batch_size=512)
    stream = StreamedTraining(build_splits(_config().data), lambda epoch: [], global_batch_size=512)
    with pytest.raises(DataError, match="leaves 389 training examples of shards, too few for one step"):
        prepare(parquet, stream)


def test_a_streamed_config_without_its_stream_is_refused_not_loaded_into_memory():
    with pytest.raises(DataError, match="Parquet data streams .* but no stream was given"):
        prepare(_config(name="parquet", path="shards"))
    with pytest.raises(DataError, match="a stream was given but data.stream is auto for digits"):
        prepare(_config(), StreamedTraining(build_splits(_config().data), lambda epoch: [], 64))

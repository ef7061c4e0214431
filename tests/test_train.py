"""The training loop on real digits: learning, the report contract, budget mode, exact resume, errors."""

from __future__ import annotations

import math

import pytest
import torch

from mixer_core import metrics as m
from mixer_core.config_io import parse_config
from mixer_core.model import create_mixer
from mixer_core.optim import build_optimizer, lr_multiplier
from mixer_core.train import TrainingError, train
from shipped_data import MNIST


def digits_config(**sections) -> dict:
    """A small Ti/4-on-digits run; `sections` replace keys inside `model`, `data`, `train`, `eval`."""
    config = {
        "model": {"variant": "Ti/4"},
        "data": {"name": "digits", "batch_size": 64},
        "train": {"epochs": 3, "lr": 0.003, "warmup_steps": 5, "weight_decay": 0.01, "log_every_steps": 4,
                  "eval_every_epochs": 1, "device": "cpu"},
        "eval": {"fewshot_shots": [1, 5], "fewshot_seeds": 2},
    }
    for section, values in sections.items():
        config[section].update(values)
    return config


class Recorder:
    """An `on_report` callback that keeps every report."""

    def __init__(self):
        self.reports: list[tuple[dict[str, float], object]] = []

    def __call__(self, metrics: dict[str, float], checkpoint_dir) -> None:
        self.reports.append((dict(metrics), checkpoint_dir))

    def losses(self) -> list[float]:
        return [metrics[m.TRAIN_LOSS] for metrics, _ in self.reports]


def test_digits_run_learns_and_reports_as_documented(tmp_path):
    recorder = Recorder()
    final = train(parse_config(digits_config()), recorder, work_dir=tmp_path)
    reports = [metrics for metrics, _ in recorder.reports]
    steps_per_epoch = 1294 // 64  # digits' training split after carving validation and test
    assert [r[m.STEP] for r in reports] == sorted({*range(4, 3 * steps_per_epoch + 1, 4), 20, 40, 60})

    evaluation = [r for r in reports if m.is_eval_report(r)]
    assert [r[m.STEP] for r in evaluation] == [steps_per_epoch, 2 * steps_per_epoch, 3 * steps_per_epoch]
    progress = [r for r in reports if not m.is_eval_report(r)]
    assert all(set(r) == set(m.TRAIN_METRICS) for r in progress)
    assert all(set(m.TRAIN_METRICS) | {m.VAL_TOP1, m.VAL_LOSS, m.TEST_TOP1} <= set(r) for r in evaluation)
    assert final == reports[-1]
    assert {m.fewshot_top1(1), m.fewshot_top1(5)} <= set(final)
    assert not any(m.fewshot_top1(1) in r for r in reports[:-1])  # few-shot only at the end

    for r in reports:
        assert r[m.EXAMPLES_SEEN] == 64 * r[m.STEP]
        assert r[m.EPOCH] == pytest.approx(r[m.EXAMPLES_SEEN] / r[m.TRAIN_SIZE])
        assert r[m.TRAIN_FLOPS] == pytest.approx(6 * r[m.GMACS] * 1e9 * r[m.EXAMPLES_SEEN])
        assert r[m.IMAGES_PER_SEC] > 0
    assert reports[0][m.TRAIN_LOSS] > 3 * final[m.TRAIN_LOSS]
    assert final[m.TEST_TOP1] > 0.85 and final[m.VAL_TOP1] > 0.85
    assert final[m.fewshot_top1(5)] > 0.7

    # rank 0 checkpoints at every evaluation report (checkpoint_every_epochs: 1) and keeps the two newest
    assert [d.name for _, d in recorder.reports if d is not None] == [
        f"step_{s:08d}" for s in (steps_per_epoch, 2 * steps_per_epoch, 3 * steps_per_epoch)]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000040", "step_00000060"]


def test_downstream_fewshot_and_best_upstream_validation_metrics():
    # Pre-train on digits, few-shot on MNIST (a different real dataset) resized to digits' 8x8.
    downstream = {"fewshot_datasets": [{"name": "mnist_idx", "path": str(MNIST), "label": "mnist"}],
                  "fewshot_pretraining": False, "fewshot_shots": [5], "fewshot_seeds": 1}
    recorder = Recorder()
    final = train(parse_config(digits_config(train={"lr": 0.01, "log_every_steps": 1000, "eval_every_epochs": 0.5},
                                             eval=downstream)), recorder)
    assert m.fewshot_top1(5) not in final  # the pre-training set's own few-shot is off
    assert 0.3 < final[m.fewshot_top1(5, "mnist")] < 1.0  # transfer beats chance (0.1) but is no copy of digits
    evaluations = [r for r, _ in recorder.reports]
    for index, report in enumerate(evaluations):
        seen = evaluations[: index + 1]
        best = max(seen, key=lambda r: (r[m.VAL_TOP1], -r[m.STEP]))  # the first of equal maxima
        assert report[m.BEST_STEP] == best[m.STEP]
        assert (report[m.BEST_VAL_TOP1], report[m.BEST_TEST_TOP1]) == (best[m.VAL_TOP1], best[m.TEST_TOP1])
        assert 0.1 < report[m.best(m.fewshot_top1(5, "mnist"))] < 1.0
    if final[m.BEST_STEP] == final[m.STEP]:
        assert final[m.best(m.fewshot_top1(5, "mnist"))] == final[m.fewshot_top1(5, "mnist")]


def test_downstream_shots_do_not_depend_on_the_pretraining_fraction():
    from mixer_core.data import build_splits
    from mixer_core.evaluate import fewshot_tasks

    def shots(fraction: float) -> dict:
        config = parse_config(digits_config(data={"fraction": fraction}, eval={"fewshot_datasets": [
            {"name": "mnist_idx", "path": str(MNIST), "label": "mnist"}]}))
        tasks = fewshot_tasks(config.eval, config.data, build_splits(config.data))
        return {task.label: torch.stack([task.pool[i][0] for i in task.shots[0]]) for task in tasks}

    small, full = shots(0.1), shots(1.0)
    assert small.keys() == {"mnist", None}  # downstream first, then the pre-training data's own splits
    assert small["mnist"].shape == (50, 1, 8, 8)  # resized to the pre-training size
    assert torch.equal(small["mnist"], full["mnist"])
    assert not torch.equal(small[None], full[None])  # the pre-training set's own shots come from the subset


def test_grey_downstream_images_feed_a_colour_model_on_every_channel():
    from mixer_core.data import build_splits
    from mixer_core.evaluate import fewshot_tasks

    config = parse_config(digits_config(data={"name": "synthetic", "image_size": 8, "synthetic_examples": 200},
                                        eval={"fewshot_datasets": [{"name": "digits"}], "fewshot_pretraining": False}))
    (task,) = fewshot_tasks(config.eval, config.data, build_splits(config.data))
    image, _ = task.test[0]
    assert task.label == "digits" and image.shape == (3, 8, 8)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_a_downstream_dataset_the_model_cannot_read_is_named():
    from mixer_core.data import build_splits
    from mixer_core.evaluate import fewshot_tasks

    config = parse_config(digits_config(eval={"fewshot_datasets": [{"name": "mnist_idx", "path": str(MNIST),
                                                                     "image_size": 12}]}))
    with pytest.raises(ValueError, match=r"fewshot_datasets\[0\] \(mnist_idx\): images are 1x12x12, the model takes"):
        fewshot_tasks(config.eval, config.data, build_splits(config.data))


def test_learning_rate_follows_warmup_then_linear_decay_and_only_kernels_decay():
    assert [lr_multiplier(s, 10, 4, "linear") for s in (0, 3, 4, 7, 10)] == [0.25, 1.0, 1.0, 0.5, 0.0]
    assert lr_multiplier(7, 10, 4, "cosine") == pytest.approx(0.5)
    model = create_mixer("Ti/4", num_classes=10, image_size=8, in_chans=1)
    adam = build_optimizer(model, parse_config(digits_config()).train)
    decayed, plain = adam.param_groups
    assert (decayed["weight_decay"], plain["weight_decay"]) == (0.01, 0.0)
    assert {id(p) for p in decayed["params"]} == {id(model.stem.weight), id(model.head.weight)} | {
        id(mlp.weight) for block in model.blocks
        for mlp in (block.mlp_tokens.fc1, block.mlp_tokens.fc2, block.mlp_channels.fc1, block.mlp_channels.fc2)}
    sgd = build_optimizer(model, parse_config(digits_config(train={"recipe": "finetune"})).train)
    assert isinstance(sgd, torch.optim.SGD)
    assert (sgd.defaults["momentum"], sgd.defaults["weight_decay"]) == (0.9, 0.0)


def test_budget_mode_fixes_the_step_count_whatever_the_fraction():
    finals = {}
    # 12 steps of 64, set as a step count for the 10% subset and as an example count for the full split
    for fraction, budget in ((0.1, {"steps": 12}), (1.0, {"examples": 12 * 64 - 10})):
        config = digits_config(data={"fraction": fraction},
                               train={**budget, "eval_every_epochs": 100, "warmup_steps": 0},
                               eval={"fewshot_shots": []})
        finals[fraction] = train(parse_config(config))
        assert finals[fraction][m.STEP] == 12 and finals[fraction][m.EXAMPLES_SEEN] == 12 * 64
    # the same steps are many more epochs of the 10% subset (the paper's 233 vs 7 epochs)
    assert finals[0.1][m.TRAIN_SIZE] < 0.15 * finals[1.0][m.TRAIN_SIZE]
    assert finals[0.1][m.EPOCH] > 7 * finals[1.0][m.EPOCH]
    for final in finals.values():  # the linear decay spans the budget: 1/12 of the rate is left at the last step
        assert final[m.LR] == pytest.approx(0.003 / 12)


def test_resume_from_a_mid_epoch_checkpoint_gives_the_same_loss_curve(tmp_path):
    # Augmentation, mixup, dropout and stochastic depth all draw random numbers, so the curve only matches if
    # the data order, the generators and the optimizer state all resume exactly. Checkpoints every half epoch.
    config = parse_config(digits_config(
        model={"dropout": 0.1, "stoch_depth": 0.1},
        data={"fraction": 0.5, "augment": {"flip": True, "inception_crop": True, "mixup": 0.2}},
        train={"epochs": 2, "log_every_steps": 1, "eval_every_epochs": 0.5, "checkpoint_every_epochs": 0.5},
        eval={"fewshot_shots": []},
    ))
    uninterrupted = Recorder()
    train(config, uninterrupted)

    class Crash(Exception):
        pass

    def crash_after_first_checkpoint(metrics, checkpoint_dir):
        first_part.reports.append((metrics, checkpoint_dir))
        if checkpoint_dir is not None and metrics[m.STEP] == 15:  # the checkpoint after 1.5 epochs
            raise Crash

    first_part = Recorder()
    with pytest.raises(Crash):
        train(config, crash_after_first_checkpoint, work_dir=tmp_path)
    resumed = Recorder()
    train(config, resumed, resume_from=tmp_path, work_dir=tmp_path)

    curve = uninterrupted.losses()
    assert len(curve) == 20 and first_part.losses() == curve[:15]
    assert resumed.losses() == curve[15:]  # bit-identical on CPU
    assert [r[m.STEP] for r, _ in resumed.reports] == list(range(16, 21))


def test_non_finite_loss_stops_the_run_naming_the_step_and_keeps_earlier_reports():
    # Sigmoid cross-entropy with a learning rate of 1e12 overflows the logits a few steps in.
    recorder = Recorder()
    config = digits_config(train={"lr": 1e12, "warmup_steps": 0, "grad_clip": None, "log_every_steps": 1,
                                  "loss": "sigmoid"}, eval={"fewshot_shots": []})
    with pytest.raises(TrainingError, match=r"training loss is (nan|inf) at step (\d+)") as error:
        train(parse_config(config), recorder)
    bad_step = int(error.value.args[0].split("at step ")[1].split(";")[0])
    assert [r[m.STEP] for r, _ in recorder.reports] == list(range(1, bad_step))
    assert all(math.isfinite(loss) for loss in recorder.losses())

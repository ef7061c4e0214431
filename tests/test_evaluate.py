"""Top-1 and few-shot linear evaluation (big_vision's fewshot_lsr) on real digits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import Ridge

from mixer_core.config import DataConfig, EvalConfig
from mixer_core.data import build_splits
from mixer_core.data.fewshot import Share, draw_shots
from mixer_core.evaluate import BIAS_FEATURE, decoded_task, evaluate_fewshot, evaluate_top1, fewshot_lsr
from mixer_core.model import create_mixer


@pytest.fixture(scope="module")
def digits():
    return build_splits(DataConfig(name="digits"))


def _sklearn_fewshot(x, y, x_test, y_test, l2):
    """The same recipe written independently: whiten, bias feature, ±1 targets, ridge without intercept."""
    mean, std = x.mean(0), x.std(0) + 1e-5
    pad = lambda a: np.hstack([(a - mean) / std, np.full((len(a), 1), BIAS_FEATURE)])  # noqa: E731
    targets = 2.0 * np.eye(10)[y] - 1.0
    ridge = Ridge(alpha=l2, fit_intercept=False, solver="cholesky").fit(pad(x), targets)
    return float((ridge.predict(pad(x_test)).argmax(1) == y_test).mean())


@pytest.mark.parametrize("shots", [1, 25])  # 10 points < 65 features, and 250 points > 65 features
def test_fewshot_lsr_matches_an_independent_ridge_on_digit_pixels(shots):
    images, labels = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    train = np.concatenate([rng.choice(np.flatnonzero(labels == c), shots, replace=False) for c in range(10)])
    test = np.setdiff1d(np.arange(len(labels)), train)
    as_tensor = lambda index: (torch.tensor(images[index]), torch.tensor(labels[index]))  # noqa: E731
    ours = fewshot_lsr(*as_tensor(train), *as_tensor(test), num_classes=10, l2=1024.0)
    assert ours == pytest.approx(_sklearn_fewshot(images[train], labels[train], images[test], labels[test], 1024.0))
    assert ours > (0.5 if shots == 1 else 0.85)  # raw pixels separate digits well with 25 shots


def test_shots_are_k_per_class_nested_and_seeded_drawn_from_labels_alone(digits):
    labels = digits.train.labels
    drawn = draw_shots(labels, max_shots=5, seed=3)
    assert len(drawn) == 50
    for k in (1, 5):  # the first k·10 examples hold exactly k of every class
        assert torch.bincount(labels[drawn[: 10 * k]], minlength=10).tolist() == [k] * 10
    assert np.array_equal(drawn, draw_shots(labels, max_shots=5, seed=3))
    assert not np.array_equal(drawn, draw_shots(labels, max_shots=5, seed=4))
    assert len(draw_shots(labels[labels != 3], max_shots=5, seed=0)) == 45  # a class without examples gives none


def test_top1_of_an_untrained_mixer_is_the_share_of_class_zero(digits):
    # A fresh Mixer's head is zero (paper init): every logit is 0, so argmax picks class 0 and the
    # softmax loss is exactly ln 10.
    model = create_mixer("Ti/4", num_classes=10, image_size=8, in_chans=1)
    top1, loss = evaluate_top1(model, digits.test, batch_size=97, device=torch.device("cpu"))
    labels = torch.tensor([label for _, label in digits.test])
    assert top1 == pytest.approx((labels == 0).double().mean().item())
    assert loss == pytest.approx(math.log(10))
    assert model.training  # evaluation leaves the mode as it found it


def test_fewshot_on_frozen_random_features_beats_chance(digits):
    # Random Mixer features of real digits already support a linear few-shot classifier well above 10%.
    torch.manual_seed(0)
    model = create_mixer("Ti/4", num_classes=10, image_size=8, in_chans=1)
    task = decoded_task(None, digits.train, digits.test, 10, EvalConfig(fewshot_shots=[1, 10], fewshot_seeds=2),
                        Share())
    accuracy = evaluate_fewshot(model, task, shots=[1, 10], l2=1024.0, batch_size=128, device=torch.device("cpu"))
    assert set(accuracy) == {1, 10}
    assert 0.2 < accuracy[1] < accuracy[10]

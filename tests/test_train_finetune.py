"""Fine-tuning from our checkpoints and from timm Mixer weights, and timm baselines, on real digits."""

from __future__ import annotations

import math

import pytest
import safetensors.torch
import torch

from mixer_core import metrics as m
from mixer_core.build import build_model, load_pretrained
from mixer_core.config import ModelConfig
from mixer_core.config_io import parse_config
from mixer_core.data import build_splits
from mixer_core.evaluate import evaluate_top1
from mixer_core.flops import measured_macs
from mixer_core.model import create_mixer, to_timm_state_dict
from mixer_core.train import train

CPU = torch.device("cpu")


def run_config(**sections) -> dict:
    config = {
        "model": {"variant": "Ti/4"},
        "data": {"name": "digits", "batch_size": 64},
        "train": {"epochs": 2, "lr": 0.003, "warmup_steps": 5, "log_every_steps": 100, "device": "cpu"},
        "eval": {"fewshot_shots": [5], "fewshot_seeds": 1},
    }
    for section, values in sections.items():
        config[section].update(values)
    return config


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A Ti/4 pre-trained on 8×8 digits: (final metrics, run directory)."""
    work_dir = tmp_path_factory.mktemp("pretrain")
    return train(parse_config(run_config()), work_dir=work_dir), work_dir


def test_our_checkpoint_loads_exactly_at_its_own_resolution(pretrained):
    final, work_dir = pretrained
    splits = build_splits(parse_config(run_config()).data)
    checkpoint = sorted((work_dir / "checkpoints").iterdir())[-1]
    model = load_pretrained(ModelConfig(variant="Ti/4"), 10, splits.image_shape, checkpoint)
    top1, _ = evaluate_top1(model, splits.test, batch_size=128, device=CPU)
    assert top1 == final[m.TEST_TOP1] > 0.8


def test_finetune_at_double_resolution_resizes_token_mixing_and_trains_with_sgd_cosine(pretrained):
    _, work_dir = pretrained
    config = run_config(
        data={"image_size": 16},  # 2×2 → 4×4 patches: block-diagonal token mixing (paper Appendix C)
        train={"recipe": "finetune", "init_from": str(work_dir), "lr": 0.1, "steps": 12, "warmup_steps": 2,
               "log_every_steps": 1, "eval_every_epochs": 100},
    )
    checkpoint = sorted((work_dir / "checkpoints").iterdir())[-1]
    source = torch.load(checkpoint / "state.pt", weights_only=True)["model"]
    model = load_pretrained(ModelConfig(variant="Ti/4"), 10, (1, 16, 16), checkpoint)
    assert model.num_tokens == 16 and model.variant.tokens_mlp_dim == 4 * 64
    assert torch.equal(model.stem.weight, source["stem.weight"])

    reports = []
    final = train(parse_config(config), lambda metrics, _: reports.append(metrics))
    lrs = [r[m.LR] for r in reports]
    assert lrs[:2] == pytest.approx([0.05, 0.1])  # warm-up, then cosine decay towards 0
    assert lrs[6] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 4 / 10)))
    # The resized model starts near chance at 16 px (16% here), but its pre-trained weights adapt in a dozen
    # steps; the same 12 steps from scratch reach 28%.
    assert final[m.TEST_TOP1] > 0.5


def test_timm_mixer_weights_load_with_a_new_head_for_the_new_class_count(tmp_path):
    torch.manual_seed(0)
    published = create_mixer("Ti/4", num_classes=7, image_size=8, in_chans=1)
    torch.nn.init.normal_(published.head.weight)
    path = tmp_path / "mixer_ti4.safetensors"
    safetensors.torch.save_file(to_timm_state_dict(published), path)
    model = build_model(ModelConfig(variant="Ti/4"), 10, (1, 8, 8), init_from=path)
    assert torch.equal(model.blocks[3].mlp_channels.fc2.weight, published.blocks[3].mlp_channels.fc2.weight)
    assert model.head.weight.shape == (10, 128) and not model.head.weight.any()
    with pytest.raises(ValueError, match="do not fit model.variant XS/4"):
        build_model(ModelConfig(variant="XS/4"), 10, (1, 8, 8), init_from=path)


def test_timm_baseline_trains_and_gives_pre_logit_features():
    config = parse_config(run_config(model={"timm_model": "resnet18"}, train={"steps": 4}))
    final = train(config)
    model = build_model(config.model, 10, (1, 8, 8))
    assert final[m.GMACS] == pytest.approx(measured_macs(model, (1, 8, 8)) / 1e9)
    assert final[m.PARAMS] == sum(p.numel() for p in model.parameters())
    assert 0.0 <= final[m.fewshot_top1(5)] <= 1.0 and final[m.STEP] == 4

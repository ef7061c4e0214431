"""The Mixer as the paper defines it: sizes, initialisation, timm weight compatibility, permutation argument,
and token-mixing resizing for higher-resolution fine-tuning (Appendix C)."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from mixer_core.model import (
    count_parameters,
    create_mixer,
    create_timm_twin,
    load_timm_state_dict,
    resize_token_mixing,
    to_timm_state_dict,
)

# Table 1 of the paper: parameters (millions) without head, and with a 1000-class head.
PAPER_PARAMS = {
    "S/32": (18.59, 19.10),
    "S/16": (18.02, 18.53),
    "B/32": (59.52, 60.29),
    "B/16": (59.11, 59.88),
    "L/32": (205.91, 206.94),
    "L/16": (207.17, 208.20),
    "H/14": (431.07, 432.35),
}
TIMM_NAMES = {
    "S/32": "mixer_s32_224",
    "S/16": "mixer_s16_224",
    "B/32": "mixer_b32_224",
    "B/16": "mixer_b16_224",
    "L/32": "mixer_l32_224",
    "L/16": "mixer_l16_224",
}


def randomise_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter a non-trivial random value (kernels at lecun scale, LayerNorm scales near 1,
    non-zero biases and head) so that a mismatched or forgotten weight changes the logits. Uniform values:
    filling 208M weights in place is several times faster than drawing normals."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim > 1:
                bound = math.sqrt(3 / parameter[0].numel())  # variance 1/fan_in
                parameter.uniform_(-bound, bound, generator=generator)
            else:
                mean = 1.0 if "norm" in name and name.endswith("weight") else 0.0
                parameter.uniform_(mean - 0.2, mean + 0.2, generator=generator)
    return model


def images(batch: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", PAPER_PARAMS)
def test_parameter_counts_match_the_paper(name):
    with torch.device("meta"):
        model = create_mixer(name, num_classes=1000, image_size=224)
    without_head, with_head = PAPER_PARAMS[name]
    assert round(count_parameters(model, include_head=False) / 1e6, 2) == without_head
    assert round(count_parameters(model) / 1e6, 2) == with_head


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_timm_weights_give_the_same_logits_and_round_trip(name):
    # Built on the meta device and filled with random values: skips two initialisations of up to 208M weights.
    with torch.device("meta"):
        theirs = timm.create_model(TIMM_NAMES[name], pretrained=False)
        ours = create_mixer(name, num_classes=1000, image_size=224)
    theirs = randomise_(theirs.to_empty(device="cpu")).eval()
    ours = ours.to_empty(device="cpu").eval()
    timm_weights = theirs.state_dict()

    assert load_timm_state_dict(ours, timm_weights) == []
    batch = images(1, 224)
    with torch.inference_mode():
        expected, actual = theirs(batch), ours(batch)
    assert expected.abs().max() > 0.1  # the head is random, so equal logits are not trivially zero
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)

    exported = to_timm_state_dict(ours)
    assert exported.keys() == timm_weights.keys()
    for key, value in timm_weights.items():
        assert torch.equal(exported[key], value), key


def test_a_training_step_matches_timm():
    # Our token mixing multiplies by the weight and adds residuals in place; autograd must agree with timm.
    ours = randomise_(create_mixer("Ti/4", num_classes=10, image_size=32)).train()
    twin = create_timm_twin(ours).train()
    twin.load_state_dict(to_timm_state_dict(ours))
    before = {key: value.clone() for key, value in twin.state_dict().items()}
    batch, labels = images(4, 32), torch.arange(4)
    for model in (ours, twin):
        F.cross_entropy(model(batch), labels).backward()
        torch.optim.SGD(model.parameters(), lr=1.0).step()  # lr 1: weights move by the whole gradient
    expected = twin.state_dict()
    for key, value in to_timm_state_dict(ours).items():
        assert not torch.equal(value, before[key]), key
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-5, msg=key)


def test_timm_head_of_another_class_count_is_left_zero_for_fine_tuning():
    pretrained = randomise_(timm.create_model("mixer_s32_224", pretrained=False, img_size=64))
    ours = create_mixer("S/32", num_classes=10, image_size=64)
    assert load_timm_state_dict(ours, pretrained.state_dict()) == ["head.weight", "head.bias"]
    assert torch.equal(ours.head.weight, torch.zeros(10, 512))
    assert torch.equal(ours.blocks[3].norm_channels.weight, pretrained.blocks[3].norm2.weight)

    wrong_resolution = create_mixer("S/32", num_classes=1000, image_size=96)
    with pytest.raises(ValueError, match="blocks.0.mlp_tokens.fc1.weight.*resize_token_mixing"):
        load_timm_state_dict(wrong_resolution, pretrained.state_dict())


def test_tanh_gelu_matches_timm_twin_and_differs_from_exact_gelu():
    tanh_model = randomise_(create_mixer("Ti/4", num_classes=10, image_size=32, gelu_approximate="tanh")).eval()
    twin = create_timm_twin(tanh_model).eval()
    twin.load_state_dict(to_timm_state_dict(tanh_model))
    exact_model = create_mixer("Ti/4", num_classes=10, image_size=32).eval()
    exact_model.load_state_dict(tanh_model.state_dict())
    batch = images(4, 32)
    with torch.inference_mode():
        torch.testing.assert_close(tanh_model(batch), twin(batch), rtol=0, atol=1e-5)
        assert (tanh_model(batch) - exact_model(batch)).abs().max() > 1e-4


def test_initialisation_follows_the_flax_code():
    model = create_mixer("Ti/4", num_classes=10, image_size=32, head_bias_init=-math.log(10))
    assert torch.equal(model.head.weight, torch.zeros(10, 128))
    assert torch.allclose(model.head.bias, torch.full((10,), -math.log(10)))
    for name, parameter in model.named_parameters():
        if name.startswith("head."):
            continue
        if name.endswith("bias"):
            assert torch.equal(parameter, torch.zeros_like(parameter)), name
        elif parameter.ndim == 1:  # LayerNorm scales
            assert torch.equal(parameter, torch.ones_like(parameter)), name
        else:
            # lecun normal: variance 1/fan_in, truncated at two standard deviations of the untruncated normal
            fan_in = parameter[0].numel()
            assert parameter.std().item() == pytest.approx(fan_in**-0.5, rel=0.05), name
            assert parameter.abs().max().item() <= 2 * fan_in**-0.5 / 0.8796 + 1e-6, name


def test_stochastic_depth_rises_linearly_from_zero_to_the_last_block():
    model = create_mixer("Ti/4", num_classes=10, image_size=32, stoch_depth=0.3, num_blocks=4)
    assert isinstance(model.blocks[0].drop_path, nn.Identity)
    rates = [block.drop_path.drop_prob for block in model.blocks[1:]]
    assert rates == pytest.approx([0.1, 0.2, 0.3])
    batch = images(8, 32)
    randomise_(model)
    assert not torch.equal(model.train()(batch), model(batch))  # training mode drops blocks per example
    assert torch.equal(model.eval()(batch), model(batch))


def permute_patches(batch: torch.Tensor, patch: int, order: torch.Tensor) -> torch.Tensor:
    """Images whose patch t (row-major) is patch order[t] of `batch`."""
    b, c, h, w = batch.shape
    grid_h, grid_w = h // patch, w // patch
    patches = batch.reshape(b, c, grid_h, patch, grid_w, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c, patch, patch)
    patches = patches[:, order].reshape(b, grid_h, grid_w, c, patch, patch)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def test_permuting_patches_and_token_mixing_weights_consistently_leaves_logits_unchanged():
    # Paper Section 2: Mixer has no positional information, so a consistent permutation is invisible.
    model = randomise_(create_mixer("Ti/4", num_classes=10, image_size=32)).eval()
    order = torch.randperm(model.num_tokens, generator=torch.Generator().manual_seed(3))
    batch = images(4, 32)
    permuted_batch = permute_patches(batch, patch=4, order=order)
    with torch.inference_mode():
        logits, features = model(batch, return_features=True)
        assert not torch.allclose(model(permuted_batch), logits, atol=1e-3)  # the test can fail
        for block in model.blocks:
            mlp = block.mlp_tokens
            mlp.fc1.weight.copy_(mlp.fc1.weight[:, order])
            mlp.fc2.weight.copy_(mlp.fc2.weight[order])
            mlp.fc2.bias.copy_(mlp.fc2.bias[order])
        permuted_logits, permuted_features = model(permuted_batch, return_features=True)
    torch.testing.assert_close(permuted_logits, logits, rtol=0, atol=1e-5)
    for i in range(len(model.blocks)):
        torch.testing.assert_close(permuted_features[f"block_{i}"], features[f"block_{i}"][:, order], rtol=0, atol=1e-5)


def tile(parts: list[list[torch.Tensor]]) -> torch.Tensor:
    """One image from a K×K arrangement of images: parts[p][q] becomes the tile in row p, column q."""
    return torch.cat([torch.cat(row, dim=3) for row in parts], dim=2)


@pytest.mark.parametrize("factor", [2, 3])
def test_block_diagonal_resize_mixes_each_spatial_part_exactly_as_before(factor):
    old = randomise_(create_mixer("Ti/4", num_classes=10, image_size=16)).eval()  # 4×4 grid of 4-px patches
    new = resize_token_mixing(copy.deepcopy(old), new_grid=4 * factor, method="block_diagonal")
    assert (new.image_size, new.grid_size, new.num_tokens) == (16 * factor, 4 * factor, 16 * factor**2)
    assert new.variant.tokens_mlp_dim == 64 * factor**2
    assert new.blocks[0].mlp_tokens.fc1.weight.shape == (64 * factor**2, 16 * factor**2)

    parts = [[images(2, 16, seed=10 * p + q) for q in range(factor)] for p in range(factor)]
    with torch.inference_mode():
        logits, features = new(tile(parts), return_features=True)
        part_logits = []
        for p in range(factor):
            for q in range(factor):
                expected_logits, expected = old(parts[p][q], return_features=True)
                part_logits.append(expected_logits)
                for i in range(len(old.blocks)):
                    grid = features[f"block_{i}"].reshape(2, 4 * factor, 4 * factor, -1)
                    part_tokens = grid[:, 4 * p : 4 * (p + 1), 4 * q : 4 * (q + 1)].reshape(2, 16, -1)
                    torch.testing.assert_close(part_tokens, expected[f"block_{i}"], rtol=0, atol=1e-5)
    # Pooling averages tokens and the head is linear: the tiled image's logits are the parts' mean.
    torch.testing.assert_close(logits, torch.stack(part_logits).mean(0), rtol=0, atol=1e-5)


def test_bilinear_resize_interpolates_token_mixing_over_the_grid():
    old = randomise_(create_mixer("Ti/4", num_classes=10, image_size=16)).eval()
    new = resize_token_mixing(copy.deepcopy(old), new_grid=8, method="bilinear")
    assert (new.image_size, new.grid_size, new.num_tokens, new.variant.tokens_mlp_dim) == (32, 8, 64, 64)
    # A spatially constant input keeps its hidden activations (the first layer is rescaled by S/S'), so the
    # token-mixing output is the old output map, bilinearly upsampled.
    token = torch.randn(2, 1, 128, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        for old_block, new_block in zip(old.blocks, new.blocks):
            old_out = old_block.mlp_tokens.forward_tokens(token.expand(2, 16, 128))  # (B, S, C)
            new_out = new_block.mlp_tokens.forward_tokens(token.expand(2, 64, 128))
            old_map = old_out.transpose(1, 2).reshape(2, 128, 4, 4)
            expected = F.interpolate(old_map, size=(8, 8), mode="bilinear", align_corners=False)
            torch.testing.assert_close(new_out, expected.flatten(2).transpose(1, 2), rtol=0, atol=1e-5)
        assert new(images(2, 32)).shape == (2, 10)


def test_resize_rejects_what_it_cannot_do():
    model = create_mixer("Ti/4", num_classes=10, image_size=16)
    with pytest.raises(ValueError, match="multiple of the grid 4, got 6"):
        resize_token_mixing(model, new_grid=6, method="block_diagonal")
    with pytest.raises(ValueError, match="unknown token-mixing resize method 'nearest'"):
        resize_token_mixing(model, new_grid=8, method="nearest")


@pytest.mark.parametrize("model_config", [
    {"variant": "Ti/4", "dropout": 0.1, "stoch_depth": 0.2},
    {"timm_model": "vit_tiny_patch16_224", "timm_patch_size": 4, "dropout": 0.1, "stoch_depth": 0.2},
], ids=["mixer", "timm-vit"])
def test_activation_checkpointing_gives_the_same_gradients(model_config):
    """`model.grad_checkpointing` recomputes blocks in the backward pass with the same dropout and stochastic
    depth masks: fp64 gradients equal those of the plain model."""
    from mixer_core.build import build_model
    from mixer_core.config import ModelConfig

    images = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3])
    gradients = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(ModelConfig(**model_config, grad_checkpointing=checkpointing), 10, (3, 16, 16)).double()
        torch.manual_seed(1)  # the same dropout and drop-path draws
        F.cross_entropy(model(images), labels).backward()
        gradients.append({name: p.grad for name, p in model.named_parameters()})
    plain, checkpointed = gradients
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-12, atol=0, msg=name)


def test_checkpointed_mixer_keeps_only_block_inputs_for_backward():
    """What makes checkpointing worth it: autograd holds one (tokens x hidden) tensor per block, not the whole block."""
    model = create_mixer("Ti/4", num_classes=10, image_size=16)
    images = torch.randn(2, 3, 16, 16)
    saved = {}
    for checkpointing in (False, True):
        model.set_grad_checkpointing(checkpointing)
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            model(images)
        saved[checkpointing] = sum(sizes)
    assert saved[True] < saved[False] / 3

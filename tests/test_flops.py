"""Analytic MACs equal the counted ones, for every variant, both counting conventions, and resized models."""

from __future__ import annotations

import json

import pytest
import torch

from mixer_cli import main
from mixer_core.flops import analytic_macs, measured_macs
from mixer_core.model import create_mixer, create_timm_twin, resize_token_mixing
from mixer_core.sizes import variant_table
from mixer_core.variants import VARIANTS


def meta_mixer(name: str, image_size: int, num_classes: int = 1000):
    with torch.device("meta"):  # counting needs shapes only
        return create_mixer(name, num_classes=num_classes, image_size=image_size)


@pytest.mark.parametrize("name", VARIANTS)
def test_analytic_macs_equal_counted_macs(name):
    image_size = 224 if VARIANTS[name].patch_size >= 14 else 28
    model = meta_mixer(name, image_size, num_classes=10)
    assert analytic_macs(model) == measured_macs(model, (3, image_size, image_size))


def test_b16_at_224_matches_the_published_figure():
    model = meta_mixer("B/16", 224)
    assert analytic_macs(model) == 12_601_767_936  # matmuls only
    # timm's published 12.62 GMACs (fvcore) also books 5 operations per LayerNorm element
    with_norms = analytic_macs(model, count_layer_norm=True)
    assert round(with_norms / 1e9, 2) == 12.62
    assert measured_macs(model, (3, 224, 224), count_layer_norm=True) == with_norms


def test_counting_works_for_timm_models_too():
    ours = meta_mixer("S/16", 224)
    assert measured_macs(create_timm_twin(ours), (3, 224, 224)) == analytic_macs(ours)


@pytest.mark.parametrize("method", ["block_diagonal", "bilinear"])
def test_resized_models_are_counted_consistently(method):
    model = resize_token_mixing(create_mixer("Ti/4", num_classes=10, image_size=16), new_grid=8, method=method)
    assert analytic_macs(model) == measured_macs(model, (3, 32, 32))


def test_variant_table_rows():
    rows = {row["variant"]: row for row in variant_table(image_size=224, num_classes=1000)}
    assert list(rows) == list(VARIANTS)
    b16 = rows["B/16"]
    assert (b16["layers"], b16["hidden"], b16["tokens_mlp"], b16["channels_mlp"], b16["patch"]) == (12, 768, 384, 3072, 16)
    assert (round(b16["params_m_no_head"], 2), round(b16["params_m"], 2)) == (59.11, 59.88)
    assert b16["tokens"] == 196 and b16["gmacs"] == pytest.approx(12.6018, abs=1e-4)
    small = {row["variant"]: row for row in variant_table(image_size=32, num_classes=10)}
    assert small["Ti/7"]["gmacs"] is None and small["Ti/4"]["tokens"] == 64


def test_mixer_variants_command(capsys):
    assert main(["variants", "--image-size", "224", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["image_size"] == 224
    assert [row["variant"] for row in document["variants"]] == list(VARIANTS)
    assert main(["variants", "--num-classes", "10"]) == 0
    table = capsys.readouterr().out
    assert "B/16" in table and "59.11" in table  # params without head, 4 significant digits

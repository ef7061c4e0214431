"""The arithmetic sizes of `mixer_core.sizes` equal the built model's, and planning a Mixer sweep needs no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mixer_core.flops import measured_macs
from mixer_core.model import count_parameters, create_mixer
from mixer_core.sizes import mixer_macs, mixer_parameters
from mixer_core.variants import VARIANTS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize(("image_size_in_patches", "in_chans", "num_classes"), [(4, 1, 10), (7, 3, 1000), (2, 3, 0)])
def test_parameters_and_macs_equal_the_built_model(name, image_size_in_patches, in_chans, num_classes):
    variant = VARIANTS[name]
    image_size = image_size_in_patches * variant.patch_size
    with torch.device("meta"):
        model = create_mixer(name, num_classes=num_classes, image_size=image_size, in_chans=in_chans)
    assert mixer_parameters(variant, image_size, in_chans, num_classes) == count_parameters(model)
    assert mixer_macs(variant, image_size, in_chans, num_classes) == measured_macs(model, (in_chans, image_size, image_size))


def test_planning_a_mixer_sweep_imports_no_torch():
    code = (
        "import sys; from sweeps.spec import load_spec; from sweeps.plan import plan_sweep\n"
        "for spec in ('quickstart', 'imagenet', 'cpu/regularization'):\n"
        "    plan_sweep(load_spec(f'sweeps/{spec}.yaml'))\n"
        "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

"""Rebuild a trial's trained Mixer from its checkpoint, to draw its learned weights (paper Figures 5–7)."""

from __future__ import annotations

import math

import torch

from dashboards.runs import Trial
from mixer_core.checkpoint import load_checkpoint
from mixer_core.model import MlpMixer, create_mixer


class CheckpointError(ValueError):
    """A trial's checkpoint is missing or does not hold a Mixer state dict; the message names the path."""


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The model weights of a training checkpoint (a directory or its `state.pt`, weights under `model`), or
    of a file holding a bare state dict."""
    try:
        stored = load_checkpoint(path)
    except FileNotFoundError as missing:
        raise CheckpointError(str(missing)) from None
    except Exception as failure:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint ({failure})") from None
    state = stored.get("model", stored) if isinstance(stored, dict) else None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise CheckpointError(f"{path}: holds no model state dict (expected tensors, or a dict with 'model')")
    return state


def load_trial_mixer(trial: Trial) -> MlpMixer:
    """The trial's Mixer with its checkpointed weights. The variant comes from the run's params; channels,
    classes and image size from the tensors' shapes, so the model matches whatever data it was trained on."""
    if not trial.is_mixer or not trial.checkpoint:
        raise CheckpointError(f"trial {trial.trial_id}: no Mixer checkpoint recorded (tag mixer.checkpoint)")
    state = load_state_dict(trial.checkpoint)
    variant = trial.config.get("model.variant", trial.model)
    try:
        stem = state["stem.weight"]  # (hidden, in_chans, P, P)
        num_tokens = state["blocks.0.mlp_tokens.fc1.weight"].shape[1]
        num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    except KeyError as missing:
        raise CheckpointError(f"{trial.checkpoint}: not a Mixer state dict (no {missing})") from None
    image_size = math.isqrt(num_tokens) * stem.shape[-1]
    model = create_mixer(variant, num_classes=num_classes, image_size=image_size, in_chans=stem.shape[1])
    try:
        model.load_state_dict(state)
    except RuntimeError as mismatch:
        raise CheckpointError(f"{trial.checkpoint}: does not fit Mixer {variant}: {mismatch}") from None
    return model.eval()

"""Pure-PyTorch MLP-Mixer: model, data, training loop and evaluation. Imports neither Ray nor MLflow."""

from mixer_core.model import VARIANTS, MlpMixer, create_mixer

__all__ = ["VARIANTS", "MlpMixer", "create_mixer"]

"""Pure-PyTorch MLP-Mixer: model, data, training loop and evaluation. Imports neither Ray nor MLflow."""

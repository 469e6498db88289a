"""The one training loop shared by every network."""

from ae_anomaly.training.loop import TrainHistory, resolve_device, seed_everything, train_network

__all__ = ["TrainHistory", "resolve_device", "seed_everything", "train_network"]

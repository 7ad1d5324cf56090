"""Training engine and the pretraining entry point (model files: `napari_tower.model_bundle`)."""

from .engine import Progress, resolve_device
from .pretrain import PretrainResult, pretrain

__all__ = ["PretrainResult", "Progress", "pretrain", "resolve_device"]

"""Training engine, checkpoints and the pretraining entry point."""

from .checkpoint import load_checkpoint, save_checkpoint
from .engine import Progress, resolve_device
from .pretrain import PretrainResult, pretrain

__all__ = ["Progress", "PretrainResult", "load_checkpoint", "pretrain", "resolve_device", "save_checkpoint"]

"""Segmentation: fine-tuning, tiled prediction, instances and metrics."""

from .finetune import FinetuneResult, finetune
from .metrics import evaluate
from .predict import Prediction, Predictor

__all__ = ["FinetuneResult", "Prediction", "Predictor", "evaluate", "finetune"]

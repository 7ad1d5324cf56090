"""Segmentation: fine-tuning, tiled prediction, retraining from corrections, instances and metrics."""

from .finetune import FinetuneResult, finetune
from .metrics import evaluate
from .predict import Prediction, Predictor
from .retrain import RetrainResult, retrain

__all__ = ["FinetuneResult", "Prediction", "Predictor", "RetrainResult", "evaluate", "finetune", "retrain"]

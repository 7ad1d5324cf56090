"""A live preview of a model while it trains: the labels of one small crop, every few seconds.

`LivePreview` is a `finetune(on_step=...)` hook. It runs in the training thread, between two steps: every
`every_s` seconds it predicts the crop it was given (the part of the image in view) with the model as it is and
hands the labels to `emit`. Predicting one crop of at most 512 x 512 px costs a fraction of a training step, so
the user watches the model improve and stops training when it is good enough; the GUI thread only receives a
small array to show.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..data import Normalisation


class LivePreview:
    """Predicts `crop` with the model being trained every `every_s` seconds and passes the labels to `emit`.

    crop: a (C, Y, X) plane of raw intensities; norm: how to scale it (the image's percentiles).
    emit(labels, step): labels (Y, X) int32, class ids (0 = background), called in the training thread.
    The first preview comes after the first step, the next ones at most every `every_s` seconds.
    """

    def __init__(self, crop: np.ndarray, norm: Normalisation, emit: Callable[[np.ndarray, int], None],
                 every_s: float = 3.0) -> None:
        self.input = np.ascontiguousarray(norm.apply(np.asarray(crop, np.float32), channel_axis=0), np.float32)
        self.emit, self.every_s = emit, every_s
        self.last = -np.inf
        self.count = 0

    def labels(self, model: torch.nn.Module) -> np.ndarray:
        """The model's class ids for the crop (padded to a multiple of 16 px, as the U-Net needs)."""
        _, h, w = self.input.shape
        ph, pw = -h % 16, -w % 16
        device = next(model.parameters()).device
        x = torch.from_numpy(self.input)[None].to(device)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                logits = model(x)[0, :, :h, :w]
        finally:
            model.train(was_training)
        return logits.argmax(0).to(torch.int32).cpu().numpy()

    def __call__(self, step: int, model: torch.nn.Module) -> None:
        now = time.perf_counter()
        if now - self.last < self.every_s:
            return
        self.last = now
        self.count += 1
        self.emit(self.labels(model), step)


__all__ = ["LivePreview"]

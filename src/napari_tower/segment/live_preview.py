"""A live preview of a model while it trains: the labels of one small crop, every few seconds.

`LivePreview` is a `finetune(on_step=...)` hook. It runs in the training thread, between two steps: every
`every_s` seconds it predicts the crop it was given (the part of the image in view) with the model as it is and
hands the labels to `emit`. When the user pans or changes plane, the GUI thread gives it the new crop (`move`)
and the next step previews that one, so the preview follows the view. Predicting one crop of at most
512 x 512 px costs a fraction of a training step, so the user watches the model improve and stops training when
it is good enough; the GUI thread only receives a small array to show.
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

    crop: a (C, Y, X) plane of raw intensities; norm: how to scale it (the image's percentiles); offset: the
    crop's top-left corner (y, x) in the image, handed back with its labels.
    emit(labels, step, offset): labels (Y, X) int32, class ids (0 = background), called in the training thread.
    The first preview comes after the first step, the next ones at most every `every_s` seconds, or after
    `MOVED_EVERY_S` when the view moved.
    """

    MOVED_EVERY_S = 0.5  # a pan is previewed this soon, but a continuous pan does not preview every step

    def __init__(self, crop: np.ndarray, norm: Normalisation, emit: Callable[[np.ndarray, int, tuple[int, int]], None],
                 every_s: float = 3.0, offset: tuple[int, int] = (0, 0)) -> None:
        self.norm = norm
        self.emit, self.every_s = emit, every_s
        self.view = (self._prepare(crop), (int(offset[0]), int(offset[1])))
        self.moved = False
        self.last = -np.inf
        self.count = 0

    def _prepare(self, crop: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.norm.apply(np.asarray(crop, np.float32), channel_axis=0), np.float32)

    @property
    def offset(self) -> tuple[int, int]:
        return self.view[1]

    def move(self, crop: np.ndarray, offset: tuple[int, int]) -> None:
        """Preview `crop` (at `offset`) from now on; called from the GUI thread when the view moves."""
        self.view = (self._prepare(crop), (int(offset[0]), int(offset[1])))  # one assignment: the thread sees both
        self.moved = True

    def labels(self, model: torch.nn.Module, input: np.ndarray | None = None) -> np.ndarray:
        """The model's class ids for the crop (padded to a multiple of 16 px, as the U-Net needs)."""
        input = self.view[0] if input is None else input
        _, h, w = input.shape
        ph, pw = -h % 16, -w % 16
        device = next(model.parameters()).device
        x = torch.from_numpy(input)[None].to(device)
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
        if now - self.last < (min(self.every_s, self.MOVED_EVERY_S) if self.moved else self.every_s):
            return
        self.last = now
        self.moved = False
        input, offset = self.view
        self.count += 1
        self.emit(self.labels(model, input), step, offset)


__all__ = ["LivePreview"]

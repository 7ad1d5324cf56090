"""Did pretraining help, on the user's own data? Same labels, same budget, with and without the pretrained start.

The check holds out one region the user corrected (its labels are the truth), fine-tunes two models on the rest of
that plane's labels under the same settings and budget (steps or minutes): one from the pretrained checkpoint,
one from random weights; and scores both on the held-out region (foreground Dice). The answer is in plain words:
"pretraining helped by N points", "made no difference" (within 1 point) or "hurt by N points".
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from ..config import FinetuneConfig, PredictConfig
from ..data import Image, from_array
from ..errors import TowerError
from ..model_bundle import ModelBundle
from ..train.engine import ProgressCallback, StopCheck
from .finetune import finetune
from .metrics import dice
from .predict import Predictor
from .uncertainty import Region

NO_DIFFERENCE_POINTS = 1.0  # a Dice difference below this many points is "no difference"
MIN_BAND = 32  # training bands around the held-out region narrower than this are left out


@dataclass
class PretrainingCheck:
    """Foreground Dice on the held-out region of the model fine-tuned from the pretrained start and from scratch."""

    pretrained_dice: float
    scratch_dice: float
    region: Region
    steps: tuple[int, int]  # training steps each model got (pretrained, scratch)

    @property
    def points(self) -> float:
        """Dice difference in points (pretrained - scratch) x 100."""
        return 100.0 * (self.pretrained_dice - self.scratch_dice)

    def sentence(self) -> str:
        scores = (f"Dice {self.pretrained_dice:.3f} vs {self.scratch_dice:.3f} from scratch on the held-out "
                  f"{self.region.size} x {self.region.size} region, {self.steps[0]} vs {self.steps[1]} steps")
        if abs(self.points) < NO_DIFFERENCE_POINTS:
            return f"pretraining made no difference ({self.points:+.1f} points; {scores})"
        verb = "helped" if self.points > 0 else "hurt"
        return f"pretraining {verb} by {abs(self.points):.1f} points ({scores})"


def training_bands(shape: tuple[int, int], region: Region) -> list[tuple[slice, slice]]:
    """The parts of a (Y, X) plane around `region`: bands above and below it, and left and right of it."""
    h, w = shape
    y0, x0 = region.y, region.x
    y1, x1 = min(h, y0 + region.size), min(w, x0 + region.size)
    bands = [(slice(0, y0), slice(0, w)), (slice(y1, h), slice(0, w)),
             (slice(y0, y1), slice(0, x0)), (slice(y0, y1), slice(x1, w))]
    return [(ys, xs) for ys, xs in bands if min(ys.stop - ys.start, xs.stop - xs.start) >= MIN_BAND]


def check_pretraining(image: Image, labels: np.ndarray, region: Region, pretrained: ModelBundle | str,
                      cfg: FinetuneConfig, callback: ProgressCallback | None = None,
                      should_stop: StopCheck | None = None) -> PretrainingCheck:
    """Fine-tune from `pretrained` and from scratch on `labels` of `region.plane` outside `region`; score both.

    image: the image; labels: its labels (planes, Y, X), dense (0 = background) on the region's plane.
    cfg: the fine-tuning settings both models get (steps or minutes, batch, patch, seed...).
    Raises TowerError when the region holds no labels or too little labelled image is left around it.
    """
    plane = region.plane
    truth = np.asarray(labels)[plane]
    data = np.asarray(image.data[plane])  # (C, Y, X)
    images, targets = [], []
    for ys, xs in training_bands(truth.shape, region):
        if truth[ys, xs].any():
            images.append(from_array(data[None, :, ys, xs], f"{image.source} band", axes="ZCYX"))
            targets.append(truth[ys, xs][None])
    if not images:
        raise TowerError("too little labelled image around the held-out region to train on: correct a region "
                         "away from the image's edges, or label objects outside it, then check again")
    held_truth = truth[region.slices()]
    held_image = from_array(data[None, :, region.slices()[0], region.slices()[1]], "held-out region", axes="ZCYX")
    results, steps = [], []
    for init in (pretrained, None):
        run_cfg = copy.deepcopy(cfg)
        run_cfg.val_fraction, run_cfg.val_every, run_cfg.checkpoint_every = 0.0, 0, 0
        trained = finetune(images, targets, run_cfg, init=init, callback=callback, should_stop=should_stop)
        if trained.last.stopped:
            raise TowerError("the pretraining check was stopped")
        predictor = Predictor(trained.checkpoint, PredictConfig(device=cfg.device, instances=False))
        results.append(dice(predictor.predict(held_image).labels[0] > 0, held_truth > 0))
        steps.append(int(trained.last.step))
    return PretrainingCheck(results[0], results[1], region, (steps[0], steps[1]))


__all__ = ["NO_DIFFERENCE_POINTS", "PretrainingCheck", "check_pretraining", "training_bands"]

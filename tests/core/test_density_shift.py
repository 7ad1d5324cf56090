"""Issue 21: a segmenter fine-tuned on one crowded image must not flood a sparse image with foreground.

Real data (Usiigaci phase contrast, ../shared): train briefly on a crop of the most crowded labelled frame
(set26, 37% cells in the crop), predict a sparse whole frame (set34, 6.7% cells), as it is and with its
normalised intensities shifted by +-0.05 (set30's background sits 0.04 above the training image's under the
model's normalisation). Measured with this exact training on the development machine: without intensity
jitter the prediction was 2.0x the true share and 14.3x under the -0.05 shift (the model keyed on the training
image's absolute intensities); with the default jitter (0.4) and the boundary head it is 1.78x (1.62x / 1.79x
under the shifts), and with the default 2D instance head since issue 20, capped distance, 1.42x (1.30x /
1.53x), Dice 0.684 against Otsu's 0.284. So the issue's target, a share within 1.5x of the truth, holds here;
on whole frames with channel walls the training frame lacks it does not yet (docs/benchmarks.md,
"Dense-to-sparse transfer").
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig, PredictConfig
from napari_tower.data import Normalisation, from_array
from napari_tower.segment import Predictor, finetune

from ..conftest import SHARED

PHASE = SHARED / "usiigaci_phase"

pytestmark = pytest.mark.skipif(not (PHASE / "images" / "set34.tif").exists(),
                                reason="needs the shared Usiigaci data (../shared/data/usiigaci_phase)")


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(2 * (pred & truth).sum() / max(1, pred.sum() + truth.sum()))


@pytest.fixture(scope="module")
def transfer():
    """Predicted foreground at intensity shifts 0, +0.05, -0.05, true foreground, Otsu's best Dice (sparse frame)."""
    import tifffile
    from skimage.filters import threshold_otsu

    crop = (slice(64, 448), slice(192, 576))  # 384 x 384 of set26
    image = tifffile.imread(PHASE / "images" / "set26.tif")[crop]
    labels = tifffile.imread(PHASE / "masks" / "set26.tif")[crop].astype(np.int64)
    cfg = FinetuneConfig(steps=80, batch=4, device="cpu", data=DataConfig(patch=64), model=ModelConfig(base=8))
    ckpt = finetune([from_array(image)], [labels[None]], cfg).checkpoint

    sparse = tifffile.imread(PHASE / "images" / "set34.tif")
    truth = tifffile.imread(PHASE / "masks" / "set34.tif") > 0
    predictor = Predictor(ckpt, PredictConfig(device="cpu"))
    img = from_array(sparse)
    norm = predictor.normalisation_for(img)
    span = np.subtract(norm.high, norm.low)
    preds = {}
    for shift in (0.0, 0.05, -0.05):  # norm(x) + shift, before clipping to [0, 1]
        shifted = Normalisation((norm.low - shift * span).tolist(), (norm.high - shift * span).tolist())
        preds[shift] = predictor.labels_from(predictor.probabilities(img.data[0], shifted)) > 0
    above = sparse > threshold_otsu(sparse)
    otsu = max(_dice(above, truth), _dice(~above, truth))  # either polarity, whichever suits Otsu better
    return preds, truth, otsu


def test_dense_to_sparse_transfer_does_not_flood(transfer):
    preds, truth, otsu = transfer
    pred = preds[0.0]
    assert pred.mean() / truth.mean() < 2.5, f"predicted share {pred.mean():.3f} vs true {truth.mean():.3f} (flood)"
    assert _dice(pred, truth) > otsu


def test_prediction_does_not_key_on_absolute_intensity(transfer):
    """A 0.05 intensity shift (a sparse frame's background level) moves the predicted share by less than 1.5x."""
    preds, _, _ = transfer
    base = preds[0.0].mean()
    for shift in (0.05, -0.05):
        ratio = preds[shift].mean() / base
        assert 1 / 1.5 < ratio < 1.5, f"shift {shift:+}: predicted share {preds[shift].mean():.3f} vs {base:.3f}"


def test_dense_to_sparse_share_within_1_5x(transfer):
    preds, truth, _ = transfer
    assert 1 / 1.5 <= preds[0.0].mean() / truth.mean() <= 1.5

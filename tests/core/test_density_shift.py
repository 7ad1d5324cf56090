"""Issue 21: a segmenter fine-tuned on one crowded image must not flood a sparse image with foreground.

Real data (Usiigaci phase contrast, ../shared): train briefly on a crop of the most crowded labelled frame
(set26, 37% cells in the crop), predict a sparse whole frame (set34, 6.7% cells). Measured with this exact
training on the development machine: per-image percentile normalisation predicted 33.7% foreground
(Dice 0.30, Otsu 0.28); the model's stored normalisation (the default since issue 21) predicts 13.4% (Dice 0.57).
The issue's target, a share within 1.5x of the truth, is not reached by a model trained on one image
(docs/benchmarks.md, "Dense-to-sparse transfer"): that check is a strict xfail, so it is noticed when it passes.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig, PredictConfig
from napari_tower.data import from_array
from napari_tower.segment import Predictor, finetune

from ..conftest import SHARED

PHASE = SHARED / "usiigaci_phase"

pytestmark = pytest.mark.skipif(not (PHASE / "images" / "set30.tif").exists(),
                                reason="needs the shared Usiigaci data (../shared/data/usiigaci_phase)")


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(2 * (pred & truth).sum() / max(1, pred.sum() + truth.sum()))


@pytest.fixture(scope="module")
def transfer():
    """(predicted foreground, true foreground, Otsu's best Dice) on the sparse frame."""
    import tifffile
    from skimage.filters import threshold_otsu

    crop = (slice(64, 448), slice(192, 576))  # 384 x 384 of set26
    image = tifffile.imread(PHASE / "images" / "set26.tif")[crop]
    labels = tifffile.imread(PHASE / "masks" / "set26.tif")[crop].astype(np.int64)
    cfg = FinetuneConfig(steps=80, batch=4, device="cpu", data=DataConfig(patch=64), model=ModelConfig(base=8))
    ckpt = finetune([from_array(image)], [labels[None]], cfg).checkpoint

    sparse = tifffile.imread(PHASE / "images" / "set34.tif")
    truth = tifffile.imread(PHASE / "masks" / "set34.tif") > 0
    pred = Predictor(ckpt, PredictConfig(device="cpu")).predict(from_array(sparse)).labels[0] > 0
    above = sparse > threshold_otsu(sparse)
    otsu = max(_dice(above, truth), _dice(~above, truth))  # either polarity, whichever suits Otsu better
    return pred, truth, otsu


def test_dense_to_sparse_transfer_does_not_flood(transfer):
    pred, truth, otsu = transfer
    ratio = pred.mean() / truth.mean()
    assert ratio < 2.5, f"predicted foreground share {pred.mean():.3f} vs true {truth.mean():.3f} (flooded)"
    assert _dice(pred, truth) > otsu


@pytest.mark.xfail(strict=True, reason="issue 21 target not reached: one training image leaves 2x too much foreground")
def test_dense_to_sparse_share_within_1_5x(transfer):
    pred, truth, _ = transfer
    assert 1 / 1.5 <= pred.mean() / truth.mean() <= 1.5

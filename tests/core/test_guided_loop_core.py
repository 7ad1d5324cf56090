"""The Qt-free parts of the guided loop: uncertainty and region suggestion, live preview, label history, the
pretraining check, and the retrain time budget."""

from __future__ import annotations

import numpy as np
import pytest

from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig, RetrainConfig
from napari_tower.data import compute_normalisation, from_array
from napari_tower.errors import TowerError
from napari_tower.label_history import LabelHistory
from napari_tower.segment.live_preview import LivePreview
from napari_tower.segment.pretraining_check import check_pretraining, training_bands
from napari_tower.segment.retrain import retrain
from napari_tower.segment.uncertainty import (
    Region,
    candidate_regions,
    entropy_map,
    flip_disagreement,
    random_region,
    suggest_region,
)

from ..conftest import blobs


def test_entropy_is_highest_where_the_model_hesitates():
    probs = np.zeros((3, 4, 4), np.float32)
    probs[0] = 1.0  # sure: background
    probs[:, 0, 0] = (0.5, 0.5, 0.0)  # foreground at 50%
    u = entropy_map(probs, "instance")
    assert u[0, 0] == pytest.approx(1.0, abs=1e-3) and u[1, 1] < 1e-3
    semantic = np.full((4, 2, 2), 0.25, np.float32)
    assert np.allclose(entropy_map(semantic, "semantic"), 1.0, atol=1e-3)


def test_flip_disagreement_is_zero_for_a_flip_invariant_model_and_positive_otherwise():
    plane = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)

    def symmetric(p):
        fg = np.full(p.shape[1:], 0.7, np.float32)
        return np.stack([1 - fg, fg])

    def lopsided(p):  # foreground on the left half of whatever it is given
        fg = np.zeros(p.shape[1:], np.float32)
        fg[:, : p.shape[2] // 2] = 1.0
        return np.stack([1 - fg, fg])

    assert flip_disagreement(symmetric, plane, "binary").max() == pytest.approx(0.0, abs=1e-6)
    assert flip_disagreement(lopsided, plane, "binary").mean() > 0.5


def test_suggest_region_takes_the_most_uncertain_uncorrected_tile():
    u = np.zeros((256, 384), np.float32)
    u[128:256, 256:384] = 1.0  # the most uncertain tile
    u[0:128, 0:128] = 0.5
    best = suggest_region([u], 128)
    assert best == Region(0, 128, 256, 128)
    assert suggest_region([u], 128, [best]) == Region(0, 0, 0, 128)
    everything = candidate_regions(u.shape, 128)
    assert len(everything) == 6 and suggest_region([u], 128, everything) is None
    # an edge the grid does not reach is still covered by a last row/column flush with the edge
    assert {r.y for r in candidate_regions((300, 128), 128)} == {0, 128, 172}
    rng = np.random.default_rng(0)
    drawn = random_region([u.shape], 128, [best], rng)
    assert drawn is not None and not drawn.overlaps(best)


def test_live_preview_predicts_the_crop_at_most_every_interval(tiny_segmenter):
    from napari_tower.segment.model import inference_segmenter
    from napari_tower.train.engine import resolve_device

    model = inference_segmenter(tiny_segmenter, resolve_device("cpu"))
    model.train()
    image, _ = blobs((70, 90), seed=1)
    shown = []
    norm = compute_normalisation(image[None, None], "x")
    live = LivePreview(image[None, :40, :50], norm, lambda l, s, o: shown.append((l, s, o)), every_s=3600,
                       offset=(0, 0))
    live(1, model)
    live(2, model)  # within the interval: nothing
    assert len(shown) == 1 and shown[0][0].shape == (40, 50) and shown[0][1:] == (1, (0, 0))
    assert model.training  # left as it was
    live.move(image[None, 30:70, 40:90], (30, 40))  # the user panned: the next step after a short wait shows it
    live.last -= LivePreview.MOVED_EVERY_S
    live(3, model)
    assert len(shown) == 2 and shown[1][1:] == (3, (30, 40))
    expected = LivePreview(image[None, 30:70, 40:90], norm, lambda *a: None).labels(model)
    assert np.array_equal(shown[1][0], expected)
    live(4, model)  # back to the normal interval
    assert len(shown) == 2


def test_label_history_restores_every_round_exactly(tmp_path):
    history = LabelHistory(tmp_path / "h")
    rounds = [np.random.default_rng(i).integers(0, 5, (2, 30, 40)).astype(np.int32) for i in range(3)]
    for i, labels in enumerate(rounds):
        assert history.save(labels, f"round {i}", "labels").number == i + 1
    again = LabelHistory(tmp_path / "h")  # read back from disk, as after a crash
    assert [v.number for v in again.versions()] == [1, 2, 3]
    for i, labels in enumerate(rounds):
        restored = again.load(i + 1)
        assert restored.dtype == labels.dtype and np.array_equal(restored, labels)
    with pytest.raises(TowerError, match="no round 9"):
        again.load(9)


def test_pretraining_check_reports_both_dice_and_a_sentence(tmp_path):
    from napari_tower.config import PretrainConfig
    from napari_tower.train import pretrain

    image, truth = blobs((160, 160), n=25, seed=4)
    img = from_array(image)
    pcfg = PretrainConfig(method="tower", steps=2, batch=2, device="cpu", val_every=0, checkpoint_every=0,
                          data=DataConfig(patch=64), model=ModelConfig(base=4, depth=2))
    pretrained = pretrain([img], pcfg).checkpoint
    cfg = FinetuneConfig(steps=3, batch=2, device="cpu", target="binary", data=DataConfig(patch=32),
                         model=ModelConfig(base=4, depth=2))
    region = Region(0, 48, 48, 64)
    assert len(training_bands((160, 160), region)) == 4
    check = check_pretraining(img, (truth > 0)[None].astype(np.int32), region, pretrained, cfg)
    assert 0 <= check.pretrained_dice <= 1 and 0 <= check.scratch_dice <= 1 and check.steps == (3, 3)
    assert check.sentence().startswith("pretraining ")
    with pytest.raises(TowerError, match="too little labelled image"):
        check_pretraining(img, (truth > 0)[None].astype(np.int32), Region(0, 0, 0, 160), pretrained, cfg)


def test_retrain_honours_a_time_budget(tiny_segmenter):
    image, truth = blobs((64, 64), seed=5)
    previous = np.zeros((1, 64, 64), np.int32)
    corrected = (truth > 0)[None].astype(np.int32)
    cfg = RetrainConfig(steps=100_000, minutes=0.02, device="cpu")
    result = retrain(tiny_segmenter, image, previous, corrected, cfg,
                     finetune_cfg=FinetuneConfig(batch=2, data=DataConfig(patch=32)))
    assert result.prediction is not None
    assert 0 < result.training.last.step < 100_000
    assert "time budget" in result.training.last.message

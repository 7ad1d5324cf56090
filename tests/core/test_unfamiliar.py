"""Prediction flags an image unlike every labelled image the model learnt from (inverted contrast, another
modality), where a model floods or finds nothing: DSB2018's bright-field images scored F1 0 for every head."""

from __future__ import annotations

import numpy as np

from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig, PredictConfig
from napari_tower.data import from_array, median_level
from napari_tower.data.normalise import compute_normalisation
from napari_tower.model_bundle import ModelBundle
from napari_tower.segment import Predictor, finetune

from ..conftest import blobs


def _bright_field(image: np.ndarray) -> np.ndarray:
    """Dark nuclei on a bright background, in the same intensity range."""
    return (int(image.max()) + int(image.min()) - image.astype(np.int32)).astype(np.uint16)


def test_median_level_is_where_the_background_sits():
    image, _ = blobs((96, 96), seed=2)
    norm = compute_normalisation(from_array(image).data, "x")
    assert median_level(from_array(image).data, norm) < 0.25
    assert median_level(from_array(_bright_field(image)).data, norm) > 0.75


def test_prediction_warns_on_an_image_unlike_the_labelled_ones(tiny_segmenter, tmp_path):
    low, high = tiny_segmenter.levels
    assert 0.0 <= low <= high < 0.3  # fluorescence-like blobs: dark background
    loaded = ModelBundle.load(tiny_segmenter.save(tmp_path / "model.pt"))
    assert loaded.levels == [low, high]
    predictor = Predictor(loaded, PredictConfig(device="cpu"))
    image, _ = blobs((64, 64), seed=9)
    assert predictor.predict(from_array(image, "another fluorescence frame")).warnings == []
    [warning] = predictor.predict(from_array(_bright_field(image), "bright-field frame")).warnings
    assert warning.startswith("bright-field frame looks unlike") and "much brighter" in warning
    assert "label or correct part of this image" in warning


def test_training_on_the_unfamiliar_image_makes_it_familiar(tiny_segmenter):
    """A retrain or further fine-tune on such an image widens the model's range, so the warning goes."""
    image, truth = blobs((64, 64), seed=9)
    dark_nuclei = _bright_field(image)
    cfg = FinetuneConfig(steps=1, batch=2, device="cpu", val_every=0, data=DataConfig(patch=32),
                         model=ModelConfig(base=4))
    again = finetune([from_array(dark_nuclei)], [(truth > 0)[None].astype(np.int64)], cfg,
                     init=tiny_segmenter).checkpoint
    assert again.levels[0] == tiny_segmenter.levels[0] and again.levels[1] > 0.75
    assert Predictor(again, PredictConfig(device="cpu")).predict(from_array(dark_nuclei)).warnings == []


def test_cli_predict_prints_the_warning(tiny_segmenter, tmp_path, capsys):
    import tifffile

    from napari_tower.cli import main

    model = tiny_segmenter.save(tmp_path / "model.pt")
    image, _ = blobs((64, 64), seed=9)
    tifffile.imwrite(tmp_path / "fluorescence.tif", image)
    tifffile.imwrite(tmp_path / "brightfield.tif", _bright_field(image))
    assert main(["predict", str(model), str(tmp_path / "fluorescence.tif"), str(tmp_path / "brightfield.tif"),
                 "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "brightfield.tif looks unlike" in warnings[0]
    assert (tmp_path / "out" / "brightfield.tif").exists()  # a warning, not a refusal

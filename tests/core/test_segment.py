"""Fine-tuning, prediction and the segmentation CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig, PredictConfig
from napari_tower.data import from_array
from napari_tower.errors import TowerError
from napari_tower.model_bundle import ModelBundle
from napari_tower.samples import synthetic_nuclei
from napari_tower.segment import Predictor, evaluate, finetune
from napari_tower.segment.finetune import segmentation_loss, select_fraction
from napari_tower.segment.metrics import dice
from napari_tower.segment.targets import encode_targets, infer_target_kind

from ..conftest import blobs


def _cfg(steps=60, **kw):
    return FinetuneConfig(steps=steps, batch=4, lr=3e-3, seed=0, val_every=0, checkpoint_every=0,
                          data=DataConfig(patch=64), model=ModelConfig(base=8, depth=3), **kw)


def test_unannotated_pixels_get_no_gradient():
    logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    targets = torch.randint(0, 4, (2, 16, 16))
    segmentation_loss(logits, targets, torch.ones(2, 16, 16)).backward()
    unannotated = (targets == 0)[:, None].expand_as(logits)
    assert torch.all(logits.grad[unannotated] == 0)
    assert torch.any(logits.grad[~unannotated] != 0)


def test_edited_pixels_weigh_more():
    logits = torch.zeros(1, 2, 8, 8, requires_grad=True)
    targets = torch.full((1, 8, 8), 2)
    weights = torch.ones(1, 8, 8)
    weights[0, :4] = 5.0
    segmentation_loss(logits, targets, weights).backward()
    g = logits.grad.abs()[0, 0]
    assert g[:4].mean() > 2 * g[4:].mean()


def test_label_fractions_are_nested_and_seeded():
    small, mid, full = (set(select_fraction(200, f, 3)) for f in (0.01, 0.1, 1.0))
    assert small < mid < full and len(small) == 2 and len(mid) == 20 and len(full) == 200
    assert set(select_fraction(200, 0.1, 3)) == mid and set(select_fraction(200, 0.1, 4)) != mid


def test_targets():
    inst = np.zeros((1, 12, 12), np.int64)
    inst[0, 2:6, 2:6], inst[0, 2:6, 6:10] = 1, 2
    enc = encode_targets(inst, "instance")
    assert set(np.unique(enc)) == {1, 2, 3}  # background, interior, boundary
    assert (enc[0, 2:6, 5:7] == 3).all(), "touching objects are separated by boundary pixels"
    assert set(np.unique(encode_targets((inst > 0).astype(int), "binary"))) == {1, 2}
    assert infer_target_kind([np.arange(20).reshape(1, 4, 5)]) == "instance"
    assert infer_target_kind([(inst > 0).astype(int) * 255]) == "binary"


def _nuclei(n_images=3, seed=0):
    pairs = [synthetic_nuclei((128, 128), 14, seed=seed + s) for s in range(n_images)]
    return [from_array(im, f"img{i}") for i, (im, _) in enumerate(pairs)], [lab[None] for _, lab in pairs]


def test_finetuned_model_beats_an_untrained_one():
    images, labels = _nuclei(3)
    test_images, test_labels = _nuclei(2, seed=10)
    trained = finetune(images, labels, _cfg(80))
    untrained = finetune(images, labels, _cfg(0))

    def score(ckpt):
        predictor = Predictor(ckpt, PredictConfig(tile=128, overlap=16, instances=True))
        preds = [predictor.predict(im).labels[0] for im in test_images]
        return evaluate(preds, [lab[0] for lab in test_labels])["mean"]

    good, bad = score(trained.checkpoint), score(untrained.checkpoint)
    assert good["dice"] > 0.7 and good["dice"] > bad["dice"] + 0.2, (good, bad)
    assert trained.checkpoint.target == "instance" and trained.checkpoint.classes == 3


def test_sparse_scribbles_train_a_segmenter():
    images, labels = _nuclei(2)
    sparse = []
    for lab in labels:
        s = np.zeros_like(lab)
        s[(lab > 0) & (np.random.default_rng(0).random(lab.shape) < 0.3)] = 2  # a few object pixels
        s[(lab == 0) & (np.random.default_rng(1).random(lab.shape) < 0.1)] = 1  # a few background pixels
        sparse.append(s)
    result = finetune(images, sparse, _cfg(60, target="sparse"))
    predictor = Predictor(result.checkpoint, PredictConfig(tile=128, overlap=16))
    pred = predictor.predict(images[0]).labels[0]
    assert evaluate([pred], [labels[0][0] > 0])["mean"]["dice"] > 0.7


def test_bad_labels_are_refused():
    images, labels = _nuclei(1)
    with pytest.raises(TowerError, match="no foreground"):
        finetune(images, [np.zeros_like(labels[0])], _cfg(1))
    with pytest.raises(TowerError, match="same size"):
        finetune(images, [labels[0][:, :64]], _cfg(1))


def test_channel_mismatch_names_rgb():
    images, labels = _nuclei(1)
    ckpt = finetune(images, labels, _cfg(1)).checkpoint
    rgb = from_array(np.zeros((64, 64, 3), np.uint8) + np.arange(64, dtype=np.uint8)[:, None, None])
    with pytest.raises(TowerError, match="RGB"):
        Predictor(ckpt).predict(rgb)


def test_cli_finetune_predict_evaluate(tmp_path, run_main):
    images, labels = _nuclei(2)
    for i, (im, lab) in enumerate(zip(images, labels)):
        tifffile.imwrite(tmp_path / f"img{i}.tif", np.asarray(im.data)[0, 0])
        tifffile.imwrite(tmp_path / f"lab{i}.tif", lab[0].astype(np.uint16))
    r = run_main("finetune", tmp_path / "img*.tif", "--labels", tmp_path / "lab*.tif", "--out", tmp_path / "m.pt",
                 "--steps", "100", "--patch", "64", "--base", "8", "--depth", "3", "--batch", "4", "--lr", "3e-3", "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_main("predict", tmp_path / "m.pt", tmp_path / "img0.tif", "--out", tmp_path / "pred", "--instances",
                 "--tile", "128", "--quiet")
    assert r.returncode == 0, r.stderr
    pred = tifffile.imread(tmp_path / "pred" / "img0.tif")
    assert pred.shape == (128, 128) and pred.max() >= 3
    r = run_main("evaluate", "--pred", tmp_path / "pred" / "img0.tif", "--truth", tmp_path / "lab0.tif", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["mean"]["dice"] > 0.6
    # Shape mismatch and a pretraining checkpoint where a segmenter is needed.
    tifffile.imwrite(tmp_path / "small.tif", np.ones((10, 10), np.uint16))
    r = run_main("evaluate", "--pred", tmp_path / "pred" / "img0.tif", "--truth", tmp_path / "small.tif")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "shape" in r.stderr


def _segmenter_checkpoint_with_trained_statistics():
    """An untrained segmenter whose BatchNorm layers hold non-trivial statistics, as after training."""
    from napari_tower.segment.model import Segmenter

    torch.manual_seed(0)
    model = Segmenter(1, 3, base=8, depth=3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval(), ModelBundle(
        kind="segmenter", state=model.state_dict(), target="instance", classes=3,
        config={"model": {"in_channels": 1, "base": 8, "depth": 3}})


def test_inference_model_folds_batchnorm_without_changing_outputs():
    from napari_tower.segment.model import inference_segmenter

    model, ckpt = _segmenter_checkpoint_with_trained_statistics()
    fast = inference_segmenter(ckpt, torch.device("cpu"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), model(x),
                                   rtol=1e-4, atol=1e-4)


def test_bfloat16_prediction_matches_float32():
    from napari_tower.data.normalise import Normalisation
    from napari_tower.segment.predict import resolve_precision

    _, ckpt = _segmenter_checkpoint_with_trained_statistics()
    ckpt.config["data"] = {"low_percentile": 1.0, "high_percentile": 99.8}
    image, _ = synthetic_nuclei((96, 160), 10, seed=3)
    ckpt.normalisation = Normalisation(low=[float(image.min())], high=[float(image.max())])
    runs = {p: Predictor(ckpt, PredictConfig(tile=64, overlap=16, precision=p)) for p in ("float32", "bfloat16")}
    assert runs["float32"].dtype == torch.float32 and runs["bfloat16"].dtype == torch.bfloat16
    probs = {p: r.predict(from_array(image)).probabilities for p, r in runs.items()}
    assert np.abs(probs["float32"] - probs["bfloat16"]).max() < 0.05
    assert resolve_precision("auto", torch.device("cpu")) in (torch.float32, torch.bfloat16)
    with pytest.raises(TowerError, match="precision"):
        PredictConfig(precision="float8").validate()


def test_model_normalisation_falls_back_for_an_image_of_another_range():
    """A model's stored intensities would mis-scale an image of another bit depth: that image uses its own."""
    from napari_tower.config import PredictConfig
    from napari_tower.data import from_array
    from napari_tower.segment import Predictor

    def clean(seed):  # 8-bit-like intensities, no wrap-around of negative noise
        image, truth = blobs((64, 64), seed=seed)
        return np.clip(image.astype(np.int32), 0, 1000).astype(np.uint16) // 4, truth

    image, truth = clean(5)
    cfg = FinetuneConfig(steps=3, batch=2, device="cpu", val_every=0, data=DataConfig(patch=32),
                         model=ModelConfig(base=4, depth=2))
    model_bundle = finetune([from_array(image)], [(truth > 0)[None].astype(np.int64)], cfg).checkpoint
    other, _ = clean(9)
    brighter = other.astype(np.uint16) * 60  # a 16-bit camera instead of the training's
    model = Predictor(model_bundle, PredictConfig(device="cpu", tile=64, overlap=0))
    per_image = Predictor(model_bundle, PredictConfig(device="cpu", tile=64, overlap=0, normalise="image"))
    assert model.normalisation_for(from_array(other)) == model.stored_norm  # same range as training: stored
    assert model.normalisation_for(from_array(brighter)) != model.stored_norm
    assert np.array_equal(model.predict(from_array(brighter)).labels, per_image.predict(from_array(brighter)).labels)


def test_each_image_is_scaled_as_the_labelled_image_that_fits_it():
    """A model fine-tuned on dim fluorescence and one bright-field image saw each under its own percentiles. One
    median mapping for all squeezed a bright-field image to background 1.0 and nuclei 0.82, and the model found
    nothing there (issue 20: DSB2018's bright-field test images); the fitting labelled image's mapping finds it."""
    from dataclasses import replace

    def fluorescence(seed):  # dim nuclei on a dark background
        _, lab = blobs((96, 96), 8, seed=seed)
        noise = np.random.default_rng(seed).normal(0, 8, lab.shape)
        return ((lab > 0) * 380 + 20 + noise).clip(0).astype(np.uint16), lab

    def bright_field(seed):  # dark nuclei on a bright background
        _, lab = blobs((96, 96), 8, seed=seed)
        noise = np.random.default_rng(seed).normal(0, 15, lab.shape)
        return ((lab > 0) * -600 + 950 + noise).clip(0).astype(np.uint16), lab

    pairs = [fluorescence(s) for s in (1, 2, 3)] + [bright_field(4)]
    bundle = finetune([from_array(im) for im, _ in pairs], [(lab > 0)[None].astype(np.int64) for _, lab in pairs],
                      _cfg(device="cpu")).checkpoint
    assert len(bundle.normalisations) >= 2  # the labelled images' own scalings (equal ones kept once)
    assert ModelBundle.from_dict(bundle.to_dict()).normalisations == bundle.normalisations
    median_only = replace(bundle, normalisations=None)  # a model saved before the per-image scalings
    for image, labels in (bright_field(9), fluorescence(9)):
        own = Predictor(bundle, PredictConfig(device="cpu")).normalisation_for(from_array(image))
        assert own in bundle.normalisations
        found = Predictor(bundle, PredictConfig(device="cpu")).predict(from_array(image)).labels[0]
        assert dice(found > 0, labels > 0) > 0.75
    image, labels = bright_field(9)
    assert Predictor(bundle, PredictConfig(device="cpu")).normalisation_for(from_array(image)).low[0] > 200
    squeezed = Predictor(median_only, PredictConfig(device="cpu")).predict(from_array(image)).labels[0]
    assert dice(squeezed > 0, labels > 0) < 0.3

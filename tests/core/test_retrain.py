"""The correct-and-retrain loop headless (`segment.retrain.retrain`), and the widget's Retrain as the same call.

The GUI test runs under a virtual display: `xvfb-run -a python -m pytest tests/test_retrain.py`.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_tower.config import RetrainConfig
from napari_tower.errors import TowerError
from napari_tower.segment.retrain import annotated_planes, edit_weights, retrain, retrain_finetune_config

from ..conftest import blobs


def in_job_thread(fn):
    """Run `fn()` the way the widget runs a job: in its own thread, with the job's torch thread count."""
    from napari_tower.napari.workers import training_threads

    box = {}

    def target():
        torch.set_num_threads(training_threads())
        box["value"] = fn()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    return box["value"]


@pytest.fixture
def small_model(tiny_segmenter):
    return tiny_segmenter


def test_planes_and_weights_of_a_correction():
    previous = np.zeros((3, 8, 8), np.int32)
    previous[0, 1:3, 1:3] = 1  # plane 0 predicted; planes 1 and 2 never were
    corrected = previous.copy()
    corrected[2, 4, 4] = 1  # a correction painted on plane 2
    assert annotated_planes(previous, corrected) == [0, 2]
    weights = edit_weights(previous, corrected, 5.0)
    assert weights.dtype == np.float32 and weights[2, 4, 4] == 5.0 and (weights.sum() - 5.0) == previous.size - 1


def test_retrain_settings_come_from_the_model_and_the_retrain_config(small_model):
    cfg = retrain_finetune_config(small_model, RetrainConfig(steps=7, edit_weight=3.0, seed=2, device="cpu"))
    assert (cfg.steps, cfg.edit_weight, cfg.seed, cfg.device) == (7, 3.0, 2, "cpu")
    assert (cfg.batch, cfg.data.patch, cfg.model.base) == (2, 32, 4)  # the model's own training settings
    assert cfg.val_fraction == 0.0 and cfg.fraction == 1.0


def test_retrain_without_corrections_is_refused(small_model):
    image = blobs((64, 64), seed=6)[0]
    previous = np.zeros((64, 64), np.int32)
    previous[10:20, 10:20] = 1
    with pytest.raises(TowerError, match="no corrections"):
        retrain(small_model, image, previous, previous.copy(), RetrainConfig(steps=2, device="cpu"))
    with pytest.raises(TowerError, match="shape"):
        retrain(small_model, image, previous[:32], previous[:32], RetrainConfig(steps=2, device="cpu"))


def test_retrain_is_reproducible_and_learns_the_edits(small_model, tmp_path):
    image, truth = blobs((64, 64), seed=6)
    previous = np.zeros((64, 64), np.int32)
    corrected = (truth > 0).astype(np.int32)  # the user painted every nucleus into an empty prediction
    cfg = RetrainConfig(steps=3, edit_weight=5.0, seed=1, device="cpu")
    path = small_model.save(tmp_path / "model.pt")
    first = retrain(path, image, previous, corrected, cfg)  # from files, as a command would
    again = retrain(small_model, image, previous, corrected, cfg)
    assert first.planes == [0] and first.edited == int(corrected.sum()) and not first.stopped
    assert first.model.step == 3 and first.model.config["edit_weight"] == 5.0
    assert all(torch.equal(first.model.state[k], again.model.state[k]) for k in first.model.state)
    assert np.array_equal(first.prediction.labels, again.prediction.labels)
    assert first.labels(previous).shape == (64, 64)
    assert not all(torch.equal(first.model.state[k], small_model.state[k]) for k in small_model.state)


def test_a_retrain_limited_to_reviewed_regions_learns_nothing_from_the_rest(small_model):
    image, truth = blobs((64, 64), seed=6)
    previous = np.zeros((64, 64), np.int32)
    corrected = (truth > 0).astype(np.int32)
    reviewed = np.zeros((64, 64), np.uint8)
    reviewed[:32] = 1  # the user checked the top half only
    cfg = RetrainConfig(steps=3, seed=1, device="cpu")
    top = retrain(small_model, image, previous, corrected, cfg, reviewed=reviewed)
    assert top.edited == int(corrected[:32].sum())
    scrambled = corrected.copy()
    scrambled[40:] = 1 - scrambled[40:]  # whatever the unchecked half says (away from the seam) ...
    other = retrain(small_model, image, previous, scrambled, cfg, reviewed=reviewed)
    # ... the retrained weights are the same: the unchecked pixels carry no loss.
    assert all(torch.allclose(top.model.state[k].float(), other.model.state[k].float(), atol=1e-6)
               for k in top.model.state)
    whole = retrain(small_model, image, previous, scrambled, cfg)
    assert not all(torch.allclose(top.model.state[k].float(), whole.model.state[k].float(), atol=1e-6)
                   for k in top.model.state)
    with pytest.raises(TowerError, match="no corrections"):
        retrain(small_model, image, previous, corrected, cfg, reviewed=np.zeros((64, 64), np.uint8))


def test_stopping_a_retrain_keeps_the_model_without_a_prediction(small_model):
    image, truth = blobs((64, 64), seed=6)
    result = retrain(small_model, image, np.zeros((64, 64), np.int32), (truth > 0).astype(np.int32),
                     RetrainConfig(steps=50, device="cpu"), should_stop=lambda: True)
    assert result.stopped and result.prediction is None and result.model.kind == "segmenter"


@pytest.mark.gui
def test_the_widget_retrain_is_the_core_retrain(make_napari_viewer, qtbot, errors, tmp_path):
    """Same model, image, prediction, corrections and seed: the widget's Retrain and `retrain` agree exactly."""
    pytest.importorskip("napari")
    pytest.importorskip("pytestqt")
    from napari_tower.napari.layers import labels_to_planes

    from ..widget.test_widget import TINY, configure, correct_region, open_widget, wait_idle

    viewer, widget = open_widget(make_napari_viewer)
    configure(widget, **TINY, finetune_steps=10, retrain_steps=10)
    stack = np.stack([blobs((96, 96), seed=s)[0] for s in range(3)])
    truth = np.stack([blobs((96, 96), seed=s)[1] for s in range(3)])
    image = viewer.add_image(stack, name="nuclei")
    annotations = np.zeros_like(truth)
    annotations[0] = truth[0]
    widget.segment.labels.set_layer(viewer.add_labels(annotations, name="annotations"))
    widget.segment.finetune_button.click()
    wait_idle(qtbot, widget, 60)
    widget.segment.scope.setCurrentText("whole stack")
    widget.segment.predict_button.click()
    wait_idle(qtbot, widget, 60)
    assert not errors, errors
    out = viewer.layers["nuclei tower labels"]
    correct_region(out, 1, (slice(10, 86), slice(10, 86)), truth[1])

    # What a headless run gets from files: the model, the image, the prediction and the corrected labels.
    model_file = widget.save_model(tmp_path / "before.pt")
    record = widget.session.record_for(out)
    previous, corrected = record.written.copy(), labels_to_planes(out, image)
    widget.correct.button.click()
    wait_idle(qtbot, widget, 60)
    assert not errors, errors
    in_widget = widget.session.segmenter

    cfg = RetrainConfig(steps=widget.correct.steps.value, edit_weight=widget.correct.edit_weight.value, seed=0,
                        device="cpu")
    # The widget replays the annotations chosen under 4. Segment (what the model was fine-tuned on): their one
    # annotated plane.
    from napari_tower.data import from_array

    replay = [(from_array(stack[:1], axes="ZYX"), annotations[:1])]
    core = in_job_thread(lambda: retrain(model_file, stack, previous, corrected, cfg, replay=replay))
    assert core.planes == record.planes == [0, 1, 2]
    assert in_widget.step == core.model.step == 10
    assert in_widget.state.keys() == core.model.state.keys()
    assert all(torch.equal(in_widget.state[k], core.model.state[k]) for k in core.model.state)
    assert np.array_equal(np.asarray(out.data), core.labels(previous))
    assert np.array_equal(np.asarray(out.data), core.prediction.labels)

    # The command line, from files only, gives the same model and prediction as the widget.
    from napari_tower.cli import main
    from napari_tower.data import write_tiff
    from napari_tower.model_bundle import ModelBundle

    write_tiff(tmp_path / "stack.tif", stack)
    write_tiff(tmp_path / "previous.tif", previous)
    write_tiff(tmp_path / "corrected.tif", corrected)
    write_tiff(tmp_path / "annotated.tif", stack[0])
    write_tiff(tmp_path / "annotations.tif", annotations[0])
    args = ["retrain", str(model_file), str(tmp_path / "stack.tif"), "--labels", str(tmp_path / "corrected.tif"),
            "--previous", str(tmp_path / "previous.tif"), "--out", str(tmp_path / "after.pt"),
            "--prediction", str(tmp_path / "new.tif"), "--axes", "ZYX", "--steps", str(cfg.steps),
            "--edit-weight", str(cfg.edit_weight), "--seed", "0", "--device", "cpu", "--quiet",
            "--train-images", str(tmp_path / "annotated.tif"), "--train-labels", str(tmp_path / "annotations.tif")]
    from napari_tower.napari.workers import training_threads

    threads = torch.get_num_threads()
    torch.set_num_threads(training_threads())  # bit-identical float sums need the job's thread count
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    from_cli = ModelBundle.load(tmp_path / "after.pt")
    assert from_cli.step == in_widget.step
    assert all(torch.equal(in_widget.state[k], from_cli.state[k]) for k in in_widget.state)
    import tifffile

    assert np.array_equal(tifffile.imread(tmp_path / "new.tif"), np.asarray(out.data))


def test_a_correction_that_rewrites_most_pixels_does_not_outweigh_the_rest():
    """A few strokes keep the full edit weight; erasing a flooded region caps it so that edits weigh no more than
    the unedited pixels learnt from (at least 1)."""
    from napari_tower.segment.retrain import cap_edit_weight

    weights = np.ones((1, 10, 10), np.float32)
    strokes = np.zeros((1, 10, 10), bool)
    strokes[0, 0, :5] = True  # 5 edited pixels against 95 others
    weights[strokes] = 5.0
    assert np.array_equal(cap_edit_weight(weights, strokes, 5.0), weights)
    flood = np.zeros((1, 10, 10), bool)
    flood[0, :8] = True  # 80 edited against 20: 20/80 < 1, so the edits weigh 1 like the rest
    weights = np.where(flood, 5.0, 1.0).astype(np.float32)
    capped = cap_edit_weight(weights, flood, 5.0)
    assert np.allclose(capped[flood], 1.0) and np.allclose(capped[~flood], 1.0)
    half = np.zeros((1, 10, 10), bool)
    half[0, :2] = True  # 20 against 80: 4x
    capped = cap_edit_weight(np.where(half, 5.0, 1.0).astype(np.float32), half, 5.0)
    assert np.allclose(capped[half], 4.0)


def test_the_cli_retrain_needs_one_labels_file_per_training_image(tmp_path, small_model, capsys):
    from napari_tower.cli import main
    from napari_tower.data import write_tiff

    image, truth = blobs((64, 64), seed=6)
    write_tiff(tmp_path / "image.tif", image)
    write_tiff(tmp_path / "labels.tif", (truth > 0).astype(np.int32))
    model = small_model.save(tmp_path / "model.pt")
    code = main(["retrain", str(model), str(tmp_path / "image.tif"), "--labels", str(tmp_path / "labels.tif"),
                 "--previous", str(tmp_path / "labels.tif"), "--out", str(tmp_path / "out.pt"), "--quiet",
                 "--train-images", str(tmp_path / "image.tif")])
    assert code != 0 and not (tmp_path / "out.pt").exists()
    assert "one labels file per training image" in capsys.readouterr().err

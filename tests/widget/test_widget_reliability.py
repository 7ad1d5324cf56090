"""The catalogue of bad inputs (docs/bad-inputs.md) through the widget, interruption, and autosave.

Real viewers and real clicks, as in test_widget.py: every bad input shows one
message naming the problem and the fix (never a traceback), and every layer,
label and model the user had is still there, unchanged, afterwards.
Run under a virtual display: `xvfb-run -a python -m pytest tests/test_widget_reliability.py`.
"""

from __future__ import annotations

import resource
import shutil
import threading
import time

import numpy as np
import pytest
import tifffile
import torch

from napari_tower.model_bundle import VERSION, ModelBundle

from ..cli.test_bad_inputs import Kit, _CreatesFile, _truncated_copy, kit  # noqa: F401 - kit is a fixture
from ..conftest import blobs

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui
WIDGET = "TOWER segmentation"


def open_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-tower", WIDGET)
    t = widget.train
    t.steps.value = 4
    t.patch.value = 64
    t.batch.value = 2
    t.base.value = 4
    t.device.value = "cpu"
    widget.segment.steps.value = 2
    widget.correct.steps.value = 2
    return viewer, widget


def wait_idle(qtbot, widget, timeout_s: float = 60) -> None:
    qtbot.waitUntil(lambda: not widget.busy, timeout=int(timeout_s * 1000))


def layer_state(viewer) -> list[tuple]:
    """Every layer, its name and a copy of its data: what must survive a bad input."""
    return [(layer, layer.name, np.array(layer.data, copy=True)) for layer in viewer.layers]


def assert_layers_kept(viewer, before: list[tuple]) -> None:
    assert [layer for layer, _, _ in before] == list(viewer.layers)
    for layer, name, data in before:
        assert layer.name == name and np.array_equal(np.asarray(layer.data), data, equal_nan=data.dtype.kind == "f")


# ------------------------------------------------------------------------------------------------ bad images

BAD_LAYERS = {
    "constant image": (np.full((64, 64), 9, np.uint16), "constant"),
    "NaN image": (np.where(np.eye(64) > 0, np.nan, 1.0).astype(np.float32), "NaN"),
    "Inf image": (np.where(np.eye(64) > 0, np.inf, np.random.default_rng(0).random((64, 64))).astype(np.float32),
                  "infinite"),
    "image smaller than the patch": (np.random.default_rng(0).random((40, 40)).astype(np.float32),
                                     "smaller than the 64 px patch"),
}


@pytest.mark.parametrize("row", list(BAD_LAYERS))
def test_pretraining_on_a_bad_image_layer(row, make_napari_viewer, qtbot, errors):
    data, fragment = BAD_LAYERS[row]
    viewer, widget = open_widget(make_napari_viewer)
    good = viewer.add_labels(np.eye(64, dtype=np.int32), name="my labels")
    viewer.add_image(data, name="bad")
    widget.data.set_selected([viewer.layers["bad"]])
    before = layer_state(viewer)
    widget.train.pretrain_button.click()
    wait_idle(qtbot, widget)
    assert errors and fragment in errors[-1] and "Traceback" not in errors[-1]
    assert "Error" in widget.status.text()
    assert_layers_kept(viewer, before)
    assert good.data.sum() == 64 and widget.session.pretrained is None
    assert widget.train.pretrain_button.isEnabled()


# ------------------------------------------------------------------------------------------------ channels


@pytest.mark.parametrize("row", ["RGB into a grayscale model", "grayscale into an RGB model"])
def test_predicting_with_the_wrong_channel_count(row, kit, make_napari_viewer, qtbot, errors):
    viewer, widget = open_widget(make_napari_viewer)
    if row.startswith("RGB"):
        widget.load_model(kit.segmenter)
        layer = viewer.add_image(tifffile.imread(kit.rgb), name="rgb", rgb=True)
        fragment = "convert it to grayscale"
    else:
        widget.load_model(kit.rgb_segmenter)
        layer = viewer.add_image(blobs((64, 64))[0], name="gray")
        fragment = "expects 3"
    widget.segment.image.set_layer(layer)
    before = layer_state(viewer)
    widget.segment.predict_button.click()
    wait_idle(qtbot, widget)
    assert errors and fragment in errors[-1]
    assert_layers_kept(viewer, before)
    assert widget.session.segmenter is not None  # the model stays loaded


# ------------------------------------------------------------------------------------------------ labels


def test_labels_without_foreground(make_napari_viewer, qtbot, errors):
    viewer, widget = open_widget(make_napari_viewer)
    image = viewer.add_image(blobs((64, 64))[0], name="nuclei")
    empty = viewer.add_labels(np.zeros((64, 64), np.int32), name="annotations")
    widget.segment.image.set_layer(image)
    widget.segment.labels.set_layer(empty)
    before = layer_state(viewer)
    widget.segment.finetune_button.click()
    assert errors and "'annotations' is empty: paint a few objects" in errors[-1]
    assert not widget.busy and widget.session.segmenter is None
    assert_layers_kept(viewer, before)


def test_corrections_with_label_ids_beyond_the_model_classes(kit, make_napari_viewer, qtbot, errors):
    viewer, widget = open_widget(make_napari_viewer)
    widget.load_model(kit.semantic_model)
    image = viewer.add_image(tifffile.imread(kit.stack)[0], name="nuclei")
    widget.segment.image.set_layer(image)
    widget.segment.predict_button.click()
    wait_idle(qtbot, widget)
    assert not errors, errors
    predicted = viewer.layers["nuclei tower labels"]
    predicted.data_setitem((np.arange(5, 15), np.arange(5, 15)), 3)  # a class the model never saw
    before = layer_state(viewer)
    model = widget.session.segmenter
    widget.correct.labels.set_layer(predicted)
    widget.correct.button.click()
    wait_idle(qtbot, widget)
    assert errors and "3 classes but the model knows 2" in errors[-1]
    assert_layers_kept(viewer, before)  # the corrections, 3s included, are untouched
    assert widget.session.segmenter is model


# ------------------------------------------------------------------------------------------------ checkpoints


def _future(kit: Kit, path):
    payload = ModelBundle.load(kit.segmenter).to_dict()
    payload["version"] = VERSION + 1
    torch.save(payload, path)


BAD_CHECKPOINTS = {
    "truncated checkpoint": (lambda kit, p, marker: _truncated_copy(kit.segmenter, p), "damaged"),
    "checkpoint from a future version": (lambda kit, p, marker: _future(kit, p), "upgrade napari-tower"),
    "checkpoint that would run code": (
        lambda kit, p, marker: torch.save({"format": "napari-tower", "version": VERSION, "kind": "segmenter",
                                           "evil": _CreatesFile(marker)}, p), "was refused"),
    "not a checkpoint": (lambda kit, p, marker: p.write_bytes(b"\x89PNG not a model"), "damaged"),
}


@pytest.mark.parametrize("row", list(BAD_CHECKPOINTS))
def test_loading_a_bad_checkpoint_keeps_the_current_model(row, kit, make_napari_viewer, tmp_path, errors):
    make, fragment = BAD_CHECKPOINTS[row]
    viewer, widget = open_widget(make_napari_viewer)
    widget.load_model(kit.segmenter)
    current = widget.session.segmenter
    marker = tmp_path / "pwned.txt"
    bad = tmp_path / "bad.pt"
    make(kit, bad, marker)
    widget.user_action(lambda: widget.load_model(bad))
    assert errors and fragment in errors[-1] and "bad.pt" in errors[-1]
    assert widget.session.segmenter is current
    assert not marker.exists()


def test_saving_a_model_where_it_cannot_be_written(kit, make_napari_viewer, tmp_path, errors):
    viewer, widget = open_widget(make_napari_viewer)
    widget.load_model(kit.segmenter)
    (tmp_path / "a-file").write_text("not a folder")
    widget.user_action(lambda: widget.save_model(tmp_path / "a-file" / "model.pt"))
    assert errors and "part of the path is a file" in errors[-1]


def test_disk_full_while_saving_a_model_keeps_the_earlier_file(kit, make_napari_viewer, tmp_path, errors):
    viewer, widget = open_widget(make_napari_viewer)
    widget.load_model(kit.segmenter)
    saved = tmp_path / "model.pt"
    shutil.copy(kit.pretrained, saved)
    before = saved.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # A real kernel limit (write() fails with EFBIG past 4 kB, like a disk filling up), only while saving.
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        widget.user_action(lambda: widget.save_model(saved))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert errors and "could not write checkpoint" in errors[-1] and "free some space" in errors[-1]
    assert saved.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ------------------------------------------------------------------------------------------------ out of memory


def test_prediction_out_of_memory_is_retried_smaller(kit, make_napari_viewer, qtbot, errors, monkeypatch):
    from napari_tower.config import PredictConfig
    from napari_tower.data import from_array
    from napari_tower.segment import Predictor
    from napari_tower.segment.retry import MIN_TILE

    smallest = max(MIN_TILE, 2 * PredictConfig().overlap)  # the smallest tile the retry goes down to
    data = blobs((300, 300), 40)[0]
    unconstrained = Predictor(ModelBundle.load(kit.segmenter), PredictConfig(device="cpu")).predict(
        from_array(data)).labels[0]
    real_forward = Predictor.forward
    shapes: list[tuple[int, ...]] = []

    def device_with_room_for_one_small_tile(self, x):
        shapes.append(tuple(x.shape))
        if x.shape[0] * x.shape[-2] * x.shape[-1] > smallest * smallest:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB")
        return real_forward(self, x)

    monkeypatch.setattr(Predictor, "forward", device_with_room_for_one_small_tile)
    viewer, widget = open_widget(make_napari_viewer)
    widget.load_model(kit.segmenter)
    image = viewer.add_image(data, name="nuclei")
    widget.segment.image.set_layer(image)
    widget.segment.predict_button.click()
    wait_idle(qtbot, widget)
    assert not errors, errors
    assert shapes[0][-1] > smallest and shapes[-1][0] == 1 and shapes[-1][-1] * shapes[-1][-2] <= smallest**2
    labels = viewer.layers["nuclei tower labels"].data
    assert labels.shape == (300, 300) and (labels == unconstrained).mean() > 0.98


# ------------------------------------------------------------------------------------------------ interruption


@pytest.mark.parametrize("change", ["deleted", "replaced"])
def test_source_layer_deleted_or_replaced_mid_run(change, kit, make_napari_viewer, qtbot, errors, warnings_shown):
    viewer, widget = open_widget(make_napari_viewer)
    widget.load_model(kit.segmenter)
    image = viewer.add_image(blobs((128, 128))[0], name="nuclei")
    notes = viewer.add_labels(np.eye(128, dtype=np.int32), name="my notes")
    widget.segment.image.set_layer(image)
    widget.segment.predict_button.click()
    assert widget.busy
    if change == "deleted":
        viewer.layers.remove(image)
    else:
        image.data = blobs((128, 128), seed=3)[0]
    wait_idle(qtbot, widget)
    assert not errors, errors
    assert warnings_shown and ("removed" if change == "deleted" else "changed") in warnings_shown[-1]
    assert "dropped" in warnings_shown[-1]
    assert "nuclei tower labels" not in [layer.name for layer in viewer.layers]
    assert notes.data.sum() == 128


def _job_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "napari-tower-job" and t.is_alive()]


def test_closing_napari_while_training_stops_the_job_cleanly(make_napari_viewer, qtbot, errors):
    viewer, widget = open_widget(make_napari_viewer)
    widget.train.steps.value = 100_000
    viewer.add_image(blobs((128, 128))[0], name="nuclei")
    widget.train.pretrain_button.click()
    qtbot.waitUntil(lambda: widget.train.progress.last is not None and widget.train.progress.last.step >= 1,
                    timeout=60_000)
    assert _job_threads()
    t0 = time.perf_counter()
    viewer.close()
    qtbot.waitUntil(lambda: not _job_threads(), timeout=30_000)
    print(f"the job stopped {time.perf_counter() - t0:.2f} s after napari closed")
    qtbot.wait(200)  # let the worker's last signals arrive at the deleted widget: they must be ignored quietly
    assert not errors, errors


# ------------------------------------------------------------------------------------------------ autosave


def _edit(layer, value: int = 2) -> None:
    layer.data_setitem((np.arange(10, 30), np.arange(10, 30)), value)


def test_autosave_restores_edited_labels_and_the_model(kit, make_napari_viewer, qtbot, errors):
    from napari_tower.napari.autosave import autosave_root

    viewer, widget = open_widget(make_napari_viewer)
    assert not widget.autosave.bar.isVisible() and widget.autosave.offer is None
    widget.load_model(kit.segmenter)
    viewer.add_image(blobs((96, 96))[0], name="nuclei")
    labels = viewer.add_labels(np.zeros((96, 96), np.int32), name="annotations", scale=(2.0, 2.0))
    viewer.add_labels(np.ones((96, 96), np.int32), name="untouched")  # opened, never edited: not autosaved
    _edit(labels)
    assert widget.autosave.has_changes()
    widget.autosave.save_now(wait=True)
    assert not widget.autosave.has_changes()
    expected = np.array(labels.data)
    state = {k: v.clone() for k, v in widget.session.segmenter.state.items()}
    viewer.close()

    viewer2, widget2 = open_widget(make_napari_viewer)
    bar = widget2.autosave.bar
    assert not bar.isHidden() and "annotations" in bar.text.text() and "segmenter" in bar.text.text()
    assert widget2.session.segmenter is None  # nothing is restored without asking
    bar.restore_button.click()
    restored = viewer2.layers["annotations"]
    np.testing.assert_array_equal(restored.data, expected)
    assert tuple(restored.scale) == (2.0, 2.0) and "untouched" not in [layer.name for layer in viewer2.layers]
    ckpt = widget2.session.segmenter
    assert ckpt is not None and all(torch.equal(ckpt.state[k], v) for k, v in state.items())
    assert bar.isHidden() and "Restored 1 labels layer(s) and 1 model(s)" in widget2.status.text()
    widget2.autosave.flush()
    # The restored work now lives in this session's folder; the old one is gone.
    folders = [p for p in autosave_root().iterdir()]
    assert folders == [widget2.autosave.store.folder]
    assert not errors, errors


def test_autosave_timer_saves_changes_and_restored_predictions_can_be_retrained(kit, make_napari_viewer, qtbot,
                                                                               errors):
    viewer, widget = open_widget(make_napari_viewer)
    widget.autosave.timer.setInterval(100)  # a minute in real use
    widget.load_model(kit.segmenter)
    image = viewer.add_image(tifffile.imread(kit.stack)[0], name="nuclei")
    widget.segment.image.set_layer(image)
    widget.segment.predict_button.click()
    wait_idle(qtbot, widget)
    predicted = viewer.layers["nuclei tower labels"]
    _edit(predicted, 2)  # a value no binary prediction holds: every edited pixel is a correction
    manifest = widget.autosave.store.folder / "session.json"
    qtbot.waitUntil(lambda: manifest.exists() and "nuclei tower labels" in manifest.read_text(), timeout=10_000)
    mtime = manifest.stat().st_mtime_ns
    qtbot.wait(400)
    assert manifest.stat().st_mtime_ns == mtime  # nothing changed: nothing written again
    edited = np.array(predicted.data)
    viewer.close()

    viewer2, widget2 = open_widget(make_napari_viewer)
    image2 = viewer2.add_image(tifffile.imread(kit.stack)[0], name="nuclei")  # the user opens the image again
    widget2.autosave.bar.restore_button.click()
    restored = viewer2.layers["nuclei tower labels"]
    np.testing.assert_array_equal(restored.data, edited)
    record = widget2.session.record_for(restored)
    assert record is not None and record.image.layer(viewer2.layers) is image2
    assert record.changed(np.asarray(restored.data)[None]).sum() == 20
    widget2.correct.labels.set_layer(restored)
    widget2.correct.button.click()  # the corrections made before the crash still train the model
    wait_idle(qtbot, widget2)
    assert not errors, errors
    assert widget2.session.segmenter is not None and widget2.session.segmenter.step == 2


def test_autosave_can_be_discarded(make_napari_viewer, qtbot, errors):
    from napari_tower.napari.autosave import autosave_root

    viewer, widget = open_widget(make_napari_viewer)
    labels = viewer.add_labels(np.zeros((32, 32), np.int32), name="scribbles")
    _edit(labels)
    widget.autosave.save_now(wait=True)
    viewer.close()

    viewer2, widget2 = open_widget(make_napari_viewer)
    assert not widget2.autosave.bar.isHidden()
    widget2.autosave.bar.discard_button.click()
    assert widget2.autosave.bar.isHidden() and "scribbles" not in [layer.name for layer in viewer2.layers]
    assert [p for p in autosave_root().iterdir() if p != widget2.autosave.store.folder] == []
    viewer2.close()
    _, widget3 = open_widget(make_napari_viewer)
    assert widget3.autosave.bar.isHidden() and widget3.autosave.offer is None


def test_predicting_an_image_unlike_the_labelled_ones_warns(kit, make_napari_viewer, qtbot, errors, warnings_shown):
    viewer, widget = open_widget(make_napari_viewer)
    widget.load_model(kit.segmenter)  # learnt from fluorescence-like nuclei: bright on dark
    image = blobs((96, 96), seed=7)[0]
    layer = viewer.add_image((int(image.max()) + int(image.min()) - image.astype(np.int32)).astype(np.uint16),
                             name="bright-field")
    widget.segment.image.set_layer(layer)
    widget.segment.predict_button.click()
    wait_idle(qtbot, widget)
    assert not errors and "bright-field tower labels" in viewer.layers  # predicted, with a warning beside it
    assert any("looks unlike the images the model learnt from" in w for w in warnings_shown)

"""The napari plugin as a user meets it: a real viewer, the dock widget from the plugin manager, buttons clicked.

Run under a virtual display: `xvfb-run -a python -m pytest tests/test_widget.py`. With
NAPARI_TOWER_SCREENSHOTS set, the tests also write the screenshots used in docs/widget.md.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from ..conftest import ISBI, blobs

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
WIDGET = "TOWER segmentation"
TINY = {"steps": 8, "patch": 64, "batch": 4, "base": 8}


def open_widget(make_napari_viewer, show: bool = False):
    viewer = make_napari_viewer(show=show or bool(os.environ.get("NAPARI_TOWER_SCREENSHOTS")))
    _, widget = viewer.window.add_plugin_dock_widget("napari-tower", WIDGET)
    if os.environ.get("NAPARI_TOWER_SCREENSHOTS"):
        viewer.window.resize(1500, 1300)
    return viewer, widget


def snap(viewer, widget, name: str) -> None:
    """Screenshot of the viewer and of the widget alone, only when NAPARI_TOWER_SCREENSHOTS is set."""
    if not os.environ.get("NAPARI_TOWER_SCREENSHOTS"):
        return
    from qtpy.QtWidgets import QApplication

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # let the layout catch up with the last texts
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.screenshot(str(SCREENSHOTS / f"{name}.png"), canvas_only=False)
    widget.content.grab().save(str(SCREENSHOTS / f"{name}-widget.png"))  # all sections, not just the visible part


def configure(widget, steps=8, patch=64, batch=4, base=8, finetune_steps=10, retrain_steps=10) -> None:
    t = widget.train
    t.steps.value = steps
    t.patch.value = patch
    t.batch.value = batch
    t.base.value = base
    t.device.value = "cpu"
    widget.segment.steps.value = finetune_steps
    widget.correct.steps.value = retrain_steps


def wait_idle(qtbot, widget, timeout_s: float) -> None:
    qtbot.waitUntil(lambda: not widget.busy, timeout=int(timeout_s * 1000))


class StallMeter:
    """Largest gap between ticks of a 10 ms QTimer: how long the Qt event loop was held up."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.last = None
        self.gaps: list[float] = []

    @property
    def max_gap(self) -> float:
        return max(self.gaps, default=0.0)

    def long_gaps(self, seconds: float) -> int:
        return sum(g > seconds for g in self.gaps)

    def _tick(self) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.gaps.append(now - self.last)
        self.last = now

    def __enter__(self) -> StallMeter:
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.stop()


def correct_region(layer, plane: int, window: tuple[slice, slice], truth: np.ndarray) -> np.ndarray:
    """Fix one region of a prediction to `truth` > 0 the way napari's paint tools write (`data_setitem`).

    Returns the mask (planes, Y, X) of the pixels the correction changed.
    """
    data = np.asarray(layer.data).reshape((-1,) + layer.data.shape[-2:])
    want = (truth[window] > 0).astype(data.dtype)
    ys, xs = np.nonzero(data[plane][window] != want)
    assert ys.size, "nothing to correct in this region"
    values = want[ys, xs]
    ys, xs = ys + window[0].start, xs + window[1].start
    index = (ys, xs) if layer.data.ndim == 2 else (np.full_like(ys, plane), ys, xs)
    layer.data_setitem(index, values)
    changed = np.zeros(data.shape, bool)
    changed[plane, ys, xs] = True
    return changed


def agreement(labels: np.ndarray, truth: np.ndarray, plane: int, window: tuple[slice, slice]) -> float:
    """Share of pixels in the window where the labels' foreground matches the truth."""
    labels = np.asarray(labels).reshape((-1,) + labels.shape[-2:])
    return float(((labels[plane][window] > 0) == (truth[window] > 0)).mean())


# --------------------------------------------------------------------------- no display needed


def test_manifest_is_valid():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-tower")
    manifest.validate_imports()
    assert [w.display_name for w in manifest.contributions.widgets] == [WIDGET]
    assert {s.key for s in manifest.contributions.sample_data} >= {"nuclei", "human_mitosis"}
    assert "napari/layers/segment" in manifest.contributions.menus


def test_sample_data_offline(monkeypatch):
    from napari_tower.napari import sample_data

    [(image, meta, kind)] = sample_data.nuclei()
    assert kind == "image" and image.shape == (520, 696) and image.dtype == np.uint8
    layers = sample_data.nuclei_with_labels()
    assert layers[1][0].shape == image.shape and layers[1][0].max() > 100  # instance ids

    def offline(*_, **__):
        raise ConnectionError("no network")

    monkeypatch.setattr(sample_data, "fetch_human_mitosis", offline)
    with pytest.warns(UserWarning, match="bundled nuclei"):
        [(fallback, meta, _)] = sample_data.human_mitosis()
    assert np.array_equal(fallback, image)


def test_settings_roundtrip(tmp_path):
    from napari_tower.napari import settings

    assert settings.load_settings() == {}
    assert settings.save_settings({"steps": 42})
    assert settings.load_settings() == {"steps": 42}
    assert settings.settings_path().parent == tmp_path / "config"
    settings.settings_path().write_text("{ damaged")
    assert settings.load_settings() == {}
    assert not list(settings.config_dir().glob(".*.tmp"))


def test_retrain_targets_follow_the_model():
    from napari_tower.segment.retrain import retrain_targets

    mask = np.zeros((1, 16, 16), np.int64)
    mask[0, 2:6, 2:6] = 1
    mask[0, 9:14, 9:14] = 1
    assert retrain_targets(mask, "instance").max() == 2  # components become instances
    assert (retrain_targets(mask, "sparse") == mask + 1).all()  # every pixel annotated, 1 = background
    assert (retrain_targets(mask, "binary") == mask).all()


# --------------------------------------------------------------------------- the widget in a viewer


@pytest.mark.gui
def test_workflow_on_synthetic_stack(make_napari_viewer, qtbot, errors):
    """No ../shared needed: previews, pretraining, fine-tuning, prediction, correct and retrain."""
    viewer, widget = open_widget(make_napari_viewer)
    configure(widget, **TINY, finetune_steps=20, retrain_steps=30)
    stack = np.stack([blobs((128, 128), seed=s)[0] for s in range(3)])
    truth = np.stack([blobs((128, 128), seed=s)[1] for s in range(3)])
    image = viewer.add_image(stack, name="nuclei")
    assert widget.data.selected() == [image]
    assert "3 planes of 128 x 128" in widget.data.info.text()

    viewer.dims.set_current_step(0, 1)
    widget.preview.button.click()
    wait_idle(qtbot, widget, 30)
    previews = [l for l in viewer.layers if l.name.startswith("tower preview: ")]
    assert {l.name.split(": ")[1] for l in previews} >= {"nonlinear", "masking", "tower"}
    assert all(l.data.shape == (128, 128) for l in previews)
    widget.preview.button.click()  # again: replaced, not piled up
    wait_idle(qtbot, widget, 30)
    assert len([l for l in viewer.layers if l.name.startswith("tower preview: ")]) == len(previews)
    snap(viewer, widget, "1-preview")
    for layer in previews:
        viewer.layers.remove(layer)

    seen = []
    widget.train.progress.plot.add = (lambda add: lambda p: (seen.append(p), add(p)))(widget.train.progress.plot.add)
    widget.train.pretrain_button.click()
    assert widget.busy and widget.train.stop_button.isEnabled()
    wait_idle(qtbot, widget, 60)
    assert not errors, errors
    assert [p.step for p in seen if not p.done][:3] == [1, 2, 3] and seen[-1].done
    assert widget.session.pretrained.step == TINY["steps"]
    assert "ETA" not in widget.train.progress.text.text() and widget.train.progress.bar.value() == 1
    snap(viewer, widget, "2-pretrain")

    annotations = np.zeros_like(truth)
    annotations[0] = truth[0]  # one annotated plane: the others count as unannotated
    labels = viewer.add_labels(annotations, name="annotations")
    widget.segment.labels.set_layer(labels)
    widget.segment.finetune_button.click()
    wait_idle(qtbot, widget, 60)
    assert not errors, errors
    assert widget.session.segmenter.kind == "segmenter"
    assert "1 annotated plane" in widget.status.text()

    widget.segment.scope.setCurrentText("whole stack")
    widget.segment.probabilities.value = True
    widget.segment.predict_button.click()
    wait_idle(qtbot, widget, 60)
    assert not errors, errors
    out = viewer.layers["nuclei tower labels"]
    assert out.data.shape == stack.shape and out.data.dtype == np.int32
    assert viewer.layers["nuclei tower probabilities"].data.shape == stack.shape
    assert widget.correct.labels.layer() is out
    snap(viewer, widget, "3-predict")

    window = (slice(20, 108), slice(20, 108))
    old_agreement = agreement(out.data, truth[1], 1, window)
    edited = correct_region(out, 1, window, truth[1])
    assert widget.session.record_for(out).changed(np.asarray(out.data)).sum() == edited.sum()
    widget.correct.button.click()
    wait_idle(qtbot, widget, 60)
    assert not errors, errors
    assert [l for l in viewer.layers if l.name.startswith("nuclei tower labels")] == [out]  # same layer
    new_agreement = agreement(out.data, truth[1], 1, window)
    print(f"agreement with the correction in the edited region: {old_agreement:.3f} -> {new_agreement:.3f}")
    assert new_agreement > old_agreement
    snap(viewer, widget, "4-retrain")

    widget.preview.button.click()  # previews replace previews only, never the results
    wait_idle(qtbot, widget, 30)
    assert {"nuclei tower labels", "nuclei tower probabilities", "annotations"} <= {l.name for l in viewer.layers}


@pytest.mark.gui
def test_event_loop_never_stalls_while_pretraining(make_napari_viewer, qtbot, errors):
    """Pretraining (realistic patch and model) runs in a worker: the UI keeps ticking every few ms."""
    viewer, widget = open_widget(make_napari_viewer, show=True)  # shown, so the canvas and plot really paint
    configure(widget, steps=10_000, patch=128, batch=4, base=16)
    path = ISBI / "train-volume.tif"
    if path.exists():
        viewer.open(str(path))
    else:
        viewer.add_image(np.stack([blobs((512, 512), n=60, seed=s)[0] for s in range(4)]), name="blobs")
    widget.volume.set_dims("2d")  # the ISBI stack would pick 3D (issue 17), whose steps take longer than this test waits
    records = []
    widget.train.progress.plot.add = (lambda add: lambda p: (records.append(p), add(p)))(widget.train.progress.plot.add)
    with StallMeter() as meter:
        widget.train.pretrain_button.click()
        qtbot.waitUntil(lambda: len(records) >= 15, timeout=60_000)
        widget.train.stop_button.click()
        wait_idle(qtbot, widget, 30)
    print(f"max event-loop stall while pretraining: {meter.max_gap * 1000:.1f} ms over {len(records)} records")
    assert not errors, errors
    # A training step here takes ~350 ms, so a job on the UI thread would fail both bounds at every step;
    # one hiccup (a garbage collection, the runner's load) may reach ~150 ms on a busy 2-core machine.
    assert meter.long_gaps(0.100) <= 1, meter.gaps
    assert meter.max_gap < 0.250


@pytest.mark.gui
def test_stop_keeps_a_checkpoint(make_napari_viewer, qtbot, errors):
    viewer, widget = open_widget(make_napari_viewer)
    configure(widget, steps=100_000, patch=64, batch=4, base=8)
    viewer.add_image(blobs((128, 128))[0], name="nuclei")
    widget.train.pretrain_button.click()
    qtbot.waitUntil(lambda: widget.train.progress.last is not None and widget.train.progress.last.step >= 3,
                    timeout=30_000)
    t0 = time.perf_counter()
    widget.train.stop_button.click()
    wait_idle(qtbot, widget, 10)
    took = time.perf_counter() - t0
    print(f"stop took {took:.2f} s")
    assert took < 2.0
    assert not errors, errors
    ckpt = widget.session.pretrained
    assert ckpt is not None and 3 <= ckpt.step < 100_000
    assert widget.train.progress.last.stopped and "stopped" in widget.status.text()
    assert widget.train.pretrain_button.isEnabled() and not widget.train.stop_button.isEnabled()


@pytest.mark.gui
def test_bad_input_shows_a_message_and_leaves_layers_alone(make_napari_viewer, qtbot, errors):
    viewer, widget = open_widget(make_napari_viewer)
    configure(widget, **TINY)
    image = viewer.add_image(blobs((64, 64))[0], name="nuclei")
    widget.segment.finetune_button.click()  # no labels layer at all
    assert errors and "Labels layer" in errors[-1] and "Error" in widget.status.text()

    wrong = viewer.add_labels(np.ones((32, 48), np.int32), name="other labels")
    kept = [(l, np.array(l.data, copy=True)) for l in viewer.layers]
    widget.segment.labels.set_layer(wrong)
    widget.segment.finetune_button.click()
    assert "shape (32, 48)" in errors[-1] and "(64, 64)" in errors[-1]

    widget.segment.predict_button.click()
    assert "no segmenter" in errors[-1]
    widget.correct.labels.set_layer(wrong)
    widget.correct.button.click()
    assert "Predict first" in errors[-1]

    widget.train.batch.value = 2
    widget.train.patch.value = 16
    widget.data.set_selected([])
    widget.train.pretrain_button.click()
    assert "no image layer" in errors[-1]
    assert not widget.busy
    assert [l for l, _ in kept] == list(viewer.layers)
    assert all(np.array_equal(l.data, d) for l, d in kept)
    assert image.data.shape == (64, 64)


@pytest.mark.gui
def test_result_never_goes_into_a_changed_layer(make_napari_viewer, qtbot, errors):
    from napari_tower.napari.segmenting import write_prediction
    from napari_tower.napari.session import LayerTag
    from napari_tower.segment import Prediction

    viewer, widget = open_widget(make_napari_viewer)
    image = viewer.add_image(blobs((64, 64))[0], name="nuclei")
    tag = LayerTag.of(image)
    fake = Prediction(np.zeros((1, 2, 64, 64), np.float32), np.ones((1, 64, 64), np.int32))
    image.data = blobs((64, 64), seed=1)[0]  # the user replaced the data while the job ran
    n = len(viewer.layers)
    assert write_prediction(widget, tag, fake, [0], "binary") is None
    assert len(viewer.layers) == n and "changed" in widget.status.text()

    tag = LayerTag.of(image)
    out = write_prediction(widget, tag, fake, [0], "binary")
    assert out is not None and out.data.sum() == 64 * 64
    out.data = np.zeros_like(out.data)  # edited while a retrain ran: a new layer, edits untouched
    again = write_prediction(widget, tag, fake, [0], "binary", into=out, expected=np.ones((1, 64, 64)))
    assert again is not out and out.data.sum() == 0 and again.data.sum() == 64 * 64
    viewer.layers.remove(image)
    assert write_prediction(widget, tag, fake, [0], "binary") is None and "removed" in widget.status.text()


@pytest.mark.gui
def test_models_and_settings_persist(make_napari_viewer, qtbot, errors, tmp_path):
    viewer, widget = open_widget(make_napari_viewer)
    configure(widget, **TINY)
    widget.train.method.value = "simclr"
    viewer.add_image(blobs((64, 64))[0], name="nuclei")
    with pytest.raises(Exception, match="no model"):
        widget.save_model(tmp_path / "none.pt")
    widget.train.pretrain_button.click()
    wait_idle(qtbot, widget, 60)
    assert not errors, errors
    path = widget.save_model(tmp_path / "models" / "simclr.pt")
    widget.session.pretrained = None
    assert widget.load_model(path) == "pretrained"
    assert widget.session.pretrained.method == "simclr"
    assert "pretrained: simclr" in widget.models.info.text()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    widget.user_action(lambda: widget.load_model(tmp_path / "junk.pt"))
    assert "junk.pt" in errors[-1] and widget.session.pretrained.method == "simclr"  # the good model stays

    widget.save_settings()
    from napari_tower.napari.settings import load_settings
    from napari_tower.napari.widget import TowerWidget

    assert load_settings()["pretrain"]["method"] == "simclr" and load_settings()["pretrain"]["steps"] == TINY["steps"]
    again = TowerWidget(viewer)
    assert again.train.method.value == "simclr" and again.train.base.value == TINY["base"]
    again.deleteLater()


@pytest.mark.gui
def test_layers_menu_and_sample_data(make_napari_viewer):
    from napari_tower.napari.widget import TowerWidget, open_from_menu

    viewer = make_napari_viewer()
    open_from_menu(viewer)
    assert any(isinstance(w, TowerWidget) for w in viewer.window.dock_widgets.values())
    viewer.open_sample("napari-tower", "nuclei_with_labels")
    assert [l.name for l in viewer.layers] == ["nuclei (DSB 2018)", "nuclei ground truth"]


def _round_trip(viewer, widget, qtbot, errors, image_layer, labels_layer, truth, shot: str = "") -> float:
    """Fine-tune (setup), predict the current slice, paint a correction, then time Retrain -> new prediction."""
    widget.segment.image.set_layer(image_layer)
    widget.segment.labels.set_layer(labels_layer)
    widget.segment.finetune_button.click()
    wait_idle(qtbot, widget, 120)
    assert not errors, errors
    widget.segment.scope.setCurrentText("current slice")
    widget.segment.predict_button.click()
    wait_idle(qtbot, widget, 60)
    assert not errors, errors
    out = viewer.layers[f"{image_layer.name} tower labels"]
    assert out.data.shape == labels_layer.data.shape
    if shot:
        snap(viewer, widget, shot)
    plane = 0 if out.data.ndim == 2 else int(viewer.dims.current_step[0])
    window = (slice(128, 384), slice(128, 384))
    old_agreement = agreement(out.data, truth, plane, window)
    correct_region(out, plane, window, truth)
    t0 = time.perf_counter()
    widget.correct.button.click()
    wait_idle(qtbot, widget, 60)
    took = time.perf_counter() - t0
    assert not errors, errors
    new_agreement = agreement(out.data, truth, plane, window)
    print(f"agreement with the correction in the edited region: {old_agreement:.3f} -> {new_agreement:.3f}")
    assert new_agreement > old_agreement
    return took


@pytest.mark.gui
def test_correct_and_retrain_round_trip_512(make_napari_viewer, qtbot, errors):
    """Realistic settings (batch 4, patch 128, base 16, 40 retrain steps) on a 512 x 512 image: under 30 s."""
    viewer, widget = open_widget(make_napari_viewer)
    configure(widget, steps=10, patch=128, batch=4, base=16, finetune_steps=20, retrain_steps=40)
    image, truth = blobs((512, 512), n=80, seed=3)
    image_layer = viewer.add_image(image, name="cells")
    labels_layer = viewer.add_labels(truth, name="annotations")
    took = _round_trip(viewer, widget, qtbot, errors, image_layer, labels_layer, truth)
    print(f"correct-and-retrain round trip on 512 x 512: {took:.1f} s")
    assert took < 30


@pytest.mark.gui
def test_isbi_stack_dropped_in(isbi_volume, isbi_labels, make_napari_viewer, qtbot, errors):
    """The real EM stack opened like a drag-and-drop, two annotated slices, and one correction round."""
    # The data fixtures come first so a missing ../shared skips before napari's viewer fixture is set up.
    import tifffile

    viewer, widget = open_widget(make_napari_viewer)
    configure(widget, steps=6, patch=128, batch=4, base=16, finetune_steps=20, retrain_steps=20)
    [image_layer] = viewer.open(str(isbi_volume))
    assert image_layer.data.shape == (30, 512, 512)
    assert widget.volume.dims() == "3d"  # 30 slices: auto picks 3D; this test is the 2D-per-plane path (issue 17)
    widget.volume.set_dims("2d")
    assert "30 planes of 512 x 512" in widget.data.info.text()
    widget.train.pretrain_button.click()
    wait_idle(qtbot, widget, 120)
    assert not errors, errors
    snap(viewer, widget, "isbi-pretrain")
    truth = tifffile.imread(isbi_labels)
    annotations = np.zeros(truth.shape, np.int32)
    annotations[[0, 10]] = (truth[[0, 10]] > 0).astype(np.int32)
    labels_layer = viewer.add_labels(annotations, name="two annotated slices")
    viewer.dims.set_current_step(0, 20)
    widget.preview.button.click()
    wait_idle(qtbot, widget, 30)
    assert viewer.layers["tower preview: masking"].data.shape == (512, 512)
    snap(viewer, widget, "isbi-preview")
    for layer in [l for l in viewer.layers if l.name.startswith("tower preview: ")]:
        viewer.layers.remove(layer)
    took = _round_trip(viewer, widget, qtbot, errors, image_layer, labels_layer, truth[20], shot="isbi-predict")
    print(f"correct-and-retrain round trip on an ISBI 512 x 512 slice: {took:.1f} s")
    snap(viewer, widget, "isbi-retrain")
    assert took < 30


def _sparse_supported() -> bool:
    from napari_tower.config import FinetuneConfig
    from napari_tower.errors import TowerError

    try:
        FinetuneConfig(target="sparse").validate()
    except TowerError:
        return False
    return True


@pytest.mark.gui
@pytest.mark.skipif(not _sparse_supported(), reason="the core's FinetuneConfig.validate does not accept target='sparse' yet")
def test_sparse_scribbles_then_retrain(make_napari_viewer, qtbot, errors):
    """Scribbles (1 = background, 2 = nuclei) on one slice are enough to fine-tune, predict and retrain."""
    viewer, widget = open_widget(make_napari_viewer)
    configure(widget, **TINY, finetune_steps=15, retrain_steps=15)
    image, truth = blobs((128, 128), seed=2)
    viewer.add_image(image, name="nuclei")
    scribbles = np.zeros_like(truth)
    scribbles[::7, :][truth[::7, :] == 0] = 1  # background strokes
    scribbles[truth > 0] = np.where(np.arange(truth[truth > 0].size) % 5 == 0, 2, 0)  # a few nucleus pixels
    layer = viewer.add_labels(scribbles, name="scribbles")
    widget.segment.labels.set_layer(layer)
    widget.segment.sparse.value = True
    widget.segment.finetune_button.click()
    wait_idle(qtbot, widget, 60)
    assert not errors, errors
    assert widget.session.segmenter.target == "sparse"
    widget.segment.predict_button.click()
    wait_idle(qtbot, widget, 60)
    out = viewer.layers["nuclei tower labels"]
    assert out.data.shape == image.shape and set(np.unique(out.data)) <= {0, 1}
    window = (slice(0, 64), slice(0, 64))
    correct_region(out, 0, window, truth)
    widget.correct.button.click()
    wait_idle(qtbot, widget, 60)
    assert not errors, errors
    assert out.data.shape == image.shape


def test_sparse_objects_train_an_instance_model(make_napari_viewer, qtbot, errors):
    """Some whole objects painted with their own ids plus background strokes (issue 20): ticking "each id one
    object" trains a shape-aware instance model whose prediction holds separate objects."""
    viewer, widget = open_widget(make_napari_viewer)
    configure(widget, **TINY, finetune_steps=40)
    image, truth = blobs((128, 128), n=14, seed=2)
    viewer.add_image(image, name="nuclei")
    painted = np.zeros_like(truth)
    painted[::6, :][truth[::6, :] == 0] = 1  # background strokes
    for k, obj in enumerate(np.unique(truth[truth > 0])[::2]):  # every other nucleus, each its own id
        painted[truth == obj] = k + 2
    layer = viewer.add_labels(painted, name="objects")
    widget.segment.labels.set_layer(layer)
    assert not widget.segment.sparse_objects.enabled  # only meaningful for sparse painting
    widget.segment.sparse.value = True
    assert widget.segment.sparse_objects.enabled
    widget.segment.sparse_objects.value = True
    assert widget.segment.finetune_config().target == "sparse_instance"
    assert widget.segment.finetune_config().instance_head == "capped"  # the boundary head needs dense labels
    widget.segment.finetune_button.click()
    wait_idle(qtbot, widget, 120)
    assert not errors, errors
    model = widget.session.segmenter
    assert model.target == "instance" and model.instance_head == "capped"
    widget.segment.instances.value = True
    widget.segment.predict_button.click()
    wait_idle(qtbot, widget, 60)
    assert not errors, errors
    out = viewer.layers["nuclei tower labels"].data
    assert out.shape == image.shape and out.max() >= 2  # separate objects, not one foreground class


@pytest.mark.gui
def test_rgb_image_layer(make_napari_viewer, qtbot, errors):
    """An RGB layer is one 3-channel plane: previews are RGB, labels have the layer's Y, X shape."""
    viewer, widget = open_widget(make_napari_viewer)
    configure(widget, **TINY)
    gray, truth = blobs((96, 96), seed=4)
    rgb = np.stack([gray // 4, gray // 8, gray // 4], axis=-1).astype(np.uint8)
    layer = viewer.add_image(rgb, name="stained", rgb=True)
    assert "RGB" in widget.data.info.text()
    widget.preview.button.click()
    wait_idle(qtbot, widget, 30)
    assert not errors, errors
    assert viewer.layers["tower preview: masking"].rgb and viewer.layers["tower preview: masking"].data.shape == rgb.shape
    widget.segment.image.set_layer(layer)
    widget.segment.labels.set_layer(viewer.add_labels(truth, name="truth"))
    widget.segment.finetune_button.click()
    wait_idle(qtbot, widget, 60)
    widget.segment.predict_button.click()
    wait_idle(qtbot, widget, 60)
    assert not errors, errors
    assert viewer.layers["stained tower labels"].data.shape == (96, 96)


@pytest.mark.gui
def test_preview_of_a_large_image_is_a_crop_around_the_view(make_napari_viewer, qtbot, errors):
    viewer, widget = open_widget(make_napari_viewer)
    big = np.tile(blobs((128, 128))[0], (9, 10))[:1100, :1250]
    layer = viewer.add_image(big, name="big", scale=(0.5, 0.5))
    viewer.camera.center = (0, 100.0, 500.0)  # world units: data row 200, column 1000
    widget.preview.button.click()
    wait_idle(qtbot, widget, 60)
    assert not errors, errors
    masked = viewer.layers["tower preview: masking"]
    assert masked.data.shape == (1024, 1024)
    assert tuple(masked.scale) == tuple(layer.scale)
    assert np.allclose(masked.translate, (0.0, (1250 - 1024) * 0.5))  # clipped to the image's edges


@pytest.mark.gui
def test_start_from_a_checkpoint_file_for_pretrain_and_finetune(make_napari_viewer, qtbot, errors, tmp_path):
    """'start from' a pretraining file: Pretrain continues it (its shape, not the size box) and Fine-tune without
    a session model starts from it; scratch stays the default."""
    from napari_tower.config import DataConfig, ModelConfig, PretrainConfig
    from napari_tower.data import from_array
    from napari_tower.train import pretrain

    image, truth = blobs((96, 96), seed=4)
    start = tmp_path / "start.pt"
    pretrain([from_array(image)], PretrainConfig(method="simclr", steps=1, batch=2, device="cpu", val_every=0,
                                                 data=DataConfig(patch=64), model=ModelConfig(base=4, depth=2)), start)
    viewer, widget = open_widget(make_napari_viewer)
    configure(widget, **TINY, finetune_steps=2)  # base 8 in the box; the file's network has base 4
    assert widget.train.start.currentText() == "scratch" and widget.train.start.value() is None
    viewer.add_image(image, name="nuclei")
    widget.train.start.set_file(str(start))
    widget.segment.labels.set_layer(viewer.add_labels(truth, name="annotations"))
    widget.segment.finetune_button.click()
    wait_idle(qtbot, widget, 60)
    assert not errors, errors
    assert widget.session.segmenter.init_method == "simclr" and widget.session.segmenter.base == 4
    widget.data.set_selected([viewer.layers["nuclei"]])
    widget.train.pretrain_button.click()
    wait_idle(qtbot, widget, 60)
    assert not errors, errors
    assert widget.session.pretrained.base == 4 and widget.session.pretrained.step == TINY["steps"]

"""The widget's mode, "2D planes / 3D volume" (issue 17), in a real napari viewer: chosen from the dropped layer,
switchable, carried into the configs the jobs get, and 3D corruption previews as 3D layers.

Run under a virtual display: `xvfb-run -a python -m pytest tests/widget/test_widget_volumes.py`.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from ..conftest import blobs
from .test_widget import configure, open_widget, snap, wait_idle

pytest.importorskip("napari")
pytest.importorskip("pytestqt")


def _stack(z: int = 24, size: int = 64) -> np.ndarray:
    return np.stack([blobs((size, size), 6, seed=s)[0] for s in range(z)])


def _configs(widget):
    from napari_tower.napari.training import finetune_config, pretrain_config

    return pretrain_config(widget), finetune_config(widget)


@pytest.mark.gui
def test_a_dropped_stack_selects_3d_with_its_voxel_size(make_napari_viewer):
    viewer, widget = open_widget(make_napari_viewer)
    assert widget.volume.dims() == "2d"  # no image yet
    viewer.add_image(_stack(), name="stack", scale=(4, 1, 1))
    v = widget.volume
    assert v.dims() == "3d" and v.mode.currentText() == "3D volume"
    assert v.voxel_size() == (4.0, 1.0, 1.0)
    assert "24 slices along Z" in v.mode.toolTip() and "auto" in v.mode.toolTip()
    assert all(box.isEnabled() for box in v.voxel) and widget.train.patch_z.enabled
    pre, fine = _configs(widget)
    assert (pre.model.dims, pre.model.voxel_size) == ("3d", (4.0, 1.0, 1.0))
    assert (fine.model.dims, fine.model.voxel_size) == ("3d", (4.0, 1.0, 1.0))
    # Patch, slices and batch left at their (2D) defaults: the 3D CPU defaults of each run (volume_defaults).
    assert (pre.data.patch, pre.data.patch_z, pre.batch) == (64, 16, 4)
    assert (fine.data.patch, fine.data.patch_z, fine.batch) == (128, 4, 2)
    assert ("3D mode: pretraining takes 16 x 64 x 64 sub-volumes, batch 4 (favouring structured regions); "
            "fine-tuning 4 x 128 x 128 sub-volumes, batch 2.") in widget.data.info.text()
    assert "3D volume mode, left at 16: 4 for pretraining, 2 for fine-tuning" in widget.train.batch.tooltip
    widget.train.patch_z.value = 12  # the user's value holds for both runs
    pre, fine = _configs(widget)
    assert pre.data.patch_z == fine.data.patch_z == 12 and (pre.batch, fine.batch) == (4, 2)
    assert "pretraining takes 12 x 64 x 64 sub-volumes" in widget.data.info.text()
    assert "fine-tuning 12 x 128 x 128 sub-volumes" in widget.data.info.text()
    v.set_dims("2d")  # 2D: the controls' values as they are
    pre, fine = _configs(widget)
    assert (pre.data.patch, pre.batch) == (128, 16) and (fine.data.patch, fine.batch) == (128, 16)


@pytest.mark.gui
def test_a_plane_a_time_series_and_a_thin_stack_select_2d(make_napari_viewer):
    viewer, widget = open_widget(make_napari_viewer)
    layer = viewer.add_image(blobs((64, 64))[0], name="plane")
    assert widget.volume.dims() == "2d" and "single plane" in widget.volume.mode.toolTip()
    assert not widget.train.patch_z.enabled and not widget.volume.voxel[0].isEnabled()
    assert _configs(widget)[0].model.dims == "2d"
    viewer.layers.remove(layer)
    viewer.add_image(_stack(), name="movie", axis_labels=("t", "y", "x"))
    assert widget.volume.dims() == "2d" and "time series of 24 frames" in widget.volume.mode.toolTip()
    viewer.layers.remove("movie")
    viewer.add_image(_stack(z=5), name="thin")
    assert widget.volume.dims() == "2d" and "only 5 slices" in widget.volume.mode.toolTip()


@pytest.mark.gui
def test_switching_the_mode_updates_the_configs_and_holds_until_the_layer_changes(make_napari_viewer):
    viewer, widget = open_widget(make_napari_viewer)
    viewer.add_image(_stack(), name="stack", scale=(2.5, 0.5, 0.5))
    v = widget.volume
    assert v.voxel_size() == (2.5, 0.5, 0.5)
    v.set_dims("2d")
    assert v.user_chose and "chosen by you; auto would choose 3D volume" in v.mode.toolTip()
    assert _configs(widget)[0].model.dims == "2d" and _configs(widget)[1].model.dims == "2d"
    assert not widget.train.patch_z.enabled
    viewer.add_image(blobs((64, 64))[0], name="other")  # a new layer, the stack still the one learnt from
    assert v.dims() == "2d" and v.user_chose
    v.set_dims("3d")
    v.voxel[0].setValue(5.0)
    pre, fine = _configs(widget)
    assert pre.model.voxel_size == fine.model.voxel_size == (5.0, 0.5, 0.5) and fine.model.dims == "3d"
    widget.data.set_selected([viewer.layers["other"]])  # another image to learn from: auto again
    assert v.dims() == "2d" and not v.user_chose


@pytest.mark.gui
def test_3d_mode_refuses_a_plane_and_a_2d_starting_model(make_napari_viewer, tiny_segmenter):
    viewer, widget = open_widget(make_napari_viewer)
    viewer.add_image(blobs((64, 64))[0], name="plane")
    widget.volume.set_dims("3d")
    widget.pretrain()
    assert "not a z-stack" in widget.status.text() and not widget.busy
    from napari_tower.napari.training import check_mode_fits

    pre, _ = _configs(widget)
    with pytest.raises(Exception, match="switch the mode to 2D planes"):
        check_mode_fits(tiny_segmenter, pre)


@pytest.mark.gui
def test_3d_preview_shows_volumes(make_napari_viewer, qtbot, errors):
    viewer, widget = open_widget(make_napari_viewer)
    configure(widget)
    viewer.add_image(_stack(z=12, size=48), name="stack", scale=(3, 1, 1), translate=(10, 0, 0))
    assert widget.volume.dims() == "3d"
    widget.preview.button.click()
    wait_idle(qtbot, widget, 60)
    assert not errors, errors
    previews = [l for l in viewer.layers if l.name.startswith("tower preview: ")]
    names = {l.name.split(": ", 1)[1] for l in previews}
    assert names == {"nonlinear", "masking", "shuffle", "inpaint", "outpaint", "tower"}
    for layer in previews:
        assert layer.data.shape == (12, 48, 48) and layer.data.dtype == np.float32
        assert tuple(layer.scale) == (3, 1, 1) and tuple(layer.translate) == (10, 0, 0)
        assert layer.data.min() >= 0.0 and layer.data.max() <= 1.0
    masking = viewer.layers["tower preview: masking"].data
    assert (masking == 0).any() and not np.array_equal(masking, viewer.layers["tower preview: nonlinear"].data)
    assert "Previewed 6" in widget.status.text()
    if os.environ.get("NAPARI_TOWER_SCREENSHOTS"):
        for layer in viewer.layers:  # the stack and its TOWER view (masked 3D cells) only
            layer.visible = layer.name in ("stack", "tower preview: tower")
        viewer.layers["tower preview: tower"].rendering = "attenuated_mip"
        viewer.dims.ndisplay = 3
        viewer.reset_view()
        viewer.camera.angles = (10, -25, 60)
        snap(viewer, widget, "volumes-3d-preview")


def _has_3d_engines() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in
               ("napari_tower.proxy.tasks3d", "napari_tower.segment.finetune3d"))


@pytest.mark.gui
@pytest.mark.skipif(not _has_3d_engines(), reason="the 3D pretraining and fine-tuning engines are not in this build")
def test_3d_mode_pretrains_finetunes_from_two_slices_predicts_and_retrains(make_napari_viewer, qtbot, errors):
    """The front end's choices reach the 3D engines: a 3D model comes out, predicts the whole volume and retrains."""
    viewer, widget = open_widget(make_napari_viewer)
    # Two steps test the wiring; the docs' screenshots (NAPARI_TOWER_SCREENSHOTS) need a model that has learnt.
    shots = bool(os.environ.get("NAPARI_TOWER_SCREENSHOTS"))
    configure(widget, steps=40 if shots else 2, patch=32, batch=2, base=4, finetune_steps=200 if shots else 2)
    widget.train.patch_z.value = 8
    images, truths = zip(*[blobs((64, 64), 8, seed=s) for s in range(16)])
    image = viewer.add_image(np.stack(images), name="stack", scale=(3, 1, 1))
    assert widget.volume.dims() == "3d"
    widget.train.pretrain_button.click()
    wait_idle(qtbot, widget, 120)
    assert not errors, errors
    assert widget.session.pretrained.spatial_dims == 3
    sparse = np.zeros((16, 64, 64), np.int32)
    for z in (3, 10):
        sparse[z] = (np.asarray(truths[z]) > 0) + 1  # 1 = background, 2 = object, on two slices only
    labels = viewer.add_labels(sparse, name="two slices")
    widget.segment.image.set_layer(image)
    widget.segment.labels.set_layer(labels)
    widget.segment.sparse.value = True
    widget.segment.finetune_button.click()
    wait_idle(qtbot, widget, 120)
    assert not errors, errors
    ckpt = widget.session.segmenter
    assert ckpt.spatial_dims == 3 and tuple(ckpt.config["model"]["voxel_size"]) == (3.0, 1.0, 1.0)
    widget.segment.predict_button.click()
    wait_idle(qtbot, widget, 120)
    assert not errors, errors
    out = viewer.layers["stack tower labels"]
    assert out.data.shape == (16, 64, 64)
    if shots:
        viewer.layers["two slices"].visible = False
        viewer.dims.ndisplay = 3
        viewer.reset_view()
        viewer.camera.angles = (10, -25, 60)
        snap(viewer, widget, "volumes-3d-prediction")
        viewer.dims.ndisplay = 2
    corrected = np.asarray(out.data).copy()
    corrected[7, 10:30, 10:30] = 1 - (corrected[7, 10:30, 10:30] > 0)  # one correction on one slice
    out.data = corrected
    widget.correct.labels.set_layer(out)
    widget.correct.steps.value = 2
    widget.correct.button.click()
    wait_idle(qtbot, widget, 120)
    assert not errors, errors
    assert widget.session.segmenter.spatial_dims == 3


@pytest.mark.gui
@pytest.mark.skipif(not _has_3d_engines(), reason="the 3D fine-tuning engine is not in this build")
def test_3d_fine_tuning_with_untouched_controls_uses_and_saves_the_3d_defaults(make_napari_viewer, qtbot, errors):
    from napari_tower.config import FinetuneConfig
    from napari_tower.napari.training import finetune_config

    viewer, widget = open_widget(make_napari_viewer)
    widget.train.base.value, widget.train.device.value, widget.segment.steps.value = 4, "cpu", 1
    images, truths = zip(*[blobs((64, 64), 8, seed=s) for s in range(12)])
    image = viewer.add_image(np.stack(images), name="stack", scale=(3, 1, 1))
    assert widget.volume.dims() == "3d"
    sparse = np.zeros((12, 64, 64), np.int32)
    sparse[6] = (np.asarray(truths[6]) > 0) + 1
    widget.segment.image.set_layer(image)
    widget.segment.labels.set_layer(viewer.add_labels(sparse, name="one slice"))
    widget.segment.sparse.value = True
    widget.segment.finetune_button.click()
    wait_idle(qtbot, widget, 120)
    assert not errors, errors
    saved = widget.session.segmenter.config
    assert (saved["data"]["patch"], saved["data"]["patch_z"], saved["batch"]) == (128, 4, 2)
    assert "3D fine-tuning defaults for a CPU: 4 slices per patch, batch 2" in widget.status.text()
    # A retrain follows its model's mode, not the mode box: a 3D model gets the 3D defaults in 2D mode too.
    widget.volume.set_dims("2d")
    retrain = finetune_config(widget, FinetuneConfig(), dims="3d")
    assert (retrain.data.patch_z, retrain.batch) == (4, 2)
    assert finetune_config(widget, FinetuneConfig()).batch == 16  # 2D: the batch control's value

"""The widget's instances option with a shape-aware instance head (issue 20), under Xvfb."""

from __future__ import annotations

import numpy as np

from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig, PredictConfig
from napari_tower.data import from_array
from napari_tower.model_bundle import ModelBundle
from napari_tower.samples import synthetic_nuclei
from napari_tower.segment import Predictor, finetune

from .test_widget import open_widget, wait_idle


def test_instances_option_gives_the_shape_heads_objects(make_napari_viewer, qtbot, errors, tmp_path):
    image, labels = synthetic_nuclei((128, 128), 16, seed=7)
    cfg = FinetuneConfig(steps=10, batch=2, device="cpu", instance_head="distance", val_fraction=0.0,
                         data=DataConfig(patch=64), model=ModelConfig(base=8, depth=2))
    finetune([from_array(image)], [labels[None]], cfg, tmp_path / "distance.pt")
    viewer, widget = open_widget(make_napari_viewer)
    # The head is a fine-tuning option of the Segment section, from FinetuneConfig.instance_head.
    widget.segment.finetune_controls["instance_head"].value = "stardist"
    assert widget.segment.finetune_config().instance_head == "stardist"

    assert widget.load_model(tmp_path / "distance.pt") == "segmenter"
    layer = viewer.add_image(image, name="nuclei")
    widget.segment.image.set_layer(layer)
    widget.segment.instances.value = True
    widget.segment.predict_button.click()
    wait_idle(qtbot, widget, 120)
    assert not errors, errors
    got = np.asarray(viewer.layers["nuclei tower labels"].data)
    bundle = ModelBundle.load(tmp_path / "distance.pt")
    want = Predictor(bundle, PredictConfig(device="cpu", instances=True)).predict(from_array(image)).labels[0]
    assert bundle.instance_head == "distance" and want.max() > 1
    assert np.array_equal(got.reshape(want.shape), want)  # the distance head's watershed, with its tuned params

    # The split threshold (0: the tuned one) moves the seeds of the same model's maps.
    assert widget.segment.predict_config().seed_threshold == 0.0 and widget.segment.split_threshold.enabled
    widget.segment.split_threshold.value = 0.9
    widget.segment.predict_button.click()
    wait_idle(qtbot, widget, 120)
    assert not errors, errors
    got = np.asarray(viewer.layers["nuclei tower labels"].data)
    split = Predictor(bundle, PredictConfig(device="cpu", instances=True, seed_threshold=0.9))
    assert split.postprocess()["seed_threshold"] == 0.9 != bundle.postprocess["seed_threshold"]
    assert np.array_equal(got.reshape(want.shape), split.predict(from_array(image)).labels[0])

    # Test-time flips: the widget predicts as the Predictor does with the eight flips and turns averaged.
    assert widget.segment.predict_config().tta == 1
    widget.segment.test_time_flips.value = 8
    widget.segment.predict_button.click()
    wait_idle(qtbot, widget, 120)
    assert not errors, errors
    got = np.asarray(viewer.layers["nuclei tower labels"].data)
    flipped = Predictor(bundle, PredictConfig(device="cpu", instances=True, seed_threshold=0.9, tta=8))
    averaged = flipped.predict(from_array(image)).labels[0]
    assert np.array_equal(got.reshape(want.shape), averaged)
    assert not np.array_equal(averaged, split.predict(from_array(image)).labels[0])  # the flips changed the objects


def test_a_capped_3d_model_from_two_painted_slices_predicts_3d_objects(make_napari_viewer, qtbot, errors):
    """3D mode with the capped head chosen: fine-tuning on instance ids painted on two slices gives a 3D capped
    model, and Predict with instances writes its 3D objects (the Predictor's, one id through z)."""
    from ..core.volumes import balls

    image, truth = balls((16, 64, 64), n=14, radius=(4, 6), seed=5)
    painted = np.zeros_like(truth)
    painted[[5, 10]] = truth[[5, 10]]
    assert len(np.unique(painted)) > 9  # enough ids to read as instances
    viewer, widget = open_widget(make_napari_viewer)
    widget.train.base.value, widget.train.device.value, widget.train.patch.value = 4, "cpu", 32
    widget.train.patch_z.value = 8
    widget.segment.steps.value = 3
    widget.segment.finetune_controls["instance_head"].value = "capped"
    layer = viewer.add_image(image, name="balls")
    assert widget.volume.dims() == "3d"
    widget.segment.image.set_layer(layer)
    widget.segment.labels.set_layer(viewer.add_labels(painted, name="two slices"))
    widget.segment.finetune_button.click()
    wait_idle(qtbot, widget, 120)
    assert not errors, errors
    bundle = widget.session.segmenter
    assert bundle.spatial_dims == 3 and bundle.instance_head == "capped" and "seed_threshold" in bundle.postprocess
    widget.segment.instances.value = True
    widget.segment.scope.setCurrentText("whole stack")
    widget.segment.predict_button.click()
    wait_idle(qtbot, widget, 120)
    assert not errors, errors
    got = np.asarray(viewer.layers["balls tower labels"].data)
    want = Predictor(bundle, PredictConfig(device="cpu", instances=True)).predict(from_array(image, axes="ZYX"))
    assert got.shape == truth.shape and np.array_equal(got, want.labels)

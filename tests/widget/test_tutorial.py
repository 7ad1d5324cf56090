"""docs/tutorial.md as a test: a TIFF stack opened in napari, to corrected labels saved as a TIFF.

Every step the tutorial describes is done here the way a user does it (the file opened as
napari opens a dropped file, buttons clicked, a correction painted with `data_setitem` like
napari's brush). With NAPARI_TOWER_SCREENSHOTS set, it writes the tutorial's screenshots,
docs/screenshots/tutorial-*.png:

    NAPARI_TOWER_SCREENSHOTS=1 xvfb-run -a -s "-screen 0 1920x1400x24" python -m pytest tests/test_tutorial.py
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile

from napari_tower.demo import demo_stack

from .test_widget import agreement, configure, correct_region, open_widget, snap, wait_idle

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

# Tiny settings keep the test to seconds; the screenshots use settings that give a usable
# segmentation (about 1.5 CPU-minutes more), so the pictures show what a real run looks like.
SCREENSHOTS = bool(os.environ.get("NAPARI_TOWER_SCREENSHOTS"))
SETTINGS = (dict(steps=20, patch=64, batch=8, base=16, finetune_steps=60, retrain_steps=30) if SCREENSHOTS else
            dict(steps=8, patch=64, batch=4, base=8, finetune_steps=20, retrain_steps=30))
WAIT_S = 900 if SCREENSHOTS else 120


@pytest.mark.gui
def test_tutorial_from_a_dropped_tiff_to_corrected_labels(make_napari_viewer, qtbot, errors, tmp_path):
    stack, truth = demo_stack(planes=3, size=128)
    path = tmp_path / "nuclei.tif"
    tifffile.imwrite(path, stack, metadata={"axes": "ZYX"})

    # Open napari and the widget, then drop the file in (napari opens a dropped file with viewer.open).
    viewer, widget = open_widget(make_napari_viewer)
    configure(widget, **SETTINGS)
    (image,) = viewer.open(str(path), plugin="napari")
    assert image.name == "nuclei" and image.data.shape == (3, 128, 128)
    assert widget.data.selected() == [image]
    assert "3 planes of 128 x 128" in widget.data.info.text()
    snap(viewer, widget, "tutorial-1-open")

    # 3. Preview corruptions: what the network will learn to undo.
    widget.preview.button.click()
    wait_idle(qtbot, widget, WAIT_S)
    assert not errors, errors
    previews = [layer for layer in viewer.layers if layer.name.startswith("tower preview: ")]
    assert {p.name.split(": ")[1] for p in previews} >= {"nonlinear", "masking", "tower"}
    snap(viewer, widget, "tutorial-2-preview")
    for layer in previews:
        viewer.layers.remove(layer)

    # 2. Pretrain: no labels needed.
    widget.train.pretrain_button.click()
    wait_idle(qtbot, widget, WAIT_S)
    assert not errors, errors
    assert widget.session.pretrained.step == SETTINGS["steps"]
    snap(viewer, widget, "tutorial-3-pretrain")

    # Annotate one plane: a new Labels layer, objects painted on plane 0 only.
    annotations = viewer.add_labels(np.zeros(stack.shape, np.int32), name="annotations")
    z, y, x = np.nonzero(truth[:1])
    annotations.data_setitem((z, y, x), truth[:1][z, y, x])
    viewer.dims.set_current_step(0, 0)
    snap(viewer, widget, "tutorial-4-annotate")

    # 4. Segment: fine-tune on the annotated plane, predict the whole stack as instances.
    widget.segment.image.set_layer(image)
    widget.segment.labels.set_layer(annotations)
    widget.segment.finetune_button.click()
    wait_idle(qtbot, widget, WAIT_S)
    assert not errors, errors
    assert "1 annotated plane" in widget.status.text()
    widget.segment.scope.setCurrentText("whole stack")
    widget.segment.instances.value = True
    widget.segment.predict_button.click()
    wait_idle(qtbot, widget, WAIT_S)
    assert not errors, errors
    labels = viewer.layers["nuclei tower labels"]
    assert labels.data.shape == stack.shape and all(labels.data[p].max() > 0 for p in range(3))
    viewer.dims.set_current_step(0, 1)
    snap(viewer, widget, "tutorial-5-predict")

    # 5. Correct a region of plane 1 with the paint tools, then retrain from the corrections.
    window = (slice(16, 112), slice(16, 112))
    before = agreement(labels.data, truth[1], 1, window)
    changed = correct_region(labels, 1, window, truth[1])[1]  # pixels the correction changed: all wrong before
    widget.correct.button.click()
    wait_idle(qtbot, widget, WAIT_S)
    assert not errors, errors
    after = agreement(labels.data, truth[1], 1, window)
    learned = float(((np.asarray(labels.data)[1] > 0) == (truth[1] > 0))[changed].mean())
    print(f"region agreement {before:.3f} -> {after:.3f}; corrected pixels now predicted right: {learned:.2f}")
    assert learned >= 0.5 and after > before - 0.02, (learned, before, after)
    snap(viewer, widget, "tutorial-6-retrain")

    # Keep the result: File > Save Selected Layers writes the labels as a TIFF; Save model... the segmenter.
    saved = labels.save(str(tmp_path / "nuclei_labels.tif"))
    assert np.array_equal(tifffile.imread(saved[0]), labels.data)
    widget.save_model(tmp_path / "model.pt")
    assert (tmp_path / "model.pt").stat().st_size > 0

"""The Prototypes section in a real napari viewer: find, name from the gallery, pseudo-labels, fine-tune.

Run under a virtual display: `xvfb-run -a python -m pytest tests/test_widget_prototypes.py`.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from .test_widget import TINY, configure, open_widget, snap, wait_idle


@pytest.mark.gui
def test_prototypes_to_pseudo_labels_to_finetune(make_napari_viewer, qtbot, errors):
    from qtpy.QtWidgets import QLabel

    from napari_tower.napari.sections import owned
    from napari_tower.prototypes import majority_mapping
    from napari_tower.samples import synthetic_nuclei

    viewer, widget = open_widget(make_napari_viewer)
    configure(widget, **TINY, finetune_steps=10)
    image, truth = synthetic_nuclei((128, 128), 25, seed=1)
    layer = viewer.add_image(image, name="nuclei")
    section = widget.prototypes
    assert not section.make_button.isEnabled()

    section.find_button.click()  # no model yet: a message, no job
    assert errors and "Pretrain first" in errors[-1] and not widget.busy

    widget.train.pretrain_button.click()
    wait_idle(qtbot, widget, 60)
    section.k.value = 4
    section.find_button.click()
    assert widget.busy
    wait_idle(qtbot, widget, 60)
    assert not [e for e in errors if "Pretrain first" not in e], errors
    pmap = viewer.layers["nuclei prototypes"]
    assert owned(pmap) == "prototypes" and pmap.data.shape == image.shape
    assert set(np.unique(pmap.data)) <= {1, 2, 3, 4}
    assert len(section.classes) == 4
    thumbs = [section.grid.itemAt(i).widget() for i in range(section.grid.count())]
    assert sum(isinstance(w, QLabel) and w.pixmap() is not None and not w.pixmap().isNull() for w in thumbs) >= 4
    assert section.make_button.isEnabled() and "Found 4 prototypes" in widget.status.text()

    section.make_button.click()  # nothing named yet
    assert "no prototype is named" in errors[-1]

    # The user's naming, simulated: what most of each prototype's pixels are.
    for proto, cls in majority_mapping(np.asarray(pmap.data), truth > 0).items():
        section.set_class(proto, cls)
    section.make_button.click()
    wait_idle(qtbot, widget, 30)
    pseudo = viewer.layers["nuclei pseudo-labels"]
    values = np.asarray(pseudo.data)
    assert set(np.unique(values)) <= {0, 1, 2} and (values == 0).any() and (values == 2).any()
    known = values > 0
    dice = 2 * ((values == 2) & (truth > 0) & known).sum() / ((values == 2).sum() + ((truth > 0) & known).sum())
    print(f"pseudo-label Dice on the annotated {known.mean():.0%} of pixels: {dice:.3f}")
    assert dice > 0.7
    assert widget.segment.image.layer() is layer and widget.segment.labels.layer() is pseudo
    assert widget.segment.sparse.value
    snap(viewer, widget, "prototypes")

    widget.segment.finetune_button.click()  # the pseudo-labels train a segmenter as they are
    wait_idle(qtbot, widget, 60)
    assert widget.session.segmenter is not None and widget.session.segmenter.target == "sparse"

    edited = values.copy()
    edited[:8, :8] = np.where(values[:8, :8] == 1, 2, 1)  # a real change, whatever was there
    pseudo.data = edited  # the user fixes some pseudo-labels by hand
    section.make_button.click()
    wait_idle(qtbot, widget, 30)
    made = [l for l in viewer.layers if owned(l) == "pseudo-labels"]
    assert len(made) == 2 and np.array_equal(pseudo.data, edited)  # a new layer; the edits are untouched
    assert not [e for e in errors if "Pretrain first" not in e and "no prototype" not in e], errors

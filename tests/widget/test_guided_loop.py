"""The guided correct-and-retrain loop in a real viewer: time-budgeted training with a live preview, Next region,
the label history, the pretraining check, the shortcuts and the layout on a 1366 x 768 screen.

The 1366 x 768 screenshot goes to docs/screenshots/laptop-1366x768.png when NAPARI_TOWER_SCREENSHOTS is set.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from ..conftest import blobs
from .test_widget import StallMeter, configure, correct_region, open_widget, wait_idle

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def _annotated(viewer, size=256, n=30, seed=2):
    image, truth = blobs((size, size), n=n, seed=seed)
    image_layer = viewer.add_image(image, name="cells")
    labels_layer = viewer.add_labels(truth, name="annotations")
    return image_layer, labels_layer, truth


def _finetuned(viewer, widget, qtbot, errors):
    """A quick fine-tune and a prediction of the image: the start of the loop."""
    configure(widget, steps=4, patch=64, batch=4, base=8, finetune_steps=15, retrain_steps=8)
    image_layer, labels_layer, truth = _annotated(viewer)
    widget.segment.image.set_layer(image_layer)
    widget.segment.labels.set_layer(labels_layer)
    widget.segment.finetune_button.click()
    wait_idle(qtbot, widget, 120)
    assert not errors, errors
    widget.predict()  # the Alt+P action
    wait_idle(qtbot, widget, 60)
    assert not errors, errors
    return image_layer, viewer.layers["cells tower labels"], truth


def test_time_budgeted_finetune_shows_a_live_preview(make_napari_viewer, qtbot, errors, monkeypatch):
    """Fine-tune for a time budget: the preview layer is refreshed at least twice, the viewer does not stall."""
    from napari_tower.napari import live

    monkeypatch.setattr(live, "LIVE_PREVIEW_EVERY_S", 1.0)
    updates: list[float] = []  # GUI-thread seconds of each preview update
    show = live.show_live_preview

    def timed(*args):
        t = time.perf_counter()
        show(*args)
        updates.append(time.perf_counter() - t)

    monkeypatch.setattr(live, "show_live_preview", timed)
    viewer, widget = open_widget(make_napari_viewer, show=True)  # shown, so the canvas really paints
    configure(widget, steps=4, patch=64, batch=4, base=8, finetune_steps=100_000)
    widget.segment.minutes.value = 0.1  # 6 s, whatever the step count says
    image_layer, labels_layer, _ = _annotated(viewer)
    widget.segment.image.set_layer(image_layer)
    widget.segment.labels.set_layer(labels_layer)
    seen = []
    widget.train.progress.render = (lambda render: lambda p: (seen.append(widget.train.progress.text.text()),
                                                             render(p)))(widget.train.progress.render)
    t0 = time.perf_counter()
    widget.segment.finetune_button.click()  # makes the (empty) preview layer, then trains in a worker
    with StallMeter() as meter:
        wait_idle(qtbot, widget, 120)
    took = time.perf_counter() - t0
    assert not errors, errors
    print(f"{len(updates)} live previews in {took:.1f} s, GUI-thread ms per update "
          f"{[round(u * 1000) for u in updates]}; event-loop gaps over 100 ms (ms): "
          f"{[round(g * 1000) for g in meter.gaps if g > 0.1]}")
    assert widget.loop.live_updates == len(updates) >= 2
    preview = viewer.layers[live.LIVE_PREVIEW_NAME]
    assert preview.data.shape == (256, 256) and preview.data.max() >= 1
    assert widget.session.segmenter.step < 100_000  # the budget, not the step count, ended it
    assert took < 60
    assert any("ETA" in text for text in seen)
    assert preview not in widget.segment.labels.candidates()  # never offered as annotations
    # An update costs the GUI thread 6-60 ms. Its repaint is software OpenGL under Xvfb (llvmpipe), sharing 2 cores
    # with the training: repaints add gaps of 120-270 ms, and one repaint in a run may reach 0.6-0.9 s (sampled: the
    # GUI thread inside vispy's glDrawArrays; CI saw 0.89 s once). Hence one gap over
    # 0.5 s is allowed and none over 2 s: a job on the GUI thread would hold the loop for the whole 6 s.
    assert float(np.median(updates)) < 0.100
    assert meter.long_gaps(0.500) <= 1 and meter.max_gap < 2.0, sorted(meter.gaps)[-5:]


def test_the_live_preview_follows_the_view(make_napari_viewer, qtbot, errors, monkeypatch):
    """Panning during a fine-tune moves the preview to the part now in view, predicted from that part's pixels."""
    from napari_tower.napari import live

    monkeypatch.setattr(live, "LIVE_PREVIEW_EVERY_S", 1.0)
    viewer, widget = open_widget(make_napari_viewer)
    configure(widget, steps=4, patch=64, batch=4, base=8, finetune_steps=100_000)
    widget.segment.minutes.value = 1.0  # stopped as soon as the preview shows objects in the new part
    image_layer, labels_layer, _ = _annotated(viewer, size=640, n=60)
    widget.segment.image.set_layer(image_layer)
    widget.segment.labels.set_layer(labels_layer)
    viewer.camera.center = (128.0, 128.0)  # the top-left part in view
    widget.segment.finetune_button.click()
    preview = viewer.layers[live.LIVE_PREVIEW_NAME]
    assert tuple(preview.translate[-2:]) == (0.0, 0.0)
    qtbot.waitUntil(lambda: widget.loop.live_updates >= 1, timeout=60_000)
    viewer.camera.center = (500.0, 420.0)  # pan to the bottom right
    moved = (500 - 128, 420 - 128)
    qtbot.waitUntil(lambda: tuple(viewer.layers[live.LIVE_PREVIEW_NAME].translate[-2:]) == moved, timeout=30_000)
    # Later previews stay there and, as training goes on, find the objects of that part.
    qtbot.waitUntil(lambda: viewer.layers[live.LIVE_PREVIEW_NAME].data.max() >= 1, timeout=60_000)
    widget.stop()  # the Stop button: the model so far is kept
    wait_idle(qtbot, widget, 60)
    assert not errors, errors
    assert tuple(viewer.layers[live.LIVE_PREVIEW_NAME].translate[-2:]) == moved
    viewer.camera.center = (128.0, 128.0)  # after the job, panning no longer moves the preview
    qtbot.wait(100)
    assert tuple(viewer.layers[live.LIVE_PREVIEW_NAME].translate[-2:]) == moved


def _most_uncertain_region(widget, image_layer, size: int) -> tuple[int, int]:
    """Where the core's flip disagreement (plain prediction) puts the first region of plane 0."""
    from napari_tower.config import PredictConfig
    from napari_tower.napari.layers import image_from_layer
    from napari_tower.segment import Predictor
    from napari_tower.segment.uncertainty import flip_disagreement, suggest_region

    predictor = Predictor(widget.session.segmenter, PredictConfig(device="cpu"))
    image = image_from_layer(image_layer)
    norm = predictor.normalisation_for(image)
    u = flip_disagreement(lambda plane: predictor.probabilities(plane, norm), image.data[0], predictor.target)
    region = suggest_region([u], size, [])
    return region.y, region.x


def test_next_region_history_and_pretraining_check(make_napari_viewer, qtbot, errors):
    """Next region moves the camera and outlines; going back restores a round exactly; the check gives a number."""
    from napari_tower.napari import guided

    viewer, widget = open_widget(make_napari_viewer)
    image_layer, out, truth = _finetuned(viewer, widget, qtbot, errors)
    assert "Next region" in widget.hint.text()
    viewer.camera.center = (0.0, 0.0)
    widget.loop_panel.region_size.value = 96
    widget.segment.test_time_flips.value = 8  # prediction's flips must not blind the flips that find the region
    widget.shortcuts["Alt+N"].activated.emit()  # the shortcut's action
    wait_idle(qtbot, widget, 60)
    assert not errors, errors
    region = widget.loop.regions[id(image_layer)][-1]
    assert (region.y, region.x) == _most_uncertain_region(widget, image_layer, 96)
    outline = viewer.layers[guided.NEXT_REGION_NAME]
    assert len(outline.data) == 1
    np.testing.assert_allclose(outline.data[0].min(0), [region.y, region.x])
    np.testing.assert_allclose(viewer.camera.center[-2:], region.centre)
    first = region

    # Correct the suggested region from the truth, retrain: the corrected labels are kept as round 1.
    window = first.slices()
    correct_region(out, 0, window, truth)
    corrected = np.array(out.data)
    widget.shortcuts["Alt+R"].activated.emit()
    wait_idle(qtbot, widget, 60)
    assert not errors, errors
    assert not np.array_equal(out.data, corrected)  # the new prediction replaced the corrections
    versions = widget.loop.history.versions()
    assert [v.number for v in versions] == [1]
    assert (widget.loop.history.folder / "round-0001.npz").exists()

    # The next suggestion is another region.
    widget.next_region()
    wait_idle(qtbot, widget, 60)
    assert not widget.loop.regions[id(image_layer)][-1].overlaps(first)

    widget.loop_panel.versions.setCurrentIndex(widget.loop_panel.versions.findData(1))
    widget.loop_panel.back_button.click()
    assert not errors, errors
    np.testing.assert_array_equal(out.data, corrected)

    # Did pretraining help? Against the built-in generalist, holding out the last suggested region.
    widget.train.start.setCurrentText(widget.train.start.GENERALIST)
    correct_region(out, 0, widget.loop.regions[id(image_layer)][-1].slices(), truth)
    widget.loop_panel.check_button.click()
    wait_idle(qtbot, widget, 180)
    assert not errors, errors
    check = widget.loop.last_check
    text = widget.loop_panel.check_result.text()
    print(text)
    assert 0.0 <= check.pretrained_dice <= 1.0 and 0.0 <= check.scratch_dice <= 1.0
    assert text.startswith("pretraining ") and any(ch.isdigit() for ch in text)
    assert f"{abs(check.points):.1f}" in text or "no difference" in text


def test_layout_fits_a_laptop_screen(make_napari_viewer, qtbot):
    """At 1366 x 768 every tab shows without scrolling; the shortcuts exist; the screenshot goes to the docs."""
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-tower", "TOWER segmentation")
    viewer.window._qt_window.resize(1366, 768)
    image, truth = blobs((256, 256), n=30, seed=2)
    viewer.add_image(image, name="cells")
    assert set(widget.shortcuts) == {"Alt+P", "Alt+R", "Alt+N"}
    overflow = {}
    for index in range(widget.tabs.count()):
        widget.tabs.setCurrentIndex(index)
        for _ in range(5):
            QApplication.processEvents()
            time.sleep(0.02)
        scroll = widget.tabs.widget(index)
        overflow[widget.tabs.tabText(index)] = scroll.verticalScrollBar().maximum()
    print(f"window {viewer.window._qt_window.size()}, dock {widget.size()}, overflow per tab {overflow}")
    assert viewer.window._qt_window.height() <= 768
    assert all(v == 0 for v in overflow.values()), overflow
    widget.tabs.setCurrentIndex(4)  # Correct: the loop the user spends most time in
    for _ in range(5):
        QApplication.processEvents()
        time.sleep(0.02)
    if os.environ.get("NAPARI_TOWER_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        viewer.window._qt_window.grab().save(str(SCREENSHOTS / "laptop-1366x768.png"))


def test_step_counts_left_at_their_defaults_are_sized_from_the_measured_step_time(make_napari_viewer, qtbot, errors):
    """A fine-tune's seconds per step size the untouched fine-tune and retrain step counts, and are remembered."""
    from napari_tower.config import FinetuneConfig, RetrainConfig
    from napari_tower.napari.training import finetune_config
    from napari_tower.train.sizing import FINETUNE_BUDGET_S, RETRAIN_BUDGET_S

    viewer, widget = open_widget(make_napari_viewer)
    configure(widget, steps=4, patch=64, batch=4, base=8, finetune_steps=FinetuneConfig().steps,
              retrain_steps=RetrainConfig().steps)
    widget.segment.minutes.value = 0.05  # 3 s of the default step count, whatever this machine's speed
    image_layer, labels_layer, _ = _annotated(viewer)
    widget.segment.image.set_layer(image_layer)
    widget.segment.labels.set_layer(labels_layer)
    widget.segment.finetune_button.click()
    wait_idle(qtbot, widget, 120)
    assert not errors, errors
    timing = widget.loop.step_timing
    assert timing is not None and timing.fits(finetune_config(widget, FinetuneConfig()))
    assert widget.segment.steps.value == timing.steps_in(FINETUNE_BUDGET_S) != FinetuneConfig().steps
    assert widget.correct.steps.value == timing.steps_in(RETRAIN_BUDGET_S, least=10)
    assert "Sized to about 2 min on this machine" in widget.segment.steps.tooltip
    widget.save_settings()

    _, again = open_widget(make_napari_viewer)  # the next session on this machine starts from the timing
    assert again.loop.step_timing == timing
    assert again.segment.steps.value == timing.steps_in(FINETUNE_BUDGET_S)
    again.correct.steps.value = 33  # the user's own count is never resized
    again.loop.step_timing = type(timing)(timing.seconds * 2, *list(timing.as_dict().values())[1:])
    from napari_tower.napari.step_sizing import size_step_defaults

    size_step_defaults(again, finetune_config(again, FinetuneConfig()))
    assert again.correct.steps.value == 33
    assert again.segment.steps.value == again.loop.step_timing.steps_in(FINETUNE_BUDGET_S)  # still untouched: resized

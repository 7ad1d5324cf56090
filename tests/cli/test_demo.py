"""First run: `napari-tower demo` (napari with the sample and the docked widget) and `demo --headless`.

With NAPARI_TOWER_SCREENSHOTS set, the GUI test writes docs/screenshots/demo.png (and demo-widget.png).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_tower.demo import GUI_PRESET, run_headless


def test_headless_demo_runs_the_whole_chain(tmp_path, capsys):
    metrics = run_headless(pretrain_steps=2, finetune_steps=2, out=str(tmp_path), quiet=True)
    assert (tmp_path / "tower.pt").is_file() and (tmp_path / "model.pt").is_file()
    assert 0.0 <= metrics["mean"]["dice"] <= 1.0 and len(metrics["images"]) == 2
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("demo: Dice ") and str(tmp_path) in line


def test_demo_opens_napari_with_the_sample_and_the_widget(make_napari_viewer, monkeypatch):
    napari = pytest.importorskip("napari")
    pytest.importorskip("pytestqt")
    from napari_tower import demo
    from napari_tower.napari.widget import TowerWidget

    from ..widget.test_widget import snap

    viewers = []

    def viewer_from_fixture(title: str = "", **_):
        viewers.append(make_napari_viewer(title=title))
        return viewers[-1]

    ran = []
    monkeypatch.setattr(napari, "Viewer", viewer_from_fixture)
    monkeypatch.setattr(napari, "run", lambda *a, **k: ran.append(True))  # the real one blocks until closed
    assert demo.run_gui() == 0
    assert ran == [True]
    (viewer,) = viewers
    assert viewer.title == "napari-tower demo"
    image, labels = viewer.layers["nuclei"], viewer.layers["annotations"]
    assert image.data.shape == labels.data.shape == (4, 256, 256)
    assert labels.data[0].max() > 10 and not labels.data[1:].any()  # one annotated plane, three to predict
    (widget,) = [w for w in viewer.window.dock_widgets.values() if isinstance(w, TowerWidget)]
    def assert_applied(preset: dict, settings: dict, where: str = "") -> None:
        for key, value in preset.items():
            if isinstance(value, dict):
                assert_applied(value, settings[key], f"{where}{key}.")
            else:
                assert settings[key] == value, where + key

    assert_applied(GUI_PRESET, widget.settings())
    assert widget.data.selected() == [image]
    assert widget.segment.image.layer() is image and widget.segment.labels.layer() is labels
    assert "press Pretrain" in widget.status.text()
    assert np.issubdtype(image.data.dtype, np.integer)
    snap(viewer, widget, "demo")

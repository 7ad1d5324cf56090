"""A long working day in one viewer: correct-and-retrain rounds must not leak or slow down.

Runs `benchmarks/soak.py`'s rounds in a real napari viewer (a 512 x 512 image, an edit before each
retrain): a few rounds in the default suite, 50 in the slow one, which also checks the goals of
docs/reliability.md (memory growth under 10% from round 10 to 50, no growth in threads or file
handles, flat round times).
"""

from __future__ import annotations

import gc
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

_SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def _soak_module():
    spec = importlib.util.spec_from_file_location("napari_tower_soak", _SOAK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(make_napari_viewer, qtbot, rounds: int):
    soak = _soak_module()
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-tower", soak.WIDGET)

    def wait(predicate, timeout_s):
        qtbot.waitUntil(predicate, timeout=int(timeout_s * 1000))

    records = soak.run_rounds(viewer, widget, rounds, wait)
    return soak, viewer, widget, records


def test_a_few_rounds_leave_nothing_behind(make_napari_viewer, qtbot, errors):
    from napari_tower.model_bundle import ModelBundle

    gc.collect()
    before = {id(o) for o in gc.get_objects() if type(o) is ModelBundle}  # session fixtures' models
    _, viewer, widget, records = _run(make_napari_viewer, qtbot, 4)
    assert not errors, errors
    steady = records[1:]
    for key in ("threads", "py_threads", "fds", "qt_widgets", "layers"):
        assert len({r[key] for r in steady}) == 1, f"{key} changed between rounds: {[r[key] for r in steady]}"
    # napari keeps every finished worker; each round's model must still be freed (it was not, before).
    gc.collect()
    models = [o for o in gc.get_objects() if type(o) is ModelBundle and id(o) not in before]
    assert len(models) <= 2, f"{len(models)} of this run's models alive after 4 rounds: old rounds' are kept"
    assert widget.session.segmenter in models


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fifty_rounds_stay_flat(make_napari_viewer, qtbot, errors):
    soak, _, _, records = _run(make_napari_viewer, qtbot, 50)
    assert not errors, errors
    summary = soak.summarise(records)
    print(summary)
    assert summary["rss_growth_pct"] < 10, summary
    for key in ("threads", "fds", "qt_widgets", "layers"):
        low, high = summary[f"{key}_range"]
        assert low == high, f"{key} grew: {summary}"
    # Times on a shared machine are noisy: flat means the second half is not clearly slower than the first.
    assert summary["round_s_second_half"] <= 1.5 * summary["round_s_first_half"] + 0.25, summary

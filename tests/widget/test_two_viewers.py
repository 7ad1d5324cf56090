"""Two napari windows at once: two real processes sharing the user's settings and autosave folders.

Each process opens a viewer and the widget, paints a Labels layer, autosaves, and changes a
different setting; then both are killed (a crash). Neither may offer, restore, prune or
overwrite the other's live autosave, and neither may reset the setting the other changed,
although each loaded the settings before the other saved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

_VIEWER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import napari

    name = sys.argv[1]
    viewer = napari.Viewer(show=False)
    _, widget = viewer.window.add_plugin_dock_widget("napari-tower", "TOWER segmentation")

    def say(**kw):
        print(json.dumps(kw), flush=True)

    offer = widget.autosave.offer
    say(offer=None if offer is None else str(offer.folder))
    layer = viewer.add_labels(np.zeros((32, 32), np.int32), name=f"{name} labels")
    layer.data_setitem((np.arange(8), np.arange(8)), 3)
    widget.autosave.save_now(wait=True)
    say(saved=str(widget.autosave.store.folder))
    for command in sys.stdin:
        if command.strip() == "settings":
            if name == "A":
                widget.train.steps.value = 123
            else:
                widget.correct.steps.value = 7
            widget.save_settings()
            say(settings=True)
""")


def _start(name: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _VIEWER, name], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)


def _read(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    assert line, "the napari process ended early"
    return json.loads(line)


def _tell(proc: subprocess.Popen, command: str) -> dict:
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    return _read(proc)


@pytest.mark.timeout(240)
def test_two_napari_processes_keep_each_others_work(tmp_path, monkeypatch):
    from napari_tower.napari.autosave_store import AutosaveStore, SessionLock, previous_session
    from napari_tower.napari.settings import load_settings

    config = tmp_path / "config"
    monkeypatch.setenv("NAPARI_TOWER_CONFIG_DIR", str(config))
    env = {**os.environ, "NAPARI_TOWER_CONFIG_DIR": str(config),
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    a = _start("A", env)
    b = None
    try:
        assert _read(a)["offer"] is None
        folder_a = _read(a)["saved"]
        b = _start("B", env)  # opens while A is live with autosaved work
        assert _read(b)["offer"] is None, "the second window offered to restore the first one's live session"
        folder_b = _read(b)["saved"]
        assert folder_a != folder_b
        # Both loaded the settings before either changed one: A saves first, B after it.
        assert _tell(a, "settings")["settings"] and _tell(b, "settings")["settings"]
        assert SessionLock.held(Path(folder_a)) and SessionLock.held(Path(folder_b))
        assert previous_session() is None  # a third window would not offer either live session
    finally:
        for proc in (a, b):
            if proc is not None:
                proc.kill()  # a crash: nothing is flushed or unlocked by the processes themselves
                proc.wait(timeout=30)

    settings = load_settings()
    assert settings["pretrain"]["steps"] == 123 and settings["retrain"]["steps"] == 7
    for folder, name in ((folder_a, "A labels"), (folder_b, "B labels")):
        restored = AutosaveStore(Path(folder)).read()
        assert [e.name for e in restored.labels] == [name]
        assert int((restored.labels[0].data == 3).sum()) == 8
    # After the crash both sessions are free again: the next window offers the newer one.
    offered = previous_session()
    assert offered is not None and str(offered.folder) in (folder_a, folder_b)

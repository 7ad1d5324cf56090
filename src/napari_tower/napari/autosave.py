"""Autosave of the widget's work: edited Labels layers and the current models.

Labels layers the user painted (or that received a prediction) and the
session's models are written to a folder of their own under
``<config dir>/autosave/`` at most once a minute when something changed, and
right when a retrain starts and ends. A crash therefore loses at most the last
minute of painting. When the widget opens and an earlier session left work
behind, a bar at the top of the widget offers to restore it (labels as layers,
models into the session) or to discard it; it never blocks with a dialog.

`AutosaveStore` (files only, no Qt, in `autosave_store.py`) writes and reads one session folder;
`Autosave` (Qt) decides when to save, snapshots layers on the GUI thread and
writes them on a background thread, so painting never stutters.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

from ..errors import TowerError
from .autosave_store import (  # noqa: F401 - re-exported: the store's names are part of this module's API
    _LIVE,
    AUTOSAVE_DIR,
    INTERVAL_S,
    KEEP_SESSIONS,
    MANIFEST,
    MAX_AGE_S,
    MODEL_KINDS,
    AutosaveStore,
    LabelsEntry,
    Restored,
    SessionLock,
    Snapshot,
    autosave_root,
    previous_session,
    prune_sessions,
)

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------ Qt side



class RestoreBar(QWidget):
    """'Unsaved work from ...: [Restore] [Discard]' at the top of the widget; hidden when there is none."""

    def __init__(self) -> None:
        super().__init__()
        self.text = QLabel("")
        self.text.setWordWrap(True)
        self.restore_button = QPushButton("Restore")
        self.discard_button = QPushButton("Discard")
        row = QHBoxLayout(self)
        row.setContentsMargins(4, 4, 4, 4)
        row.addWidget(self.text, 1)
        row.addWidget(self.restore_button)
        row.addWidget(self.discard_button)
        self.setStyleSheet("background-color: rgba(224, 176, 96, 60);")
        self.hide()


class Autosave(QObject):
    """Saves the widget's labels and models to a session folder; offers an earlier session's on start."""

    saved = Signal(str)  # folder
    failed = Signal(str)  # message

    def __init__(self, widget: Any, interval_s: float = INTERVAL_S) -> None:
        super().__init__(widget)
        self.widget_ref = weakref.ref(widget)
        self.viewer = widget.viewer
        self.store = AutosaveStore.new_session()
        _LIVE.add(self.store.folder)
        self.bar = RestoreBar()
        self.offer: AutosaveStore | None = None
        self._dirty: set[int] = set()
        self._keys: dict[int, str] = {}  # id(layer) -> file stem
        self._layers: dict[int, weakref.ReferenceType] = {}
        self._saved_models: dict[str, Any] = {}
        self._next_key = 0
        self._pending: Future | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-tower-autosave")
        self._warned = False

        self.timer = QTimer(self)
        self.timer.setInterval(int(interval_s * 1000))
        self.timer.timeout.connect(self.save_if_changed)
        self.timer.start()
        self.failed.connect(self._show_failure)
        events = self.viewer.layers.events
        events.inserted.connect(self._layer_inserted)
        events.removing.connect(self._layer_removing)
        events.removed.connect(self._layer_removed)
        # Another widget opened later in this process may offer this session once this one is gone.
        self.destroyed.connect(functools.partial(_LIVE.discard, self.store.folder))
        self.destroyed.connect(self.store.release)
        for layer in self.viewer.layers:
            self._watch(layer)
        self.bar.restore_button.clicked.connect(lambda: self._guard(self.restore))
        self.bar.discard_button.clicked.connect(self.discard)
        try:
            prune_sessions()
            self.offer = previous_session()
        except OSError as exc:  # an unreadable config folder must not stop the widget from opening
            log.warning("autosave folder unavailable: %s", exc)
        self._show_offer()

    # ------------------------------------------------------------------ change tracking

    def _layer_inserted(self, event: Any) -> None:
        self._watch(event.value)

    def _layer_removing(self, event: Any) -> None:
        # Closing napari removes every layer: unsaved edits are written before they go.
        layer = self.viewer.layers[event.index]
        if id(layer) in self._dirty:
            self.save_now()

    def _layer_removed(self, event: Any) -> None:
        self._dirty.discard(id(event.value))

    def _watch(self, layer: Any) -> None:
        from napari.layers import Labels

        if not isinstance(layer, Labels):
            return
        lid = id(layer)
        self._layers[lid] = weakref.ref(layer)
        for name in ("paint", "data", "labels_update"):
            emitter = getattr(layer.events, name, None)
            if emitter is not None:
                emitter.connect(lambda *_, lid=lid: self._dirty.add(lid))

    def _changed_models(self) -> dict[str, Any]:
        session = self.widget_ref().session
        now = {"segmenter": session.segmenter, "pretrained": session.pretrained}
        return {k: v for k, v in now.items() if v is not None and self._saved_models.get(k) is not v}

    def has_changes(self) -> bool:
        return bool(self._dirty & {id(l) for l in self.viewer.layers}) or bool(self._changed_models())

    # ------------------------------------------------------------------ saving

    def snapshot(self) -> Snapshot:
        """Copy what changed (on the GUI thread, so painting cannot tear it) and mark it saved."""
        from napari.layers import Labels

        widget = self.widget_ref()
        entries = []
        for layer in self.viewer.layers:
            lid = id(layer)
            if not isinstance(layer, Labels) or (lid not in self._dirty and lid not in self._keys):
                continue
            if lid not in self._keys:
                self._keys[lid] = f"labels-{self._next_key}"
                self._next_key += 1
            entry = LabelsEntry(self._keys[lid], layer.name, [float(s) for s in layer.scale],
                                [float(t) for t in layer.translate], (layer.metadata or {}).get("napari_tower"))
            record = widget.session.record_for(layer) if widget is not None else None
            if record is not None:
                entry.planes, entry.target, entry.image_name = list(record.planes), record.target, record.image.name
            if lid in self._dirty:
                data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
                entry.data = np.array(data, copy=True)
                entry.written = None if record is None else record.written.copy()
            entries.append(entry)
        present = {id(l) for l in self.viewer.layers}
        self._keys = {k: v for k, v in self._keys.items() if k in present}
        self._dirty.clear()
        models = self._changed_models()
        self._saved_models.update(models)
        session = widget.session if widget is not None else None
        kinds = [k for k in MODEL_KINDS if session is not None and getattr(session, k) is not None]
        return Snapshot(entries, {k: models.get(k) for k in kinds}, kinds)

    def save_now(self, wait: bool = False) -> Future:
        """Snapshot now and write in the background (`wait`: block until written, for tests and shutdown)."""
        snap = self.snapshot()
        future = self._executor.submit(self._write, snap)
        self._pending = future
        if wait:
            future.result()
        return future

    def save_if_changed(self) -> None:
        if self.has_changes():
            self.save_now()

    def _write(self, snap: Snapshot) -> None:
        try:
            self.store.write(snap)
        except (TowerError, OSError) as exc:
            # The files already there stay intact (atomic writes); the next change writes again.
            self._emit(self.failed, f"autosave failed: {exc}")
            return
        self._emit(self.saved, str(self.store.folder))

    @staticmethod
    def _emit(signal: Any, message: str) -> None:
        with contextlib.suppress(RuntimeError):  # the widget was closed while the write ran: nobody to tell
            signal.emit(message)

    def _show_failure(self, message: str) -> None:
        # Write everything again next time: what failed may be missing or stale on disk.
        self._dirty |= set(self._keys)
        self._saved_models.clear()
        widget = self.widget_ref()
        if widget is not None and not self._warned:
            self._warned = True  # once per session: a full disk would otherwise warn every minute
            widget.show_warning(message)

    def flush(self) -> None:
        """Save what changed and wait until it is on disk (the widget closing)."""
        self.save_if_changed()
        pending = self._pending
        if pending is not None:
            pending.result()

    # ------------------------------------------------------------------ restoring

    def _show_offer(self) -> None:
        summary = self.offer.summary() if self.offer is not None else None
        if summary is None:
            self.bar.hide()
            return
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(summary.get("saved_at", 0))))
        names = [str(e.get("name")) for e in summary.get("labels", [])]
        parts = []
        if names:
            parts.append(f"{len(names)} labels layer(s) ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
        if summary.get("models"):
            parts.append(" and ".join(f"the {k} model" for k in summary["models"]))
        self.bar.text.setText(f"Autosaved work from {when}: {'; '.join(parts)}. Restore it?")
        self.bar.show()

    def _guard(self, action: Any) -> None:
        widget = self.widget_ref()
        try:
            action()
        except TowerError as exc:
            if widget is not None:
                widget.show_error(str(exc))

    def restore(self) -> Restored | None:
        """Add the offered session's Labels layers and load its models; then it belongs to this session."""
        from napari.layers import Image as ImageLayer

        from .session import LayerTag, PredictionRecord

        if self.offer is None:
            return None
        widget = self.widget_ref()
        restored = self.offer.read()
        added = []
        for entry in restored.labels:
            metadata = {"napari_tower": entry.owned} if entry.owned else {}
            layer = self.viewer.add_labels(entry.data, name=entry.name, scale=entry.scale, translate=entry.translate,
                                           metadata=metadata, opacity=0.5 if entry.owned else 0.7)
            added.append(layer)
            self._dirty.add(id(layer))  # so it is saved again in this session's folder
            image = next((l for l in self.viewer.layers if isinstance(l, ImageLayer) and l.name == entry.image_name),
                         None)
            if widget is not None and entry.written is not None and image is not None and entry.target:
                from .layers import label_shape

                if tuple(label_shape(image)) == tuple(layer.data.shape) and entry.written.ndim == 3:
                    widget.session.record(layer, PredictionRecord(LayerTag.of(image), weakref.ref(layer),
                                                                  entry.written, entry.planes, entry.target))
        kept = []
        if widget is not None:
            for kind, ckpt in restored.models.items():
                if getattr(widget.session, kind) is None:
                    setattr(widget.session, kind, ckpt)
                else:
                    kept.append(kind)
            widget.update_models()
        old = self.offer
        self.offer = None
        self.bar.hide()
        self.save_now()
        # After the save above (one writer thread, in order): the work lives in this session's folder now.
        self._pending = self._executor.submit(old.discard)
        if widget is not None:
            note = f" (kept this session's {' and '.join(kept)} model)" if kept else ""
            widget.show_info(f"Restored {len(added)} labels layer(s) and "
                             f"{len(restored.models) - len(kept)} model(s) from the autosave{note}.")
        return restored

    def discard(self) -> None:
        """Delete the offered session's autosave."""
        if self.offer is not None:
            self.offer.discard()
        self.offer = None
        self.bar.hide()

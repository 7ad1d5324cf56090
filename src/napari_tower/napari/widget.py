"""The napari-tower dock widget: the workflow as tabs that fit a laptop screen.

Tabs: Data (image layers, corruption preview), Pretrain (self-supervised training), Segment (fine-tune on a
Labels layer, predict, prototypes), Correct (retrain from the user's edits, guided by Next region, with the
label history and the pretraining check), Model (save / load / export). Above them a "next step" hint line;
below them, always in view, the progress of the running job, Stop and the status line. Alt+P predicts,
Alt+R retrains, Alt+N shows the next region to correct.

`TowerWidget` only lays the sections out (`sections.py`, `prototypes_section.py`, `loop_section.py`) and wires
them: the workflows are in `training.py`, `segmenting.py`, `guided.py` and `model_io.py`, the job runner in
`jobs.py`, the remembered settings in `settings.py`. Sections and workflows see the widget through the
`host.JobHost` / `host.Tower` interface; nothing imports this module back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari.viewer import Viewer
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import QHBoxLayout, QLabel, QScrollArea, QShortcut, QTabWidget, QVBoxLayout, QWidget

from ..config import FinetuneConfig
from ..errors import TowerError
from ..train.sizing import StepTiming
from . import guided, model_io, segmenting, training
from . import settings as remembered
from .autosave import Autosave
from .jobs import JobRunner, StatusLine
from .loop_section import LoopPanel
from .loop_state import LoopState
from .prototypes_section import PrototypeSection
from .sections import CorrectSection, DataSection, ModelSection, PretrainSection, PreviewSection, SegmentSection, owned
from .session import Session
from .step_sizing import size_step_defaults
from .volume_section import VolumeSection
from .workers import warm_up_torch


def _unwrap(obj: Any) -> Any:
    """The object behind napari's PublicOnlyProxy (identity checks and weak references need it)."""
    return getattr(obj, "__wrapped__", obj)


class TowerWidget(QWidget):
    """Pretrain, preview, fine-tune, predict, correct and retrain, without freezing the viewer."""

    def __init__(self, napari_viewer: Viewer) -> None:
        super().__init__()
        warm_up_torch()
        self.viewer = _unwrap(napari_viewer)
        self.session = Session()
        self.last_dir = str(Path.home())

        self.data = DataSection(self.viewer)
        self.volume = VolumeSection()  # 2D planes / 3D volume, auto from the layer (issue 17)
        self.train = PretrainSection()
        self.preview = PreviewSection()
        self.prototypes = PrototypeSection(self)
        self.segment = SegmentSection(self.viewer)
        self.correct = CorrectSection(self.viewer)
        self.models = ModelSection()
        self.loop_panel = LoopPanel()
        self.loop = LoopState()
        self.hint = QLabel()
        self.hint.setWordWrap(True)
        self.status = StatusLine()
        self.autosave = Autosave(self)  # edited labels and models survive a crash; offers an earlier session's
        self._lay_out()

        t, s = self.train, self.segment
        self.jobs = JobRunner(self, self.status, t.progress, t.stop_button,
                              [t.pretrain_button, self.preview.button, s.finetune_button, s.predict_button,
                               self.correct.button, self.models.load_button, self.models.export_button,
                               self.prototypes.find_button, self.loop_panel.back_button,
                               *self.loop_panel.buttons()], before_start=self.save_settings)
        t.pretrain_button.clicked.connect(self.pretrain)
        t.stop_button.clicked.connect(self.stop)
        self.preview.button.clicked.connect(self.preview_corruptions)
        s.finetune_button.clicked.connect(self.finetune)
        s.predict_button.clicked.connect(self.predict)
        self.correct.button.clicked.connect(self.retrain)
        self.loop_panel.next_button.clicked.connect(self.next_region)
        self.loop_panel.back_button.clicked.connect(self.go_back)
        self.loop_panel.check_button.clicked.connect(self.check_pretraining)
        self.shortcuts = {}
        for keys, action in (("Alt+P", self.predict), ("Alt+R", self.retrain), ("Alt+N", self.next_region)):
            shortcut = QShortcut(QKeySequence(keys), self)
            shortcut.setContext(Qt.WindowShortcut)
            shortcut.activated.connect(lambda action=action: self._shortcut(action))
            self.shortcuts[keys] = shortcut
        self.models.save_button.clicked.connect(lambda: model_io.save_clicked(self))
        self.models.load_button.clicked.connect(lambda: model_io.load_clicked(self))
        self.models.export_button.clicked.connect(lambda: model_io.export_clicked(self))

        self._save_timer = QTimer(self)
        self._save_timer.setSingleShot(True)
        self._save_timer.setInterval(500)
        self._save_timer.timeout.connect(self.save_settings)
        self.remembered = remembered.SharedSettings()  # other napari windows share the file
        self.apply_settings(self.remembered.load())
        self.remembered.shown(self.settings())
        sparse = [s.sparse, s.sparse_objects]
        for control in [c for section in self._configured() for c in section.parameter_controls()] + sparse:
            control.changed.connect(lambda *_: self._save_timer.start())
        s.scope.currentTextChanged.connect(lambda *_: self._save_timer.start())
        for control in (t.patch, t.patch_z, t.batch):
            control.changed.connect(self._patch_changed)
        self._patch_changed()
        self.data.list.itemChanged.connect(lambda *_: self._follow_layer())
        self.segment.image.currentIndexChanged.connect(lambda *_: self._follow_layer())
        self.volume.mode.currentIndexChanged.connect(lambda *_: self._mode_changed())
        self._follow_layer()

        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.moved):
            event.connect(self._layers_changed)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._layers_changed)
        self.update_models()

    def _lay_out(self) -> None:
        def page(*widgets: QWidget) -> QScrollArea:
            inner = QWidget()
            column = QVBoxLayout(inner)
            column.setContentsMargins(2, 2, 2, 2)
            for widget in widgets:
                column.addWidget(widget)
            column.addStretch(1)
            scroll = QScrollArea()  # a safety net on small screens; the tests check a 1366 x 768 one needs none
            scroll.setWidgetResizable(True)
            scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
            scroll.setWidget(inner)
            return scroll

        self.tabs = self.content = tabs = QTabWidget()
        tabs.setUsesScrollButtons(False)  # every step's tab in view: compact tabs fit the 380 px dock
        tabs.setStyleSheet("QTabBar::tab { padding: 3px 6px; }")
        for widgets, title in (((self.data, self.volume, self.preview), "Data"), ((self.train,), "Pretrain"),
                               ((self.segment,), "Segment"), ((self.prototypes,), "Prototypes"),
                               ((self.correct, self.loop_panel), "Correct"), ((self.models,), "Model")):
            tabs.addTab(page(*widgets), title)
        # The running job's progress, Stop and the messages stay in view whatever the tab.
        job = QHBoxLayout()
        job.addWidget(self.train.progress.bar, 1)
        job.addWidget(self.train.stop_button)
        self.train.progress.plot.setMinimumHeight(110)
        self.train.progress.plot.setMaximumHeight(130)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 4)
        outer.addWidget(self.autosave.bar)
        outer.addWidget(self.hint)
        outer.addWidget(tabs, 1)
        outer.addLayout(job)
        outer.addWidget(self.train.progress.text)
        outer.addWidget(self.train.progress.plot)
        outer.addWidget(self.status)
        self.setMinimumWidth(380)
        self.update_hint()

    def update_hint(self) -> None:
        """The "next step" line: what to do now, from what the session has."""
        from napari.layers import Image as ImageLayer

        if not any(isinstance(l, ImageLayer) for l in self.viewer.layers):
            text = "open an image (File > Open, or File > Open Sample > napari-tower)"
        elif self.session.segmenter is None:
            text = ("paint a few objects in a Labels layer, then Fine-tune (Segment tab); Pretrain first if you "
                    "have many unlabelled images")
        elif not self.session.predictions:
            text = "Predict (Segment tab, Alt+P)"
        else:
            text = "Next region (Correct tab, Alt+N), correct it, then Retrain (Alt+R)"
        self.hint.setText(f"<b>Next step:</b> {text}")

    # ----------------------------------------------------------------- layers and settings

    def _layers_changed(self, event: Any = None) -> None:
        if event is not None and getattr(event, "type", "") == "inserted":
            event.value.events.name.connect(self._layers_changed)
        self.data.refresh()
        for combo in (self.segment.image, self.segment.labels, self.correct.labels):
            combo.refresh()
        if event is not None and getattr(event, "type", "") == "inserted" and owned(event.value) == "labels":
            self.correct.labels.set_layer(event.value)
        self._follow_layer()
        self.update_hint()

    def _follow_layer(self) -> None:
        """The mode follows the first image ticked under 1. Data (else the Segment tab's image)."""
        chosen = self.data.selected()
        self.volume.follow(chosen[0] if chosen else self.segment.image.layer())

    def _mode_changed(self) -> None:
        self.train.patch_z.enabled = self.volume.dims() == "3d"
        self.data.dims = self.volume.dims()
        self.data.describe()

    def _patch_changed(self, *_: Any) -> None:
        self.data.patch, self.data.patch_z = self.train.patch.value, self.train.patch_z.value
        self.data.volume_settings = training.volume_settings(self)
        self.data.describe()

    def _configured(self) -> tuple:
        return (self.train, self.preview, self.segment, self.correct, self.prototypes)

    def settings(self) -> dict[str, Any]:
        """What the widget remembers: each section's config (`config.to_dict`), the last folder, the scope."""
        configs = {name: cfg for section in self._configured() for name, cfg in section.configs().items()}
        timing = self.loop.step_timing.as_dict() if self.loop.step_timing is not None else None
        return remembered.to_settings(configs, last_dir=self.last_dir, scope=self.segment.scope.currentText(),
                                      step_timing=timing)

    def apply_settings(self, values: dict[str, Any]) -> None:
        """Restore remembered settings; unknown keys and values that do not fit are ignored."""
        values = remembered.upgrade(values)
        self.last_dir = str(values.get("last_dir", self.last_dir))
        if self.segment.scope.findText(str(values.get("scope"))) >= 0:
            self.segment.scope.setCurrentText(str(values["scope"]))
        for name, cfg in remembered.configs_from(values).items():
            for section in self._configured():
                section.show_config(name, cfg)
        self.loop.step_timing = StepTiming.from_dict(values.get("step_timing")) or self.loop.step_timing
        size_step_defaults(self, training.finetune_config(self, FinetuneConfig()))

    def save_settings(self) -> None:
        self.remembered.save(self.settings())

    # ----------------------------------------------------------------- the interface of host.Tower

    def show_error(self, message: str) -> None:
        self.status.show_error(message)

    def show_warning(self, message: str) -> None:
        self.status.show_warning(message)

    def show_info(self, message: str) -> None:
        self.status.show_info(message)
        self.update_hint()

    def user_action(self, action: Callable[[], None]) -> None:
        """Run a button's action; a user error becomes a message, never a traceback."""
        try:
            action()
        except TowerError as exc:
            self.show_error(str(exc))

    @property
    def busy(self) -> bool:
        return self.jobs.busy

    def start_job(self, name: str, fn: Callable, on_value: Callable[[Any, bool], None],
                  on_failure: Callable[[], None] | None = None) -> None:
        """Run `fn(callback, should_stop)` in a worker; `on_value(value, stopped)` gets its result, `on_failure()`
        runs instead when it fails."""
        self.jobs.start(name, fn, on_value, on_failure)

    def stop(self) -> None:
        """Ask the running job to stop at its next step (training keeps a checkpoint)."""
        self.jobs.stop()

    def device(self) -> str:
        return self.train.device.value

    def selected_images(self) -> list[Any]:
        return self.data.selected()

    def use_for_finetune(self, image_layer: Any, labels_layer: Any, sparse: bool) -> None:
        for combo in (self.segment.image, self.segment.labels):
            combo.refresh()
        self.segment.image.set_layer(image_layer)
        self.segment.labels.set_layer(labels_layer)
        self.segment.sparse.value = sparse

    def update_models(self) -> None:
        self.models.info.setText(model_io.describe_models(self))

    # ----------------------------------------------------------------- the buttons

    def pretrain(self) -> None:
        self.user_action(lambda: training.pretrain(self))

    def preview_corruptions(self) -> None:
        self.user_action(lambda: training.preview(self))

    def finetune(self) -> None:
        self.user_action(lambda: training.finetune(self))

    def predict(self) -> None:
        self.user_action(lambda: segmenting.predict(self))

    def retrain(self) -> None:
        self.user_action(lambda: segmenting.retrain(self))

    def _shortcut(self, action: Callable[[], None]) -> None:
        """A shortcut's action; while a job runs (its buttons are disabled) it only says so."""
        if self.busy:
            self.show_info(f"{self.jobs.job} is still running: wait for it or press Stop")
            return
        action()

    def next_region(self) -> None:
        self.user_action(lambda: guided.next_region(self))

    def go_back(self) -> None:
        self.user_action(lambda: guided.go_back(self))

    def check_pretraining(self) -> None:
        self.user_action(lambda: guided.check_pretraining(self))

    def save_model(self, path: str | Path, kind: str | None = None) -> Path:
        """Save the segmenter (or, without one, the pretrained model); `kind` picks one explicitly."""
        return model_io.save_model(self, path, kind)

    def load_model(self, path: str | Path) -> str:
        """Load a checkpoint as the session's pretrained model or segmenter; returns its kind."""
        return model_io.load_model(self, path, self.jobs.job)

    def export_bioimageio(self, path: str | Path) -> None:
        """Write the segmenter as a bioimage.io package and test it (see `model_io.export_bioimageio`)."""
        model_io.export_bioimageio(self, path)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt name
        self.jobs.stop_event.set()
        self.save_settings()
        self.autosave.flush()
        super().closeEvent(event)


def open_from_menu(viewer: Viewer) -> None:
    """Layers > Segment > napari-tower: open (or show) the dock widget."""
    viewer.window.add_plugin_dock_widget("napari-tower", "TOWER segmentation")

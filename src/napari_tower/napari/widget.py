"""The napari-tower dock widget: one section per step of the workflow.

1. Data: the image layers to learn from.      2. Pretrain: self-supervised training, with progress and losses.
3. Preview corruptions: what the proxy tasks do.  4. Segment: fine-tune on a Labels layer, predict.
5. Correct and retrain: learn from the user's edits of a prediction.   Model: save / load checkpoints.

`TowerWidget` only lays the sections out (`sections.py`, `prototypes_section.py`) and wires them:
the workflows are in `training.py`, `segmenting.py` and `model_io.py`, the job runner in `jobs.py`,
the remembered settings in `settings.py`. Sections and workflows see the widget through the
`host.JobHost` / `host.Tower` interface; nothing imports this module back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari.viewer import Viewer
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QScrollArea, QVBoxLayout, QWidget

from ..errors import TowerError
from . import model_io, segmenting, training
from . import settings as remembered
from .autosave import Autosave
from .jobs import JobRunner, StatusLine
from .prototypes_section import PrototypeSection
from .sections import CorrectSection, DataSection, ModelSection, PretrainSection, PreviewSection, SegmentSection, owned
from .session import Session
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
        self.train = PretrainSection()
        self.preview = PreviewSection()
        self.prototypes = PrototypeSection(self)
        self.segment = SegmentSection(self.viewer)
        self.correct = CorrectSection(self.viewer)
        self.models = ModelSection()
        self.status = StatusLine()
        self.autosave = Autosave(self)  # edited labels and models survive a crash; offers an earlier session's
        self._lay_out()

        t, s = self.train, self.segment
        self.jobs = JobRunner(self, self.status, t.progress, t.stop_button,
                              [t.pretrain_button, self.preview.button, s.finetune_button, s.predict_button,
                               self.correct.button, self.models.load_button, self.models.export_button,
                               self.prototypes.find_button], before_start=self.save_settings)
        t.pretrain_button.clicked.connect(self.pretrain)
        t.stop_button.clicked.connect(self.stop)
        self.preview.button.clicked.connect(self.preview_corruptions)
        s.finetune_button.clicked.connect(self.finetune)
        s.predict_button.clicked.connect(self.predict)
        self.correct.button.clicked.connect(self.retrain)
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
        for control in [c for section in self._configured() for c in section.parameter_controls()] + [s.sparse]:
            control.changed.connect(lambda *_: self._save_timer.start())
        s.scope.currentTextChanged.connect(lambda *_: self._save_timer.start())
        t.patch.changed.connect(self._patch_changed)
        self._patch_changed()

        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.moved):
            event.connect(self._layers_changed)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._layers_changed)
        self.update_models()

    def _lay_out(self) -> None:
        self.content = inner = QWidget()
        column = QVBoxLayout(inner)
        column.addWidget(self.autosave.bar)
        for section in (self.data, self.train, self.preview, self.prototypes, self.segment, self.correct, self.models):
            column.addWidget(section)
        column.addWidget(self.status)
        column.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        scroll.setWidget(inner)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self.setMinimumWidth(380)

    # ----------------------------------------------------------------- layers and settings

    def _layers_changed(self, event: Any = None) -> None:
        if event is not None and getattr(event, "type", "") == "inserted":
            event.value.events.name.connect(self._layers_changed)
        self.data.refresh()
        for combo in (self.segment.image, self.segment.labels, self.correct.labels):
            combo.refresh()
        if event is not None and getattr(event, "type", "") == "inserted" and owned(event.value) == "labels":
            self.correct.labels.set_layer(event.value)

    def _patch_changed(self, *_: Any) -> None:
        self.data.patch = self.train.patch.value
        self.data.describe()

    def _configured(self) -> tuple:
        return (self.train, self.preview, self.segment, self.correct, self.prototypes)

    def settings(self) -> dict[str, Any]:
        """What the widget remembers: each section's config (`config.to_dict`), the last folder, the scope."""
        configs = {name: cfg for section in self._configured() for name, cfg in section.configs().items()}
        return remembered.to_settings(configs, last_dir=self.last_dir, scope=self.segment.scope.currentText())

    def apply_settings(self, values: dict[str, Any]) -> None:
        """Restore remembered settings; unknown keys and values that do not fit are ignored."""
        values = remembered.upgrade(values)
        self.last_dir = str(values.get("last_dir", self.last_dir))
        if self.segment.scope.findText(str(values.get("scope"))) >= 0:
            self.segment.scope.setCurrentText(str(values["scope"]))
        for name, cfg in remembered.configs_from(values).items():
            for section in self._configured():
                section.show_config(name, cfg)

    def save_settings(self) -> None:
        self.remembered.save(self.settings())

    # ----------------------------------------------------------------- the interface of host.Tower

    def show_error(self, message: str) -> None:
        self.status.show_error(message)

    def show_warning(self, message: str) -> None:
        self.status.show_warning(message)

    def show_info(self, message: str) -> None:
        self.status.show_info(message)

    def user_action(self, action: Callable[[], None]) -> None:
        """Run a button's action; a user error becomes a message, never a traceback."""
        try:
            action()
        except TowerError as exc:
            self.show_error(str(exc))

    @property
    def busy(self) -> bool:
        return self.jobs.busy

    def start_job(self, name: str, fn: Callable, on_value: Callable[[Any, bool], None]) -> None:
        """Run `fn(callback, should_stop)` in a worker; `on_value(value, stopped)` gets its result."""
        self.jobs.start(name, fn, on_value)

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

"""The napari-tower dock widget: one section per step of the workflow.

1. Data: the image layers to learn from.      2. Pretrain: self-supervised training, with progress and losses.
3. Preview corruptions: what the proxy tasks do.  4. Segment: fine-tune on a Labels layer, predict.
5. Correct and retrain: learn from the user's edits of a prediction.   Model: save / load checkpoints.

The sections (`sections.py`) only hold controls and build configs; `TowerWidget` turns layers into
arrays, starts jobs in thread workers (`workers.py`) and writes their results
back into layers, checking first that the layers still hold the data the job
read (`session.py`).
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path
from typing import Any, Callable

import numpy as np
from napari.viewer import Viewer
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QLabel, QScrollArea, QVBoxLayout, QWidget

from ..config import DataConfig, FinetuneConfig, ModelConfig, PredictConfig
from ..errors import TowerError
from . import settings as remembered
from .autosave import Autosave
from .layers import current_plane, image_from_layer, label_shape, labels_to_planes
from .prototypes_section import PrototypeSection
from .sections import (
    OWNED,
    SCOPES,
    CorrectSection,
    DataSection,
    ModelSection,
    PretrainSection,
    PreviewSection,
    SegmentSection,
    owned,
)
from .session import LayerTag, PredictionRecord, Session
from .workers import Outcome, progress_adapter, start_worker, warm_up_torch

PREVIEW_PREFIX = "tower preview: "


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
        self.stop_event = threading.Event()
        self.worker: Any = None
        self.job = ""
        self.last_dir = str(Path.home())

        self.data = DataSection(self.viewer)
        self.train = PretrainSection()
        self.preview = PreviewSection()
        self.prototypes = PrototypeSection(self)
        self.segment = SegmentSection(self.viewer)
        self.correct = CorrectSection(self.viewer)
        self.models = ModelSection()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)

        self.autosave = Autosave(self)  # edited labels and models survive a crash; offers an earlier session's

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

        self.train.pretrain_button.clicked.connect(self.pretrain)
        self.train.stop_button.clicked.connect(self.stop)
        self.preview.button.clicked.connect(self.preview_corruptions)
        self.segment.finetune_button.clicked.connect(self.finetune)
        self.segment.predict_button.clicked.connect(self.predict)
        self.correct.button.clicked.connect(self.retrain)
        self.models.save_button.clicked.connect(self._save_clicked)
        self.models.load_button.clicked.connect(self._load_clicked)
        self.models.export_button.clicked.connect(self._export_clicked)
        self.job_buttons = [self.train.pretrain_button, self.preview.button, self.segment.finetune_button,
                            self.segment.predict_button, self.correct.button, self.models.load_button, self.models.export_button,
                            self.prototypes.find_button]

        self._save_timer = QTimer(self)
        self._save_timer.setSingleShot(True)
        self._save_timer.setInterval(500)
        self._save_timer.timeout.connect(self.save_settings)
        self.apply_settings(remembered.load_settings())
        for control in self._settings_controls().values():
            signal = control.currentTextChanged if isinstance(control, QComboBox) else (
                control.toggled if isinstance(control, QCheckBox) else control.valueChanged)
            signal.connect(lambda *_: self._save_timer.start())
        self.train.patch.valueChanged.connect(self._patch_changed)
        self._patch_changed()

        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.moved):
            event.connect(self._layers_changed)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._layers_changed)
        self._update_models()

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
        self.data.patch = self.train.patch.value()
        self.data.describe()

    def _settings_controls(self) -> dict[str, QWidget]:
        t, s, c = self.train, self.segment, self.correct
        return {"method": t.method, "steps": t.steps, "patch": t.patch, "batch": t.batch, "base": t.base,
                "device": t.device, "preview_seed": self.preview.seed, "finetune_steps": s.steps,
                "sparse": s.sparse, "scope": s.scope, "instances": s.instances, "probabilities": s.probabilities,
                "retrain_steps": c.steps, "edit_weight": c.edit_weight,
                "prototype_k": self.prototypes.k, "prototype_ignore": self.prototypes.ignore}

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"last_dir": self.last_dir}
        for key, w in self._settings_controls().items():
            out[key] = (w.currentText() if isinstance(w, QComboBox) else
                        w.isChecked() if isinstance(w, QCheckBox) else w.value())
        return out

    def apply_settings(self, values: dict[str, Any]) -> None:
        """Restore remembered settings; unknown keys and values that do not fit are ignored."""
        self.last_dir = str(values.get("last_dir", self.last_dir))
        for key, w in self._settings_controls().items():
            if key not in values:
                continue
            value = values[key]
            try:
                if isinstance(w, QComboBox):
                    if w.findText(str(value)) >= 0:
                        w.setCurrentText(str(value))
                elif isinstance(w, QCheckBox):
                    w.setChecked(bool(value))
                elif isinstance(w, QDoubleSpinBox):
                    w.setValue(float(value))
                else:
                    w.setValue(int(value))
            except (TypeError, ValueError):
                continue

    def save_settings(self) -> None:
        remembered.save_settings(self.settings())

    # ----------------------------------------------------------------- messages

    def show_error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        self.status.setStyleSheet("color: #e06c6c;")
        self.status.setText(f"Error: {message}")
        show_error(f"napari-tower: {message}")

    def show_warning(self, message: str) -> None:
        from napari.utils.notifications import show_warning

        self.status.setStyleSheet("color: #e0b060;")
        self.status.setText(message)
        show_warning(f"napari-tower: {message}")

    def show_info(self, message: str) -> None:
        self.status.setStyleSheet("")
        self.status.setText(message)

    def _user_action(self, action: Callable[[], None]) -> None:
        """Run a button's action; a user error becomes a message, never a traceback."""
        try:
            action()
        except TowerError as exc:
            self.show_error(str(exc))

    # ----------------------------------------------------------------- jobs

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def _start(self, name: str, fn: Callable, on_value: Callable[[Any, bool], None]) -> None:
        """Run `fn(callback, should_stop)` in a worker; `on_value(value, stopped)` gets its result."""
        if self.busy:
            raise TowerError(f"{self.job} is still running: wait for it or press Stop")
        self.save_settings()
        self.job = name
        self.stop_event = threading.Event()
        for b in self.job_buttons:
            b.setEnabled(False)
        self.train.stop_button.setEnabled(True)
        self.train.progress.start(name)
        self.show_info(f"{name} running...")

        stop = self.stop_event
        # napari never closes dock widgets when its window closes, it deletes them: stop the job then.
        self.destroyed.connect(stop.set)

        def render(p: Any) -> None:
            if not _deleted(self):
                self.train.progress.render(p)

        def done(outcome: Outcome) -> None:
            if _deleted(self):  # napari was closed while the job ran: nothing left to show it in
                return
            self.worker = None
            for b in self.job_buttons:
                b.setEnabled(True)
            self.train.stop_button.setEnabled(False)
            if outcome.error is not None:
                if outcome.stopped:
                    self.train.progress.finish(f"{name} stopped")
                    self.show_info(f"{name} stopped")
                else:
                    self.train.progress.finish(f"{name} failed")
                    self.show_error(outcome.error)
                return
            self.train.progress.finish(f"{name} stopped" if outcome.stopped else f"{name} finished")
            try:
                on_value(outcome.value, outcome.stopped)
            except TowerError as exc:
                self.show_error(str(exc))

        self.worker = start_worker(fn, stop, render, done)

    def stop(self) -> None:
        """Ask the running job to stop at its next step (training keeps a checkpoint)."""
        if self.busy:
            self.stop_event.set()
            self.show_info(f"stopping {self.job}...")

    def _device(self) -> str:
        return self.train.device.currentText()

    # ----------------------------------------------------------------- 2. pretrain

    def pretrain(self) -> None:
        self._user_action(self._pretrain)

    def _pretrain(self) -> None:
        from ..train import pretrain

        layers = self.data.selected()
        if not layers:
            raise TowerError("no image layer chosen: tick at least one image layer under 1. Data")
        images = [image_from_layer(layer) for layer in layers]
        cfg = self.train.config()

        def job(callback, should_stop):
            return pretrain(images, cfg, callback=callback, should_stop=should_stop)

        def finished(result, stopped: bool) -> None:
            self.session.pretrained = result.checkpoint
            self._update_models()
            what = f"stopped at step {result.last.step}; checkpoint kept" if stopped else "finished"
            self.show_info(f"Pretraining ({cfg.method}) {what}. Next: fine-tune on a few labels (4. Segment).")

        self._start("pretrain", job, finished)

    # ----------------------------------------------------------------- 3. preview

    def preview_corruptions(self) -> None:
        self._user_action(self._preview)

    def _preview(self) -> None:
        from ..data import compute_normalisation
        from ..proxy import preview

        layers = self.data.selected() or self.segment.image.candidates()[:1]
        if not layers:
            raise TowerError("no image layer to preview: open an image first")
        layer = layers[0]
        image = image_from_layer(layer)
        plane_index = current_plane(layer, self.viewer.dims.point)
        y0, x0, crop = self._view_crop(layer, image.shape[2:])
        plane = np.asarray(image.data[plane_index, :, y0:y0 + crop[0], x0:x0 + crop[1]])
        tag = LayerTag.of(layer)
        seed = self.preview.seed.value()

        def job(callback, should_stop):
            norm = compute_normalisation(image.data, image.source)
            return preview(norm.apply(plane, channel_axis=0), seed=seed)

        def finished(views: dict[str, np.ndarray], stopped: bool) -> None:
            problem = tag.problem(self.viewer.layers)
            if problem:
                self.show_warning(f"{problem} while previewing: preview dropped")
                return
            self._show_previews(layer, views, (y0, x0))
            self.show_info(f"Previewed {len(views)} corruptions of '{layer.name}' (plane {plane_index}).")

        self._start("preview", job, finished)

    def _view_crop(self, layer: Any, yx: tuple[int, int], most: int = 1024) -> tuple[int, int, tuple[int, int]]:
        """Top-left corner and size of the (at most `most` square) region around the view's centre."""
        h, w = yx
        ch, cw = min(h, most), min(w, most)
        if (ch, cw) == (h, w):
            return 0, 0, (h, w)
        point = list(self.viewer.dims.point)
        for axis, c in zip(self.viewer.dims.displayed[-2:], self.viewer.camera.center[-2:]):
            point[axis] = c
        cy, cx = np.asarray(layer.world_to_data(point), float)[-2:]
        y0 = int(np.clip(cy - ch / 2, 0, h - ch))
        x0 = int(np.clip(cx - cw / 2, 0, w - cw))
        return y0, x0, (ch, cw)

    def _show_previews(self, layer: Any, views: dict[str, np.ndarray], offset: tuple[int, int]) -> None:
        """One image layer per corruption, replacing this widget's earlier previews."""
        scale = np.asarray(layer.scale)[-2:]
        translate = np.asarray(layer.translate)[-2:] + np.asarray(offset) * scale
        rgb = bool(getattr(layer, "rgb", False))
        for name in list(self.session.previews):
            old = self.session.previews[name]()
            if name not in views and old is not None and any(old is l for l in self.viewer.layers):
                self.viewer.layers.remove(old)
        for name, view in views.items():
            data = np.moveaxis(view, 0, -1) if rgb else (view[0] if view.shape[0] == 1 else view)
            old = self.session.previews.get(name, lambda: None)()
            if old is not None and any(old is l for l in self.viewer.layers) and old.data.shape == data.shape:
                old.data = data
                old.translate = translate
                old.contrast_limits = (0.0, 1.0)
                continue
            if old is not None and any(old is l for l in self.viewer.layers):
                self.viewer.layers.remove(old)
            new = self.viewer.add_image(data, name=f"{PREVIEW_PREFIX}{name}", rgb=rgb, scale=scale,
                                        translate=translate, contrast_limits=(0.0, 1.0), colormap="gray",
                                        metadata={OWNED: "preview"}, visible=name == "tower")
            self.session.previews[name] = weakref.ref(new)

    # ----------------------------------------------------------------- 4. segment

    def finetune(self) -> None:
        self._user_action(self._finetune)

    def _finetune_config(self, steps: int) -> FinetuneConfig:
        t = self.train
        return FinetuneConfig(steps=steps, batch=t.batch.value(), device=self._device(),
                              data=DataConfig(patch=t.patch.value()), model=ModelConfig(base=t.base.value()))

    def _finetune(self) -> None:
        from ..data import from_array
        from ..segment import finetune

        image_layer, labels_layer = self.segment.image.layer(), self.segment.labels.layer()
        if image_layer is None:
            raise TowerError("no image layer: open an image and choose it under 4. Segment")
        if labels_layer is None:
            raise TowerError("no Labels layer with annotations: add one (New labels layer), paint a few objects, "
                             "and choose it under 4. Segment > annotations")
        image = image_from_layer(image_layer)
        labels = labels_to_planes(labels_layer, image_layer)
        # Planes without any annotation are unannotated, not background: train on the others only.
        planes = [p for p in range(labels.shape[0]) if labels[p].any()]
        if not planes:
            raise TowerError(f"labels layer '{labels_layer.name}' is empty: paint a few objects"
                             + (" (1 = background, 2.. = classes)" if self.segment.sparse.isChecked() else "")
                             + ", then fine-tune")
        if len(planes) < labels.shape[0]:
            image = from_array(np.asarray(image.data[planes]), image.source, axes="ZCYX")
            labels = labels[planes]
        cfg = self._finetune_config(self.segment.steps.value())
        if self.segment.sparse.isChecked():
            cfg.target = "sparse"
        init = self.session.pretrained

        def job(callback, should_stop):
            return finetune([image], [labels], cfg, init=init, callback=callback, should_stop=should_stop)

        def finished(result, stopped: bool) -> None:
            self.session.segmenter = result.checkpoint
            self._update_models()
            dice = f", best validation Dice {result.best_val_dice:.3f}" if result.best_val_dice is not None else ""
            start = "from the pretrained model" if init is not None else "from scratch (no pretrained model)"
            self.show_info(f"Fine-tuned {start} on {len(planes)} annotated plane(s){' (stopped)' if stopped else ''}"
                           f"{dice}. Next: Predict.")

        self._start("fine-tune", job, finished)

    def predict(self) -> None:
        self._user_action(self._predict)

    def _predict_config(self) -> PredictConfig:
        return PredictConfig(device=self._device(), instances=self.segment.instances.isChecked())

    def _predict(self) -> None:
        from ..segment import Predictor

        ckpt = self.session.segmenter
        if ckpt is None:
            raise TowerError("no segmenter yet: fine-tune one (4. Segment > Fine-tune) or load a model")
        image_layer = self.segment.image.layer()
        if image_layer is None:
            raise TowerError("no image layer to predict: choose one under 4. Segment")
        image = image_from_layer(image_layer)
        planes = ([current_plane(image_layer, self.viewer.dims.point)]
                  if self.segment.scope.currentText() == SCOPES[0] else list(range(image.shape[0])))
        tag = LayerTag.of(image_layer)
        cfg = self._predict_config()
        with_probabilities = self.segment.probabilities.isChecked()

        def job(callback, should_stop):
            predictor = Predictor(ckpt, cfg)
            return predictor.predict(image, planes, progress_adapter(callback, "predict"), should_stop)

        def finished(prediction, stopped: bool) -> None:
            layer = self._write_prediction(tag, prediction, planes, str(ckpt.target))
            if layer is not None and with_probabilities:
                self._write_probabilities(tag.layer(self.viewer.layers), prediction, planes)
            if layer is not None:
                self.show_info(f"Predicted {len(planes)} plane(s) into '{layer.name}'. Correct it with the paint "
                               "and erase tools, then Retrain from corrections.")

        self._start("predict", job, finished)

    def _write_prediction(self, tag: LayerTag, prediction: Any, planes: list[int], target: str,
                          into: Any = None, expected: np.ndarray | None = None) -> Any | None:
        """Write labels for `planes` into the image's output layer (or `into`), or a new layer.

        Nothing is written when the image layer was removed or changed while the job ran; a layer the user
        edited while the job ran (its content differs from `expected`) is left alone and a new layer is added.
        """
        problem = tag.problem(self.viewer.layers)
        if problem:
            self.show_warning(f"{problem} while the job ran: its result was dropped; run it again")
            return None
        image_layer = tag.layer(self.viewer.layers)
        shape = label_shape(image_layer)
        flat = (int(np.prod(shape[:-2])),) + shape[-2:]
        layer = into if into is not None else self.session.output_for(image_layer, self.viewer.layers)
        if layer is not None and (not any(layer is l for l in self.viewer.layers) or tuple(layer.data.shape) != shape):
            layer = None
        if layer is not None and expected is not None and not np.array_equal(np.asarray(layer.data).reshape(flat),
                                                                               expected):
            self.show_warning(f"'{layer.name}' was edited while retraining: the new prediction went into a new "
                              "layer, your edits are untouched")
            layer = None
        old = self.session.record_for(layer) if layer is not None else None
        if layer is None:
            data = np.zeros(flat, np.int32)
        else:
            data = np.array(layer.data, dtype=np.int32).reshape(flat)
        data[planes] = prediction.labels
        if layer is None:
            layer = self.viewer.add_labels(data.reshape(shape), name=f"{image_layer.name} tower labels",
                                           scale=image_layer.scale, translate=image_layer.translate,
                                           metadata={OWNED: "labels"}, opacity=0.5)
        else:
            layer.data = data.reshape(shape)
        written = old.written.copy() if old is not None and old.written.shape == flat else data.copy()
        written[planes] = prediction.labels
        done = sorted(set(old.planes if old is not None else ()) | set(planes))
        self.session.record(layer, PredictionRecord(tag, weakref.ref(layer), written, done, target))
        self.correct.labels.refresh()
        self.correct.labels.set_layer(layer)
        return layer

    def _write_probabilities(self, image_layer: Any, prediction: Any, planes: list[int]) -> None:
        shape = label_shape(image_layer)
        flat = (int(np.prod(shape[:-2])),) + shape[-2:]
        old = self.session.probabilities.get(id(image_layer), lambda: None)()
        if old is not None and any(old is l for l in self.viewer.layers) and tuple(old.data.shape) == shape:
            data = np.array(old.data, np.float32).reshape(flat)
        else:
            old, data = None, np.zeros(flat, np.float32)
        data[planes] = 1.0 - prediction.probabilities[:, 0]
        if old is not None:
            old.data = data.reshape(shape)
            return
        new = self.viewer.add_image(data.reshape(shape), name=f"{image_layer.name} tower probabilities",
                                    scale=image_layer.scale, translate=image_layer.translate, colormap="magma",
                                    contrast_limits=(0.0, 1.0), blending="additive", visible=False,
                                    metadata={OWNED: "probabilities"})
        self.session.probabilities[id(image_layer)] = weakref.ref(new)

    # ----------------------------------------------------------------- 5. correct and retrain

    def retrain(self) -> None:
        self._user_action(self._retrain)

    def _retrain(self) -> None:
        from ..data import from_array
        from ..segment import Predictor, finetune

        layer = self.correct.labels.layer()
        if layer is None:
            raise TowerError("no predicted Labels layer: Predict first, correct the result, then retrain")
        record = self.session.record_for(layer)
        if record is None:
            raise TowerError(f"'{layer.name}' holds no napari-tower prediction: Predict first, correct its result "
                             "with napari's tools, then retrain")
        ckpt = self.session.segmenter
        if ckpt is None:
            raise TowerError("no segmenter to retrain: fine-tune or load one first")
        problem = record.image.problem(self.viewer.layers)
        if problem:
            raise TowerError(f"cannot retrain: {problem} since the prediction; Predict again, then correct")
        image_layer = record.image.layer(self.viewer.layers)
        current = labels_to_planes(layer, image_layer)
        changed = record.changed(current)
        planes = record.planes
        n_changed = int(changed[planes].sum())
        if n_changed == 0:
            raise TowerError(f"no corrections in '{layer.name}' yet: fix the prediction with napari's paint, "
                             "fill or erase tools, then retrain")
        target = str(ckpt.target)
        labels = retrain_targets(current[planes], target)
        edit_weight = self.correct.edit_weight.value()
        weights = (1.0 + (edit_weight - 1.0) * changed[planes]).astype(np.float32)
        image = image_from_layer(image_layer)
        subset = from_array(np.asarray(image.data[planes]), image.source, axes="ZCYX")
        cfg = self._finetune_config(self.correct.steps.value())
        cfg.val_fraction, cfg.edit_weight = 0.0, edit_weight
        pcfg = self._predict_config()

        self.autosave.save_now()  # the corrections, before anything else can happen to them

        def job(callback, should_stop):
            result = finetune([subset], [labels], cfg, init=ckpt, weights=[weights], callback=callback,
                              should_stop=should_stop)
            if result.last.stopped:
                return result, None
            prediction = Predictor(result.checkpoint, pcfg).predict(
                subset, None, progress_adapter(callback, "predict"), should_stop)
            return result, prediction

        def finished(value, stopped: bool) -> None:
            result, prediction = value
            self.session.segmenter = result.checkpoint
            self._update_models()
            if prediction is None:
                self.autosave.save_now()
                self.show_info("Retraining stopped; the model so far is kept. Retrain again or Predict.")
                return
            out = self._write_prediction(record.image, prediction, planes, target, into=layer, expected=current)
            self.autosave.save_now()  # the retrained model and its new prediction
            if out is not None:
                self.show_info(f"Retrained on {n_changed} corrected pixel(s) and predicted again into '{out.name}'.")

        self._start("retrain", job, finished)

    # ----------------------------------------------------------------- models

    def _update_models(self) -> None:
        parts = []
        for name, ckpt in (("pretrained", self.session.pretrained), ("segmenter", self.session.segmenter)):
            if ckpt is not None:
                what = ckpt.method if name == "pretrained" else ckpt.target
                parts.append(f"{name}: {what}, step {ckpt.step}, base {ckpt.base}")
        self.models.info.setText("; ".join(parts) if parts else "no model yet")

    def save_model(self, path: str | Path, kind: str | None = None) -> Path:
        """Save the segmenter (or, without one, the pretrained model); `kind` picks one explicitly."""
        models = {"segmenter": self.session.segmenter, "pretrained": self.session.pretrained}
        ckpt = models.get(kind) if kind else (self.session.segmenter or self.session.pretrained)
        if ckpt is None:
            raise TowerError("no model to save yet: pretrain or fine-tune first")
        out = ckpt.save(path)
        self.last_dir = str(Path(path).parent)
        self.show_info(f"Saved the {ckpt.kind} model to {out}")
        return out

    def load_model(self, path: str | Path) -> str:
        """Load a checkpoint as the session's pretrained model or segmenter; returns its kind."""
        from ..model_bundle import ModelBundle

        if self.busy:
            raise TowerError(f"{self.job} is running: wait for it or press Stop before loading a model")
        kind = self.session.set_model(ModelBundle.load(path))
        self.last_dir = str(Path(path).parent)
        self._update_models()
        self.show_info(f"Loaded a {kind} model from {path}")
        return kind

    def export_bioimageio(self, path: str | Path) -> None:
        """Write the segmenter as a bioimage.io package (in a worker), then run bioimage.io's own test on it.

        A centred crop of the image chosen under 4. Segment becomes the package's test input
        (the built-in sample when there is none, or its channels do not fit the model).
        """
        from ..bioimageio.exporter import BioimageioExportConfig, check_bioimageio_package, export_bioimageio

        ckpt = self.session.segmenter
        if ckpt is None:
            raise TowerError("no segmenter to export: fine-tune one (4. Segment) or load one first")
        layer = self.segment.image.layer()
        test_image = image_from_layer(layer) if layer is not None else None
        if test_image is not None and test_image.channels != ckpt.in_channels:
            test_image = None
        cfg = BioimageioExportConfig(name=f"napari-tower {ckpt.target} segmenter"
                                          + (f" ({layer.name})" if layer is not None else ""))
        out = Path(path)

        def job(callback, should_stop):
            written = export_bioimageio(ckpt, out, cfg, test_image)
            return written, check_bioimageio_package(written)

        def finished(value, stopped: bool) -> None:
            written, report = value
            self.last_dir = str(written.parent)
            if report.passed:
                self.show_info(f"Exported {written}; bioimage.io's test passed. Add the authors' names "
                               "(e.g. napari-tower export ... --author) before uploading it to bioimage.io.")
            else:
                self.show_warning(f"Exported {written}, but bioimage.io's test failed: {'; '.join(report.errors[:2])}")

        self._start("export", job, finished)

    def _export_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export bioimage.io package",
                                              str(Path(self.last_dir) / "model.bioimageio.zip"),
                                              "bioimage.io model package (*.zip)")
        if path:
            self._user_action(lambda: self.export_bioimageio(path))

    def _save_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save model", str(Path(self.last_dir) / "tower.pt"),
                                              "napari-tower model (*.pt)")
        if path:
            self._user_action(lambda: self.save_model(path))

    def _load_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load model", self.last_dir,
                                              "napari-tower model or bioimage.io package (*.pt *.zip)")
        if path:
            self._user_action(lambda: self.load_model(path))

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt name
        self.stop_event.set()
        self.save_settings()
        self.autosave.flush()
        super().closeEvent(event)


def _deleted(widget: QWidget) -> bool:
    """Whether Qt has already deleted the widget behind this Python object (any Qt binding)."""
    try:
        widget.objectName()
    except RuntimeError:
        return True
    return False


def retrain_targets(labels: np.ndarray, target: str) -> np.ndarray:
    """A corrected prediction (planes, Y, X) as dense training labels for a model with `target`.

    Predictions use 0 = background and 1.. = classes or objects. A model trained on
    instances learns them from object ids (a foreground mask is split into its
    connected components); one trained on sparse scribbles reads 1 = background.
    """
    if target == "instance" and labels.max() <= 1:
        from skimage.measure import label

        return np.stack([label(plane > 0) for plane in labels]).astype(np.int64)
    if target == "sparse":
        return labels + 1
    return labels


def open_from_menu(viewer: Viewer) -> None:
    """Layers > Segment > napari-tower: open (or show) the dock widget."""
    viewer.window.add_plugin_dock_widget("napari-tower", "TOWER segmentation")

"""The "Prototypes" section: a first segmentation without painting.

Find prototypes clusters the pixels of the chosen image layers in the pretrained
model's embedding and shows a Labels layer of prototype ids and a gallery of
examples per prototype. The user names prototypes (background, foreground, ...)
and Make pseudo-labels writes a sparse Labels layer (0 = not annotated,
1 = background, 2.. = classes) that 4. Segment > Fine-tune uses as it is.

The heavy work runs in the host's thread worker (`host.JobHost`: the widget's public
interface, never its internals); this module only holds controls, turns layers into
arrays and writes results back into layers (by `layers.WrittenLayers`' policy).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..config import PrototypeConfig
from ..errors import TowerError
from .controls import ConfigControls
from .host import JobHost
from .layers import WrittenLayers, image_from_layer, label_shape
from .sections import OWNED, Configurable, add_rows
from .session import LayerTag

CLASS_CHOICES = (("unassigned", 0), ("background", 1), ("foreground", 2), ("class 3", 3), ("class 4", 4))
EXAMPLES = 4
THUMB = 44


def _pixmap(rgb: np.ndarray, size: int = THUMB) -> QPixmap:
    rgb = np.ascontiguousarray(rgb)
    h, w, _ = rgb.shape
    image = QImage(rgb.data, w, h, 3 * w, QImage.Format_RGB888).copy()  # copy: own the pixels
    return QPixmap.fromImage(image).scaled(size, size, Qt.KeepAspectRatio, Qt.FastTransformation)


class PrototypeSection(QGroupBox, Configurable):
    """Find prototypes, name them from a gallery, make pseudo-labels for fine-tuning."""

    def __init__(self, host: JobHost) -> None:
        super().__init__("Prototypes (label-free start)")
        self.host = host
        self.controls = ConfigControls(PrototypeConfig, "k", "ignore")
        self.k, self.ignore = self.controls["k"], self.controls["ignore"]
        self.find_button = QPushButton("Find prototypes")
        self.make_button = QPushButton("Make pseudo-labels")
        self.make_button.setEnabled(False)
        hint = QLabel("Needs a pretrained model (2. Pretrain). Clusters the pixels of the images under 1. Data; "
                      "name each prototype from its examples, then make pseudo-labels and Fine-tune.")
        hint.setWordWrap(True)
        self.gallery = QWidget()
        self.grid = QGridLayout(self.gallery)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setSpacing(2)
        self.classes: list[QComboBox] = []
        form = QFormLayout()
        add_rows(form, self.controls)
        buttons = QHBoxLayout()
        buttons.addWidget(self.find_button)
        buttons.addWidget(self.make_button)
        layout = QVBoxLayout(self)
        layout.addWidget(hint)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.gallery)

        self.result: Any = None  # prototypes.PrototypeResult of the last search
        self.tags: list[LayerTag] = []  # the image layers it was computed from, in order
        # By id(image layer): a layer is only written again while it holds what was written there.
        self.maps = WrittenLayers()
        self.pseudo = WrittenLayers()
        self.find_button.clicked.connect(lambda: host.user_action(self.find))
        self.make_button.clicked.connect(lambda: host.user_action(self.make_pseudo_labels))

    # ----------------------------------------------------------------- settings

    def config(self) -> PrototypeConfig:
        cfg = self.controls.fill(PrototypeConfig(device=self.host.device()))
        cfg.ignore = round(cfg.ignore, 4)
        cfg.validate()
        return cfg

    def configs(self) -> dict[str, Any]:
        return {"prototypes": self.controls.fill(PrototypeConfig())}

    def show_config(self, name: str, cfg: Any) -> None:
        if name == "prototypes":
            self.controls.show(cfg)

    def mapping(self) -> dict[int, int]:
        """{prototype id: sparse class} from the gallery's choices (unassigned ones left out)."""
        return {i + 1: int(combo.currentData()) for i, combo in enumerate(self.classes) if combo.currentData()}

    def set_class(self, prototype: int, cls: int) -> None:
        """Name prototype `prototype` (1..K) with sparse class `cls` (0 = unassigned, 1 = background, ...)."""
        combo = self.classes[prototype - 1]
        index = combo.findData(cls)
        if index < 0:
            raise TowerError(f"class {cls} is not offered: choose one of {[c for _, c in CLASS_CHOICES]}")
        combo.setCurrentIndex(index)

    # ----------------------------------------------------------------- find

    def find(self) -> None:
        from ..prototypes import find_prototypes, gallery_crops

        host = self.host
        layers = host.selected_images()
        if not layers:
            raise TowerError("no image layer chosen: tick the images to find prototypes in under 1. Data")
        ckpt = host.session.pretrained or host.session.segmenter
        if ckpt is None:
            raise TowerError("no pretrained model: Pretrain first (2. Pretrain) or load a model, then find prototypes")
        images = [image_from_layer(layer) for layer in layers]
        tags = [LayerTag.of(layer) for layer in layers]
        cfg = self.config()

        def job(callback, should_stop):
            result = find_prototypes(images, ckpt, cfg, callback, should_stop)
            return result, gallery_crops(images, result.assignments, EXAMPLES, seed=cfg.seed)

        def finished(value, stopped: bool) -> None:
            result, crops = value
            problems = [p for p in (t.problem(host.viewer.layers) for t in tags) if p]
            if problems:
                host.show_warning(f"{problems[0]} while finding prototypes: result dropped; find them again")
                return
            self.result, self.tags = result, tags
            colours = [self._write_map(t.layer(host.viewer.layers), a) for t, a in zip(tags, result.assignments)]
            self._show_gallery(crops, colours[0], result.prototypes.shares)
            self.make_button.setEnabled(True)
            host.show_info(f"Found {result.prototypes.k} prototypes in {len(tags)} image layer(s). Name them in the "
                           "gallery (Prototypes), then Make pseudo-labels.")

        host.start_job("prototypes", job, finished)

    def _write_map(self, image_layer: Any, assignment: Any) -> Any:
        """Put the prototype map into this image's map layer (new or reused); returns the layer's colours."""
        data = assignment.prototype_map().reshape(label_shape(image_layer))
        layer = self._write(self.maps, image_layer, data, "prototypes", 0.45)
        return np.array([layer.get_color(i + 1)[:3] for i in range(assignment.k)], np.float32)

    def _write(self, written: WrittenLayers, image_layer: Any, data: np.ndarray, what: str, opacity: float) -> Any:
        """Replace the data of the layer written last time for this image, unless the user edited it
        (or removed it): then a new layer, so no edit is ever lost."""
        viewer = self.host.viewer

        def add(values: np.ndarray) -> Any:
            return viewer.add_labels(values, name=f"{image_layer.name} {what}", scale=image_layer.scale,
                                     translate=image_layer.translate, opacity=opacity, metadata={OWNED: what})

        return written.write(id(image_layer), viewer.layers, data, add)[0]

    def _show_gallery(self, crops: list, colours: np.ndarray, shares: np.ndarray) -> None:
        from ..prototypes import tinted

        keep = [c.currentData() for c in self.classes]
        while self.grid.count():
            item = self.grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.classes = []
        for r, row in enumerate(crops):
            rgb = tuple(int(v * 255) for v in colours[r])
            name = QLabel(f"{r + 1}")
            name.setToolTip(f"prototype {r + 1}: {shares[r] * 100:.1f}% of the sampled pixels")
            name.setStyleSheet(f"background-color: rgb{rgb}; color: black; font-weight: bold; padding: 2px;")
            name.setAlignment(Qt.AlignCenter)
            name.setFixedWidth(28)
            self.grid.addWidget(name, r, 0)
            for c, crop in enumerate(row[:EXAMPLES]):
                thumb = QLabel()
                thumb.setPixmap(_pixmap(tinted(crop, colours[r])))
                self.grid.addWidget(thumb, r, 1 + c)
            combo = QComboBox()
            for text, value in CLASS_CHOICES:
                combo.addItem(text, value)
            if r < len(keep) and keep[r]:  # same K again: keep what the user chose
                combo.setCurrentIndex(combo.findData(keep[r]))
            self.grid.addWidget(combo, r, 1 + EXAMPLES)
            self.classes.append(combo)

    # ----------------------------------------------------------------- pseudo-labels

    def make_pseudo_labels(self) -> None:
        from ..prototypes import pseudo_labels

        host = self.host
        if self.result is None:
            raise TowerError("no prototypes yet: Find prototypes first")
        mapping = self.mapping()
        if not mapping:
            raise TowerError("no prototype is named: choose background or foreground for a few prototypes "
                             "in the gallery, then Make pseudo-labels")
        if not any(c >= 2 for c in mapping.values()) or 1 not in mapping.values():
            raise TowerError("name at least one prototype background and one foreground (or another class): "
                             "the segmenter needs both to learn from")
        ignore = round(self.ignore.value, 4)
        result, tags = self.result, list(self.tags)

        def job(callback, should_stop):
            return [pseudo_labels(a, mapping, ignore) for a in result.assignments]

        def finished(labels: list[np.ndarray], stopped: bool) -> None:
            written = []
            for tag, lab in zip(tags, labels):
                problem = tag.problem(host.viewer.layers)
                if problem:
                    host.show_warning(f"{problem} since the prototypes were found: find them again for it")
                    continue
                written.append((tag.layer(host.viewer.layers), self._write_pseudo(tag.layer(host.viewer.layers), lab)))
            if not written:
                return
            image_layer, layer = written[0]
            host.use_for_finetune(image_layer, layer, sparse=True)
            share = float(np.mean([(np.asarray(l.data) > 0).mean() for _, l in written]))
            host.show_info(f"Pseudo-labels written to {len(written)} layer(s), {share * 100:.0f}% of pixels annotated. "
                           "Next: 4. Segment > Fine-tune (sparse is ticked).")

        host.start_job("pseudo-labels", job, finished)

    def _write_pseudo(self, image_layer: Any, labels: np.ndarray) -> Any:
        data = labels.astype(np.uint8).reshape(label_shape(image_layer))
        return self._write(self.pseudo, image_layer, data, "pseudo-labels", 0.5)


__all__ = ["CLASS_CHOICES", "PrototypeSection"]

"""The controls of the napari-tower widget, one small class per section of the workflow.

Sections hold controls and build configs; they start no jobs and touch no layer
data (that is the workflows' work: `training.py`, `segmenting.py`, `model_io.py`).
Every parameter control is a magicgui widget made from its config field
(`controls.py`); `configs()` and `show_config()` move values to and from the config
objects, which the jobs use and the remembered settings store.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import CheckBox
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..config import DataConfig, FinetuneConfig, PredictConfig, PretrainConfig, PreviewConfig, RetrainConfig
from ..errors import TowerError
from ..params import default_of
from ..train.engine import Progress
from ..volume_defaults import FIELDS, FINETUNE_3D, PRETRAIN_3D, VolumeDefaults
from .controls import ConfigControls
from .layers import image_from_layer
from .plot import LossPlot

OWNED = "napari_tower"  # metadata key on the layers this widget creates
SCOPES = ("current slice", "whole stack")


def owned(layer: Any) -> str | None:
    """What this widget made the layer for ('preview', 'labels', 'probabilities'), or None."""
    return getattr(layer, "metadata", {}).get(OWNED)


class Configurable:
    """A section whose parameter controls are `ConfigControls` attributes (magicgui widgets made from fields)."""

    def parameter_controls(self) -> list[Any]:
        """Every magicgui control of the section that edits a config field."""
        groups = [c for c in vars(self).values() if isinstance(c, ConfigControls)]
        return [w for group in groups for w in group.controls.values()]


def add_rows(form: QFormLayout, controls: ConfigControls) -> None:
    """One form row per control: its label and the control; a check box carries its own label."""
    for w in controls.controls.values():
        if isinstance(w, CheckBox):
            form.addRow(w.native)
        else:
            form.addRow(w.label, w.native)


def _eta(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class LayerCombo(QComboBox):
    """A choice among the viewer's layers of one type (not the widget's own previews)."""

    def __init__(self, viewer: Any, layer_type: type, none_text: str = "(none)") -> None:
        super().__init__()
        self.viewer, self.layer_type, self.none_text = viewer, layer_type, none_text
        self.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        self.refresh()

    def candidates(self) -> list[Any]:
        return [l for l in self.viewer.layers
                if isinstance(l, self.layer_type) and owned(l) not in ("preview", "probabilities")]

    def refresh(self) -> None:
        keep = self.layer()
        layers = self.candidates()
        self.blockSignals(True)
        self.clear()
        if not layers:
            self.addItem(self.none_text, None)
        for layer in layers:
            self.addItem(layer.name, layer)
        self.blockSignals(False)
        if keep is not None and any(keep is l for l in layers):
            self.set_layer(keep)

    def layer(self) -> Any | None:
        return self.currentData()

    def set_layer(self, layer: Any) -> None:
        for i in range(self.count()):
            if self.itemData(i) is layer:
                self.setCurrentIndex(i)
                return
        raise ValueError(f"{layer} is not a choice")


class DataSection(QGroupBox):
    """1. The image layers pretraining learns from, their size and what will be sampled."""

    def __init__(self, viewer: Any) -> None:
        super().__init__("1. Data")
        self.viewer = viewer
        self.list = QListWidget()
        self.list.setMaximumHeight(90)
        self.info = QLabel()
        self.info.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Image layers to learn from:"))
        layout.addWidget(self.list)
        layout.addWidget(self.info)
        self.patch = DataConfig.patch
        self.dims = "2d"  # the mode (1. Data > Mode): what training samples
        self.patch_z = DataConfig.patch_z
        # What 3D pretraining and fine-tuning use with 2. Pretrain's controls as they are (set by the widget).
        self.volume_settings: tuple[VolumeDefaults, VolumeDefaults] | None = None
        self.list.itemChanged.connect(lambda _: self.describe())
        self.refresh()

    def refresh(self) -> None:
        from napari.layers import Image as ImageLayer

        checked = self.selected()
        layers = [l for l in self.viewer.layers if isinstance(l, ImageLayer) and owned(l) is None]
        self.list.blockSignals(True)
        self.list.clear()
        for layer in layers:
            item = QListWidgetItem(layer.name)
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setData(Qt.UserRole, layer)
            keep = any(layer is c for c in checked) or (not checked and layer is layers[0])
            item.setCheckState(Qt.Checked if keep else Qt.Unchecked)
            self.list.addItem(item)
        self.list.blockSignals(False)
        self.describe()

    def selected(self) -> list[Any]:
        items = [self.list.item(i) for i in range(self.list.count())]
        return [it.data(Qt.UserRole) for it in items if it.checkState() == Qt.Checked]

    def set_selected(self, layers: list[Any]) -> None:
        for i in range(self.list.count()):
            item = self.list.item(i)
            item.setCheckState(Qt.Checked if any(item.data(Qt.UserRole) is l for l in layers) else Qt.Unchecked)

    def describe(self) -> None:
        lines, planes = [], 0
        for layer in self.selected():
            try:
                image = image_from_layer(layer)
            except TowerError as exc:
                lines.append(f"{layer.name}: {exc}")
                continue
            p, c, h, w = image.shape
            planes += p
            kind = "RGB" if getattr(layer, "rgb", False) else f"{c} channel{'s' * (c > 1)}"
            lines.append(f"{layer.name}: {p} plane{'s' * (p > 1)} of {h} x {w}, {kind}, {image.data.dtype}")
        if not lines:
            self.info.setText("Choose at least one image layer (open or drop a TIFF stack into napari).")
            return
        if self.dims == "3d" and self.volume_settings is not None:
            pre, fine = self.volume_settings
            lines.append(f"3D mode: pretraining takes {pre.describe()} (favouring structured regions); "
                         f"fine-tuning {fine.describe()}.")
        elif self.dims == "3d":
            lines.append(f"3D mode: training samples {self.patch_z} x {self.patch} x {self.patch} sub-volumes of the "
                         "z-stacks, favouring structured regions.")
        else:
            lines.append(f"Training samples {self.patch} x {self.patch} patches from {planes} plane(s), "
                         "favouring structured regions.")
        self.info.setText("\n".join(lines))


class ProgressPanel(QWidget):
    """Progress bar, one line of numbers with the ETA, and the live loss plot."""

    def __init__(self) -> None:
        super().__init__()
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.text = QLabel("idle")
        self.text.setWordWrap(True)
        self.plot = LossPlot()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.bar)
        layout.addWidget(self.text)
        layout.addWidget(self.plot)
        self.last: Progress | None = None

    def start(self, title: str) -> None:
        self.last = None
        self.bar.setRange(0, 0)  # busy until the first record
        self.text.setText(f"{title}: starting...")
        if title not in ("predict", "preview", "prototypes", "pseudo-labels", "export"):  # keep the last training curve
            self.plot.reset(title)

    def render(self, p: Progress) -> None:
        self.last = p
        self.bar.setRange(0, max(1, p.total))
        self.bar.setValue(min(p.step, p.total))
        parts = [f"{p.phase} {p.step}/{p.total}"]
        if p.losses:
            main = p.losses.get("loss")
            terms = ", ".join(f"{k} {v:.3g}" for k, v in p.losses.items() if k != "loss")
            parts.append(f"loss {main:.4g}" + (f" ({terms})" if terms else "") if main is not None else terms)
        if p.patches_per_s:
            parts.append(f"{p.patches_per_s:.1f} {'planes' if p.phase == 'predict' else 'patches'}/s")
        if not p.done:
            parts.append(f"ETA {_eta(p.eta_s)}")
        if p.message:
            parts.append(p.message)
        self.text.setText(" | ".join(parts))
        if p.phase != "predict":
            self.plot.add(p)

    def finish(self, message: str) -> None:
        self.bar.setRange(0, 1)
        self.bar.setValue(1 if self.last is None or not self.last.stopped else 0)
        self.text.setText(message)


class StartFrom(QComboBox):
    """Where training starts without a model of this session: the built-in generalist, scratch, or a file."""

    GENERALIST, SCRATCH, FILE = "built-in generalist", "scratch", "file..."

    def __init__(self) -> None:
        from ..generalist import available

        super().__init__()
        self.path: str | None = None
        # Scratch stays first (the default) until the few-label benchmark shows the generalist wins there.
        self.addItems([self.SCRATCH, self.GENERALIST, self.FILE] if available() else [self.SCRATCH, self.FILE])
        self.setToolTip("What Pretrain adapts, and what Fine-tune starts from when this session has no pretrained\n"
                        "model: the built-in generalist (TOWER on a multi-modality corpus), random weights,\n"
                        "or a pretraining checkpoint file")
        self.activated.connect(self._chosen)

    def _chosen(self, _index: int) -> None:
        if self.currentText() != self.FILE:
            return
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self, "Start from a pretraining checkpoint", "",
                                              "napari-tower model (*.pt)")
        if path:
            self.set_file(path)
        else:
            self.setCurrentText(self.SCRATCH)

    def set_file(self, path: str) -> None:
        """Start from this checkpoint file."""
        self.path = str(path)
        self.setCurrentText(self.FILE)
        self.setToolTip(f"start from {self.path}")

    def value(self) -> str | None:
        """The `--init` equivalent: 'generalist', a file path, or None for scratch."""
        text = self.currentText()
        if text == self.GENERALIST:
            return "generalist"
        return self.path if text == self.FILE and self.path else None


class PretrainSection(QGroupBox, Configurable):
    """2. Self-supervised pretraining settings, Pretrain / Stop and the progress panel."""

    def __init__(self) -> None:
        super().__init__("2. Pretrain")
        self.controls = ConfigControls(PretrainConfig, "method", "steps", "data.patch", "data.patch_z", "batch",
                                       "model.base", "device")
        c = self.controls
        self.method, self.steps, self.patch, self.patch_z = c["method"], c["steps"], c["data.patch"], c["data.patch_z"]
        self.patch_z.enabled = False  # 3D mode only (1. Data > Mode)
        self.batch, self.base, self.device = c["batch"], c["model.base"], c["device"]
        for path, name in FIELDS.items():  # in 3D mode a value left at its default stands for the 3D one
            c[path].tooltip = (f"{c[path].tooltip}\n3D volume mode, left at {default_of(PretrainConfig, path)}: "
                               f"{getattr(PRETRAIN_3D, name)} for pretraining, {getattr(FINETUNE_3D, name)} for "
                               "fine-tuning (CPU defaults); any other value is used as it is")
        form = QFormLayout()
        add_rows(form, c)
        self.start = StartFrom()
        form.addRow("start from", self.start)
        self.pretrain_button = QPushButton("Pretrain")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.pretrain_button)
        buttons.addWidget(self.stop_button)
        self.progress = ProgressPanel()
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)

    def config(self) -> PretrainConfig:
        cfg = self.controls.fill(PretrainConfig())
        cfg.val_every = max(1, min(cfg.val_every, cfg.steps))
        cfg.validate()
        return cfg

    def configs(self) -> dict[str, Any]:
        return {"pretrain": self.controls.fill(PretrainConfig())}

    def show_config(self, name: str, cfg: Any) -> None:
        if name == "pretrain":
            self.controls.show(cfg)


class PreviewSection(QGroupBox, Configurable):
    """3. One layer per proxy-task corruption of the current slice."""

    def __init__(self) -> None:
        super().__init__("3. Preview corruptions")
        self.controls = ConfigControls(PreviewConfig, "seed")
        self.seed = self.controls["seed"]
        self.button = QPushButton("Preview corruptions")
        row = QHBoxLayout(self)
        row.addWidget(QLabel(self.seed.label))
        row.addWidget(self.seed.native)
        row.addWidget(self.button, 1)

    def config(self) -> PreviewConfig:
        return self.controls.fill(PreviewConfig())

    def configs(self) -> dict[str, Any]:
        return {"preview": self.config()}

    def show_config(self, name: str, cfg: Any) -> None:
        if name == "preview":
            self.controls.show(cfg)


class SegmentSection(QGroupBox, Configurable):
    """4. Fine-tune a segmenter on a Labels layer, predict into a Labels layer."""

    def __init__(self, viewer: Any) -> None:
        from napari.layers import Image as ImageLayer
        from napari.layers import Labels

        super().__init__("4. Segment")
        self.image = LayerCombo(viewer, ImageLayer)
        self.labels = LayerCombo(viewer, Labels)
        # Not a field of its own: ticked, FinetuneConfig.target is "sparse".
        self.sparse = CheckBox(value=False, text="sparse scribbles",
                               tooltip="Paint 1 on background and 2, 3, ... on classes; 0 (unpainted) is ignored.\n"
                                       "Unticked: the labels are dense (0 = background) on every plane that has any.")
        # Ticked with sparse, FinetuneConfig.target is "sparse_instance": 2, 3, ... are objects, not classes.
        self.sparse_objects = CheckBox(value=False, text="each id one object", enabled=False,
                                       tooltip="Sparse painting of objects: 1 on background, a new id (2, 3, ...) for "
                                               "each object you paint whole; 0 (unpainted) is ignored.\nTrains an "
                                               "instance model with a shape-aware head (capped distance unless "
                                               "another shape head is chosen).")
        self.sparse.changed.connect(lambda on: setattr(self.sparse_objects, "enabled", bool(on)))
        self.finetune_controls = ConfigControls(FinetuneConfig, "steps", "minutes", "instance_head")
        self.steps, self.minutes = self.finetune_controls["steps"], self.finetune_controls["minutes"]
        self.finetune_button = QPushButton("Fine-tune")
        self.scope = QComboBox()
        self.scope.addItems(SCOPES)
        self.predict_controls = ConfigControls(PredictConfig, "instances", "probabilities", "seed_threshold", "tta")
        self.instances, self.probabilities = self.predict_controls["instances"], self.predict_controls["probabilities"]
        self.split_threshold = self.predict_controls["seed_threshold"]
        self.split_threshold.enabled = bool(self.instances.value)  # it only acts on instances
        self.instances.changed.connect(lambda on: setattr(self.split_threshold, "enabled", bool(on)))
        self.predict_button = QPushButton("Predict")
        form = QFormLayout(self)
        form.addRow("image", self.image)
        form.addRow("annotations", self.labels)
        sparse_row = QHBoxLayout()
        sparse_row.addWidget(self.sparse.native)
        sparse_row.addWidget(self.sparse_objects.native)
        form.addRow(sparse_row)
        add_rows(form, self.finetune_controls)
        form.addRow(self.finetune_button)
        form.addRow("predict on", self.scope)
        options = QHBoxLayout()
        options.addWidget(self.instances.native)
        options.addWidget(self.probabilities.native)
        form.addRow(options)
        form.addRow("split threshold", self.split_threshold.native)
        self.test_time_flips = self.predict_controls["tta"]
        form.addRow("test-time flips", self.test_time_flips.native)
        form.addRow(self.predict_button)

    def finetune_config(self) -> FinetuneConfig:
        """The fine-tuning settings of this section (steps, sparse); the rest are filled in by the caller."""
        cfg = self.finetune_controls.fill(FinetuneConfig())
        if self.sparse.value:
            cfg.target = "sparse_instance" if self.sparse_objects.value else "sparse"
        if cfg.target == "sparse_instance" and cfg.instance_head in ("boundary", "auto"):
            cfg.instance_head = "capped"  # the boundary head learns from dense labels only (and 3D from neither)
        return cfg

    def predict_config(self) -> PredictConfig:
        return self.predict_controls.fill(PredictConfig())

    def configs(self) -> dict[str, Any]:
        return {"finetune": self.finetune_config(), "predict": self.predict_config()}

    def show_config(self, name: str, cfg: Any) -> None:
        if name == "finetune":
            self.finetune_controls.show(cfg)
            self.sparse.value = cfg.target in ("sparse", "sparse_instance")
            self.sparse_objects.value = cfg.target == "sparse_instance"
        elif name == "predict":
            self.predict_controls.show(cfg)


class CorrectSection(QGroupBox, Configurable):
    """5. Retrain from the user's corrections of a predicted Labels layer."""

    def __init__(self, viewer: Any) -> None:
        from napari.layers import Labels

        super().__init__("5. Correct and retrain")
        self.labels = LayerCombo(viewer, Labels)
        self.controls = ConfigControls(RetrainConfig, "steps", "minutes", "edit_weight", "lr_scale", "replay")
        self.steps, self.minutes, self.edit_weight = (self.controls["steps"], self.controls["minutes"],
                                                      self.controls["edit_weight"])
        self.button = QPushButton("Retrain from corrections")
        hint = QLabel("Edit the predicted Labels layer with napari's paint, fill and erase tools, then retrain: "
                      "the pixels you changed weigh more.")
        hint.setWordWrap(True)
        form = QFormLayout(self)
        form.addRow(hint)
        form.addRow("corrected labels", self.labels)
        add_rows(form, self.controls)
        form.addRow(self.button)

    def config(self) -> RetrainConfig:
        return self.controls.fill(RetrainConfig())

    def configs(self) -> dict[str, Any]:
        return {"retrain": self.config()}

    def show_config(self, name: str, cfg: Any) -> None:
        if name == "retrain":
            self.controls.show(cfg)


class ModelSection(QGroupBox):
    """The models of this session (save, load, export to bioimage.io) and the device doctor."""

    def __init__(self) -> None:
        from ..device import device_report

        super().__init__("Model")
        self.info = QLabel("no model yet")
        self.info.setWordWrap(True)
        self.save_button = QPushButton("Save model...")
        self.load_button = QPushButton("Load model...")
        self.load_button.setToolTip("A napari-tower model (.pt), or a bioimage.io package (.zip) napari-tower exported")
        self.export_button = QPushButton("Export bioimage.io...")
        self.export_button.setToolTip("Write the segmenter as a bioimage.io model package (.zip) for other tools;\n"
                                      "a crop of the image chosen under 4. Segment becomes its test input")
        row = QHBoxLayout()
        row.addWidget(self.save_button)
        row.addWidget(self.load_button)
        # Device doctor: which torch build and device compute here, and how to get a GPU when it is the CPU.
        self.doctor = QLabel(device_report().text())
        self.doctor.setWordWrap(True)
        self.doctor.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.doctor.setStyleSheet("color: #a0a0a0;")
        layout = QVBoxLayout(self)
        layout.addWidget(self.info)
        layout.addLayout(row)
        layout.addWidget(self.export_button)
        layout.addWidget(self.doctor)



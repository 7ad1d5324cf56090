"""The mode control, "2D planes / 3D volume", and the voxel size (issue 17), under 1. Data.

When the image layer the widget learns from changes, the mode is chosen from it by the core's rule
(`data.voxels.choose_dims`: a Z axis of at least 8 slices, from the layer's shape, axis names and scale) and the
voxel size is filled in from the layer's `scale`; the mode's tooltip says why. The user may switch either; the
choice holds until another layer is chosen. `apply(cfg)` puts both into a PretrainConfig or FinetuneConfig, the
same fields the command line's --dims and --voxel-size set. The mode is not remembered between sessions: it
belongs to the data.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QWidget

from ..data.voxels import ISOTROPIC, DimsChoice, VoxelSize, choose_dims, stack_axes, voxel_size_from_scale

MODES = {"2d": "2D planes", "3d": "3D volume"}


def layer_choice(layer: Any) -> tuple[DimsChoice, VoxelSize | None]:
    """The auto mode of an image layer and the voxel size its scale gives (None without a Z axis)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    shape = tuple(int(s) for s in data.shape)
    rgb = bool(getattr(layer, "rgb", False))
    axes, guessed = stack_axes(len(shape), rgb, getattr(layer, "axis_labels", None))
    spatial_scale = [float(s) for s in np.asarray(layer.scale)][-(len(axes) - rgb):]
    units = [str(u) for u in getattr(layer, "units", None) or ()] or None
    voxel = voxel_size_from_scale(spatial_scale, axes, units)
    choice = choose_dims(axes, shape, guessed=guessed, voxel=voxel if voxel and voxel.zyx != ISOTROPIC else None)
    return choice, voxel


class VolumeSection(QGroupBox):
    """Mode (2D planes / 3D volume, auto from the layer, switchable) and the voxel size z, y, x."""

    def __init__(self) -> None:
        super().__init__("Mode")
        self.mode = QComboBox()
        for dims, text in MODES.items():
            self.mode.addItem(text, dims)
        self.voxel = [QDoubleSpinBox() for _ in "zyx"]
        for box, axis in zip(self.voxel, "zyx"):
            box.setDecimals(4)
            box.setRange(1e-4, 1e6)
            box.setValue(1.0)
            box.setToolTip(f"voxel size along {axis} (any unit: only the ratios count); from the layer's scale")
        self.auto = QLabel()
        self.auto.setWordWrap(True)
        self.auto.setStyleSheet("color: #a0a0a0;")
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        for box, axis in zip(self.voxel, "zyx"):
            row.addWidget(QLabel(axis))
            row.addWidget(box, 1)
        voxels = QWidget()
        voxels.setLayout(row)
        form = QFormLayout(self)
        form.addRow("mode", self.mode)
        form.addRow("voxel size", voxels)
        form.addRow(self.auto)
        self.choice: DimsChoice | None = None  # what auto chose for the followed layer
        self.user_chose = False
        self._layer: Any = None  # weakref to the layer the mode was chosen for
        self.mode.activated.connect(self._switched)  # the user's choice, not programmatic changes
        self._show_state()

    # ----------------------------------------------------------------- following the layer

    def follow(self, layer: Any | None) -> None:
        """Choose the mode for `layer` (the image the widget learns from) unless it is the one already followed."""
        current = self._layer() if self._layer is not None else None
        if layer is current and layer is not None:
            return
        self._layer = weakref.ref(layer) if layer is not None else None
        self.user_chose = False
        if layer is None:
            self.choice = None
            self._set_mode("2d")
            self._set_voxel(ISOTROPIC)
        else:
            self.choice, voxel = layer_choice(layer)
            self._set_mode(self.choice.dims)
            self._set_voxel(voxel.zyx if voxel is not None else ISOTROPIC)
        self._show_state()

    def _switched(self, _index: int) -> None:
        self.user_chose = self.choice is None or self.dims() != self.choice.dims
        self._show_state()

    def _set_mode(self, dims: str) -> None:
        self.mode.setCurrentIndex(self.mode.findData(dims))

    def _set_voxel(self, zyx: tuple[float, float, float]) -> None:
        for box, v in zip(self.voxel, zyx):
            box.setValue(float(v))

    def _show_state(self) -> None:
        three_d = self.dims() == "3d"
        for box in self.voxel:
            box.setEnabled(three_d)
        if self.choice is None:
            why = "no image chosen: 2D planes"
        elif self.user_chose:
            why = f"chosen by you; auto would choose {MODES[self.choice.dims]}: {self.choice.reason}"
        else:
            why = f"auto: {self.choice.reason}"
        self.mode.setToolTip("2D planes: every plane on its own (2D convolutions).\n3D volume: z-stacks with 3D "
                             f"convolutions, objects consistent across z.\n\n{why}")
        self.auto.setText(why)

    # ----------------------------------------------------------------- into the configs

    def dims(self) -> str:
        """ "2d" or "3d"."""
        return str(self.mode.currentData())

    def set_dims(self, dims: str) -> None:
        """Switch the mode as the user would (tests, and a model that needs a mode)."""
        self._set_mode(dims)
        self._switched(self.mode.currentIndex())

    def voxel_size(self) -> tuple[float, float, float]:
        return (self.voxel[0].value(), self.voxel[1].value(), self.voxel[2].value())

    def apply(self, cfg: Any) -> Any:
        """Set `cfg.model.dims` (and, in 3D, `voxel_size`) of a PretrainConfig/FinetuneConfig; returns `cfg`."""
        cfg.model.dims = self.dims()
        if cfg.model.dims == "3d":
            cfg.model.voxel_size = self.voxel_size()
        return cfg

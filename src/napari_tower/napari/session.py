"""What the widget remembers during a session: models, and where results came from.

No Qt here. Layers are held by weak reference so a deleted layer is really
gone; a result is written only into the layer it was computed for, and only
while that layer still holds the data it was computed from.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..model_bundle import ModelBundle
from .layers import WrittenLayers, fingerprint


@dataclass
class LayerTag:
    """A layer and a fingerprint of the data a job read from it."""

    ref: weakref.ReferenceType
    name: str
    print_: tuple

    @classmethod
    def of(cls, layer: Any) -> LayerTag:
        return cls(weakref.ref(layer), layer.name, fingerprint(layer.data))

    def layer(self, layers: Any) -> Any | None:
        """The layer if it is still in `layers`, else None."""
        layer = self.ref()
        return layer if layer is not None and any(layer is other for other in layers) else None

    def problem(self, layers: Any) -> str | None:
        """Why a result computed from this layer must not be used now, or None when it may."""
        layer = self.layer(layers)
        if layer is None:
            return f"layer '{self.name}' was removed"
        if fingerprint(layer.data) != self.print_:
            return f"the data of layer '{self.name}' changed"
        return None


@dataclass
class PredictionRecord:
    """The last prediction written into a Labels layer: what it was computed from and what it was."""

    image: LayerTag
    labels_ref: weakref.ReferenceType
    written: np.ndarray  # (planes, Y, X): the layer's content right after the prediction was written
    planes: list[int]  # planes of the image that hold a prediction
    target: str  # the model's target kind

    def changed(self, current: np.ndarray) -> np.ndarray:
        """Per-pixel mask (planes, Y, X) of what the user edited since the prediction."""
        return current != self.written


@dataclass
class Session:
    """Models and prediction records of one widget."""

    pretrained: ModelBundle | None = None
    segmenter: ModelBundle | None = None
    predictions: dict[int, PredictionRecord] = field(default_factory=dict)
    previews: WrittenLayers = field(default_factory=WrittenLayers)  # by corruption name
    probabilities: WrittenLayers = field(default_factory=WrittenLayers)  # by id(image layer)

    def set_model(self, bundle: ModelBundle) -> str:
        """Keep a model as the current pretrained model or segmenter; returns its kind."""
        if bundle.kind == "segmenter":
            self.segmenter = bundle
        else:
            self.pretrained = bundle
        return bundle.kind

    def record(self, labels_layer: Any, rec: PredictionRecord) -> None:
        self.predictions = {k: v for k, v in self.predictions.items() if v.labels_ref() is not None}
        self.predictions[id(labels_layer)] = rec

    def record_for(self, labels_layer: Any) -> PredictionRecord | None:
        rec = self.predictions.get(id(labels_layer))
        return rec if rec is not None and rec.labels_ref() is labels_layer else None

    def output_for(self, image_layer: Any, layers: Any) -> Any | None:
        """The Labels layer this session last predicted `image_layer` into, if still in `layers`."""
        for rec in reversed(list(self.predictions.values())):
            labels = rec.labels_ref()
            if rec.image.ref() is image_layer and labels is not None and any(labels is l for l in layers):
                return labels
        return None

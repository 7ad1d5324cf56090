"""What the widget's guided loop remembers: the regions it suggested, its layers, the label history (no Qt)."""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any

from ..label_history import LabelHistory
from ..segment.uncertainty import Region

_HISTORIES = itertools.count()


def new_history() -> LabelHistory:
    """A label history of its own for a new widget, beside the autosaves (in the settings folder)."""
    from .settings import config_dir

    stamp = time.strftime("%Y%m%d-%H%M%S")
    return LabelHistory(config_dir() / "label-history" / f"{stamp}-{os.getpid()}-{next(_HISTORIES)}")


@dataclass
class LoopState:
    """What the guided loop remembers: regions suggested per image layer, its layers, the label history."""

    history: LabelHistory = field(default_factory=new_history)
    regions: dict[int, list[Region]] = field(default_factory=dict)  # id(image layer) -> suggested, in order
    live_ref: Any = None  # weakref to the live preview layer
    outline_ref: Any = None  # weakref to the next-region Shapes layer
    live_updates: int = 0  # live previews shown
    last_check: Any = None  # the last PretrainingCheck
    step_timing: Any = None  # train.sizing.StepTiming of the last fine-tune or retrain (remembered)

    def layer(self, ref: Any, layers: Any) -> Any | None:
        layer = ref() if ref is not None else None
        return layer if layer is not None and any(layer is l for l in layers) else None

"""magicgui controls made from config fields: one definition of a parameter, in the CLI and the widget.

`param_control(PretrainConfig, "data.patch")` is a spin box whose label, tooltip (the help text),
range, step and initial value are the field's `Param` and default, a combo box for a field with
choices and a check box for a bool. `ConfigControls` holds a section's controls and moves values
between them and a config object (for jobs and for the remembered settings).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, SpinBox
from magicgui.widgets.bases import ValueWidget

from ..params import Param, default_of, params

INT_LIMIT = 2**31 - 1  # what a Qt spin box holds


def field_param(cls: type, path: str) -> Param:
    """The `Param` of the (dotted) field `path` of config class `cls`."""
    for name, _, p in params(cls):
        if name == path:
            return p
    raise KeyError(f"{cls.__name__} has no parameter field {path!r}")


def spin_range(p: Param, integer: bool) -> tuple[float, float]:
    """The spin-box bounds of a field: its own, open bounds moved inside (by 1, or a step for floats)."""
    inside = 1 if integer else (p.step or 0.01)
    lo = -INT_LIMIT if p.min is None else p.min + (inside if p.min_open else 0)
    hi = INT_LIMIT if p.max is None else p.max - (inside if p.max_open else 0)
    return (int(lo), int(min(hi, INT_LIMIT))) if integer else (float(lo), float(hi))


def param_control(cls: type, path: str) -> ValueWidget:
    """A magicgui widget for the field `path` of `cls`: label, tooltip, range/step or choices, default value."""
    p = field_param(cls, path)
    default = default_of(cls, path)
    common: dict[str, Any] = {"label": p.label or path.rsplit(".", 1)[-1], "tooltip": p.help}
    if p.choices is not None:
        widget: ValueWidget = ComboBox(value=default, choices=list(p.choices), **common)
    elif isinstance(default, bool):
        widget = CheckBox(value=default, text=common["label"], tooltip=p.help)  # its text is its label
    elif isinstance(default, int):
        lo, hi = spin_range(p, integer=True)
        widget = SpinBox(value=default, min=lo, max=hi, step=int(p.step or p.multiple_of or 1), **common)
    else:
        lo, hi = spin_range(p, integer=False)
        widget = FloatSpinBox(value=default, min=lo, max=hi, step=p.step or 0.1, **common)
    widget.config_field = (cls, path)  # type: ignore[attr-defined] - which field it edits (tests check it)
    return widget


class ConfigControls:
    """The controls of some fields of one config class, by dotted field path."""

    def __init__(self, cls: type, *paths: str) -> None:
        self.cls = cls
        self.controls: dict[str, ValueWidget] = {path: param_control(cls, path) for path in paths}

    def __getitem__(self, path: str) -> ValueWidget:
        return self.controls[path]

    def values(self) -> dict[str, Any]:
        return {path: w.value for path, w in self.controls.items()}

    def fill(self, cfg: Any) -> Any:
        """Set the controlled fields of `cfg` (a `cls` instance) from the controls; returns it."""
        for path, w in self.controls.items():
            obj, name = _owner(cfg, path)
            setattr(obj, name, w.value)
        return cfg

    def show(self, cfg: Any) -> None:
        """Set the controls from `cfg`; a value a control cannot hold (out of range, unknown choice) is skipped."""
        for path, w in self.controls.items():
            obj, name = _owner(cfg, path)
            try:
                w.value = getattr(obj, name)
            except (TypeError, ValueError, AttributeError):
                continue



def _owner(cfg: Any, path: str) -> tuple[Any, str]:
    *parents, name = path.split(".")
    obj = cfg
    for part in parents:
        obj = getattr(obj, part)
    if not dataclasses.is_dataclass(obj):
        raise AttributeError(path)
    return obj, name

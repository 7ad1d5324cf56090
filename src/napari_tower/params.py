"""Field metadata: one definition per parameter, from which validation, CLI options and widget controls are built.

A config dataclass field declared with `param(...)` carries its help text, range or choices, CLI flag and GUI
label. `check_params` validates an instance from that metadata; `cli/options.py` turns the same fields into
argparse options and `napari/controls.py` into magicgui widgets, so a default or a range lives in one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import TowerError

PARAM = "napari_tower.param"


@dataclass(frozen=True)
class Param:
    """What the front ends need to know about one config field.

    `flag` is the CLI option ("" keeps the field off the command line; None derives `--name-with-dashes`).
    `label` is the widget's row label (None keeps the field out of the widget). Bounds are inclusive unless
    `min_open`/`max_open`; for tuple fields `choices` applies to each element. `hint` ends the error message.
    """

    help: str
    flag: str | None = None
    label: str | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    choices: tuple[Any, ...] | None = None
    multiple_of: int | None = None
    step: float | None = None  # widget spin-box step
    hint: str = ""
    noun: str = ""  # how messages name the value ("patch size"); default: the field name

    def describe_range(self) -> str:
        """The allowed values in words, for help texts and error messages."""
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        lo = None if self.min is None else _fmt(self.min)
        hi = None if self.max is None else _fmt(self.max)
        if lo is not None and hi is not None:
            if self.min_open or self.max_open:
                text = f"a value in {'(' if self.min_open else '['}{lo}, {hi}{')' if self.max_open else ']'}"
            else:
                text = f"{lo}..{hi}"
        elif lo is not None:
            text = f"{'>' if self.min_open else '>='} {lo}"
        elif hi is not None:
            text = f"{'<' if self.max_open else '<='} {hi}"
        else:
            text = "any value"
        if self.multiple_of:
            text = f"a multiple of {self.multiple_of}, {text}"
        return text


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def param(default: Any, help: str, **meta: Any) -> Any:  # `help` shadows the builtin: mirrors argparse's keyword
    """A dataclass field with `Param` metadata (see `Param` for the keywords)."""
    return dataclasses.field(default=default, metadata={PARAM: Param(help=help, **meta)})


def param_of(f: dataclasses.Field) -> Param | None:
    """The field's `Param`, or None for plain fields."""
    return f.metadata.get(PARAM)


def cli_flag(f: dataclasses.Field) -> str | None:
    """The field's command-line flag, or None when it is not on the command line."""
    p = param_of(f)
    if p is None or p.flag == "":
        return None
    return p.flag or "--" + f.name.replace("_", "-")


def params(cls_or_obj: Any, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Param]]:
    """Every field with metadata, nested configs included, as (dotted path, field, Param)."""
    for f in dataclasses.fields(cls_or_obj):
        p = param_of(f)
        nested = nested_config(f)
        if p is not None:
            yield prefix + f.name, f, p
        elif nested is not None:
            yield from params(nested, prefix + f.name + ".")


def nested_config(f: dataclasses.Field) -> type | None:
    """The config class of a nested-config field (declared with a default_factory), else None."""
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        made = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(made):
            return type(made)
    return None


def default_of(cls: type, path: str) -> Any:
    """The default value of the (dotted) field `path` of config class `cls`."""
    obj: Any = cls()
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def check_value(name: str, value: Any, p: Param) -> None:
    """Raise TowerError naming the problem and the allowed values when `value` breaks `p`'s rules."""
    noun = p.noun or name.replace("_", " ")
    hint = f" ({p.hint})" if p.hint else ""
    values = value if isinstance(value, (tuple, list)) else (value,)
    if p.choices is not None:
        bad = [v for v in values if v not in p.choices]
        if bad:
            shown = ", ".join(str(b) for b in bad)
            raise TowerError(f"unknown {noun} '{shown}': choose {p.describe_range()}{hint}")
        return
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        too_low = p.min is not None and (v <= p.min if p.min_open else v < p.min)
        too_high = p.max is not None and (v >= p.max if p.max_open else v > p.max)
        off_grid = bool(p.multiple_of) and v % p.multiple_of != 0
        if too_low or too_high or off_grid or v != v:  # v != v: NaN
            raise TowerError(f"{noun} {v} is invalid: use {p.describe_range()}{hint}")


def check_params(obj: Any) -> None:
    """Validate every `param` field of a config instance (nested configs by their own `validate`)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        p = param_of(f)
        if p is not None:
            check_value(f.name, value, p)
        elif dataclasses.is_dataclass(value) and hasattr(value, "validate"):
            value.validate()

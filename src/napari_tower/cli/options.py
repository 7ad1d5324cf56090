"""argparse options generated from config fields, and configs built back from the parsed arguments.

A config field declared with `param(...)` knows its flag, type, default, choices, range and help
(`napari_tower.params`); `add_config_options` turns it into an option, so the command line cannot
drift from the config. Values are not range-checked here: `config_from_args` builds the config
and calls its `validate()`, which gives the same `error: ...` message as the widget and the API.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ..params import Param, cli_flag, default_of, nested_config, params

T = TypeVar("T")

# The parser default (see argparse's set_defaults) that carries a command's generated options into the
# parsed Namespace, so `config_from_args` needs nothing but the arguments.
OPTIONS_KEY = "_config_options"


@dataclass(frozen=True)
class ConfigOption:
    """One option generated from a config field: which field, under which flag, with which default."""

    cls: type  # the config class the option fills in
    path: str  # the field's dotted path in `cls` ("data.patch")
    flag: str  # "--patch"
    dest: str  # the attribute of the parsed Namespace
    param: Param
    kind: type  # the value's type (a tuple field's element type)
    default: Any  # the option's default: the field's, unless the command gives its own

    @property
    def field_default(self) -> Any:
        """The config field's own default."""
        return default_of(self.cls, self.path)

    @property
    def is_tuple(self) -> bool:
        """Whether the field holds a tuple (comma-separated on the command line)."""
        return isinstance(self.field_default, tuple)

    @property
    def is_ranged(self) -> bool:
        """Whether the field has bounds or a grid that `validate()` enforces."""
        p = self.param
        return p.min is not None or p.max is not None or bool(p.multiple_of)


def field_param(cls: type, path: str) -> Param:
    """The `Param` of the dotted field `path` of `cls`."""
    found = {p_: p for p_, _, p in params(cls)}
    return found[path]


def _field_type(cls: type, path: str) -> Any:
    """The resolved type annotation of the dotted field `path` of `cls`."""
    *outer, name = path.split(".")
    for part in outer:
        cls = nested_config(next(f for f in dataclasses.fields(cls) if f.name == part))  # type: ignore[assignment]
    return typing.get_type_hints(cls)[name]


def _comma_separated(kind: type) -> Callable[[str], tuple[Any, ...]]:
    """An argparse `type` reading "a,b,c" into a tuple of `kind`."""
    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(v.strip()) for v in text.split(",") if v.strip())
        except ValueError:
            what = "whole numbers" if kind is int else "numbers" if kind is float else "values"
            raise argparse.ArgumentTypeError(f"'{text}' is invalid: give {what} separated by commas, "
                                             "e.g. 0,1,2") from None

    parse.__name__ = f"comma-separated {kind.__name__}"
    return parse


def config_fields(cls: type, only: Collection[str] | None = None,
                  exclude: Collection[str] = ()) -> list[tuple[str, dataclasses.Field, Param]]:
    """The fields of `cls` (nested ones as dotted paths) that have a command-line flag, in declaration order."""
    found = [(path, f, p) for path, f, p in params(cls) if cli_flag(f) is not None]
    known = {path for path, _, _ in found}
    unknown = sorted(set(only or ()) - known) + sorted(set(exclude) - known)
    if unknown:  # a programming error: a typo, or a field taken off the command line
        raise ValueError(f"{cls.__name__} has no command-line field(s) {unknown}")
    return [(path, f, p) for path, f, p in found if (only is None or path in only) and path not in exclude]


def add_config_options(parser: argparse.ArgumentParser, cls: type, only: Collection[str] | None = None,
                       exclude: Collection[str] = (), *, defaults: Mapping[str, Any] | None = None,
                       flags: Mapping[str, str] | None = None,
                       notes: Mapping[str, str] | None = None) -> list[ConfigOption]:
    """Add one option per command-line field of `cls` (`only` these dotted paths, or all but `exclude`).

    Type, default, choices and help (with the allowed range) come from the field. A command whose
    default legitimately differs passes it in `defaults` (by path; None means "not given": the
    config keeps its default unless the command fills it in); `flags` renames an option (demo's
    `--finetune-steps`) and `notes` adds to its help. Booleans defaulting to True get `--no-...`.
    """
    defaults, flags, notes = defaults or {}, flags or {}, notes or {}
    added: list[ConfigOption] = []
    for path, f, p in config_fields(cls, only, exclude):
        flag = flags.get(path) or cli_flag(f)
        assert flag is not None
        dest = flag.lstrip("-").replace("-", "_")
        default = defaults[path] if path in defaults else default_of(cls, path)
        hint = _field_type(cls, path)
        is_tuple = typing.get_origin(hint) is tuple
        kind = typing.get_args(hint)[0] if is_tuple else hint
        help_text = p.help
        # Scalar choices show in the metavar ({auto,cpu,...}); ranges and a tuple's choices go into the help.
        if (p.choices is not None and is_tuple) or p.min is not None or p.max is not None or p.multiple_of:
            help_text += f"; {'each ' if is_tuple else ''}{p.describe_range()}"
        if path in notes:
            help_text += f" ({notes[path]})"
        kw: dict[str, Any] = {"dest": dest, "default": default}
        if kind is bool:
            # True by default: the option must be able to switch it off (--prior/--no-prior).
            action = argparse.BooleanOptionalAction if default_of(cls, path) else "store_true"
            made = parser.add_argument(flag, action=action, **kw)
        elif is_tuple:
            # A string default goes through `type` like a typed value, and reads well in the help.
            if isinstance(default, tuple):
                kw["default"] = ",".join(map(str, default))
            made = parser.add_argument(flag, type=_comma_separated(kind), **kw)
        else:
            made = parser.add_argument(flag, type=kind, choices=p.choices, **kw)
        made.help = help_text  # set after creation: BooleanOptionalAction would append "(default: ...)"
        added.append(ConfigOption(cls, path, flag, dest, p, kind, default))
    parser.set_defaults(**{OPTIONS_KEY: [*config_options(parser), *added]})
    return added


def config_options(parser: argparse.ArgumentParser) -> list[ConfigOption]:
    """The options `add_config_options` added to `parser`."""
    return list(parser.get_default(OPTIONS_KEY) or [])


def config_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """Build and validate a `cls` from the options `add_config_options` generated for it.

    Options left at None keep the field's default. `overrides` win over the arguments: by field name
    (a nested config given as an instance replaces it, as a dict updates some of its fields) or,
    through `**{"data.patch": 64}`, by dotted path. Raises TowerError when a value is out of range.
    """
    values: dict[str, Any] = {}
    for opt in getattr(args, OPTIONS_KEY, ()):
        if opt.cls is cls and getattr(args, opt.dest) is not None:
            values[opt.path] = getattr(args, opt.dest)
    for key, value in overrides.items():
        if isinstance(value, dict):
            values.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            values = {p: v for p, v in values.items() if not p.startswith(key + ".")}
            values[key] = value
    cfg = _build(cls, values)
    cfg.validate()  # type: ignore[attr-defined]
    return cfg


def given_paths(cls: type, args: argparse.Namespace) -> set[str]:
    """The dotted fields of `cls` whose generated option was given (is not None) in `args`.

    Meaningful for options added with a None default (`defaults={path: None}`): the others always hold a value.
    """
    return {opt.path for opt in getattr(args, OPTIONS_KEY, ()) if opt.cls is cls
            and getattr(args, opt.dest) is not None}


def _build(cls: type[T], values: Mapping[str, Any]) -> T:
    kwargs: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for path, value in values.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            kwargs[head] = value
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        sub = nested_config(f)
        if f.name in nested and sub is not None:
            kwargs[f.name] = _build(sub, nested[f.name])
    return cls(**kwargs)


__all__ = ["ConfigOption", "add_config_options", "config_fields", "config_from_args", "config_options", "field_param",
           "given_paths"]

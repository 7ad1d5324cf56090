"""The command line's config options come from the config fields' `param()` metadata, nowhere else.

Everything expected here is read from the metadata (`napari_tower.params`): defaults, choices,
ranges and flags. The only hand-kept facts are the command-specific defaults the command modules
document (pretrain's --steps, demo's step counts, bench's preset values) and the one hand-written
option that shares a field's flag (training --precision).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
from pathlib import Path

import pytest

from napari_tower import config
from napari_tower.cli import COMMANDS, build_parser, main
from napari_tower.cli.options import ConfigOption, config_from_args, config_options, field_param
from napari_tower.cli.training import PRECISION_CHOICES
from napari_tower.config import AcceleratorConfig
from napari_tower.demo import DEMO_STEPS
from napari_tower.params import cli_flag, default_of, params

SRC = Path(__file__).resolve().parents[2] / "src" / "napari_tower"

# Defaults a command sets on purpose, each explained where the option is added.
OWN_DEFAULTS = {
    ("pretrain", "--steps"): None,  # the field's default, or with --resume the interrupted run's total
    # None until the mode is known: 2D takes the field's default, 3D napari_tower.volume_defaults' (issue 17)
    **{(command, flag): None for command in ("pretrain", "finetune") for flag in ("--patch", "--patch-z", "--batch")},
    ("demo", "--steps"): DEMO_STEPS,  # the demo's short run
    ("demo", "--finetune-steps"): DEMO_STEPS,
    # bench: None is "the preset's value" (--quick or --full)
    **{("bench", flag): None for flag in ("--pretrain-steps", "--finetune-steps", "--batch", "--patch", "--base",
                                          "--depth")},
}
# Hand-written options that share a config field's flag but mean something else.
# Training --precision sets mixed_precision + accel.amp_dtype; export --normalise sets the bioimage.io package's
# preprocessing (BioimageioExportConfig), not PredictConfig's, though they share the spelling.
HAND_WRITTEN = {("pretrain", "--precision"), ("finetune", "--precision"), ("export", "--normalise")}

CONFIG_CLASSES = [c for c in vars(config).values() if dataclasses.is_dataclass(c) and isinstance(c, type)]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


PARSERS = _subparsers()
OPTIONS = [(name, opt) for name, p in PARSERS.items() for opt in config_options(p)]


def _minimal_argv(name: str) -> list[str]:
    """The command with a placeholder for each required argument."""
    argv = [name]
    for action in PARSERS[name]._actions:
        if not action.option_strings:
            argv.append("x")
        elif action.required:
            argv += [action.option_strings[0], "x"]
    return argv


def _action(name: str, flag: str) -> argparse.Action:
    return PARSERS[name]._option_string_actions[flag]


def _id(case: tuple[str, ConfigOption]) -> str:
    return f"{case[0]} {case[1].flag}"


def test_registry_matches_the_parser():
    assert [c.NAME for c in COMMANDS] == list(PARSERS)
    for command in COMMANDS:
        assert callable(command.add_arguments) and callable(command.run) and command.HELP


@pytest.mark.parametrize("case", OPTIONS, ids=_id)
def test_option_default_choices_and_help_come_from_the_field(case):
    name, opt = case
    parsed = build_parser().parse_args(_minimal_argv(name))
    expected = OWN_DEFAULTS.get((name, opt.flag), opt.field_default)
    assert getattr(parsed, opt.dest) == expected
    action = _action(name, opt.flag)
    p = opt.param
    assert p.help in action.help
    if opt.is_tuple:  # comma-separated: elements are checked by validate(), the help names them
        assert action.choices is None
        if p.choices is not None or opt.is_ranged:
            assert p.describe_range() in action.help
    else:
        assert action.choices == p.choices
        if opt.is_ranged:
            assert p.describe_range() in action.help


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.BUILDS], ids=lambda c: c.NAME)
def test_every_flagged_field_is_an_option_of_every_command_that_builds_its_config(command):
    parser = PARSERS[command.NAME]
    for cls in command.BUILDS:
        generated = {opt.path: opt.flag for opt in config_options(parser) if opt.cls is cls}
        for path, f, _ in params(cls):
            if cli_flag(f) is not None:
                assert generated.get(path) == cli_flag(f), f"{command.NAME} lacks {cli_flag(f)} ({cls.__name__}.{path})"
                assert cli_flag(f) in parser._option_string_actions
        # Giving no option builds the config's defaults.
        parsed = build_parser().parse_args(_minimal_argv(command.NAME))
        assert config_from_args(cls, parsed) == cls()


@pytest.mark.parametrize("name", list(PARSERS))
def test_no_hand_written_option_shadows_a_config_field(name):
    field_flags = {cli_flag(f) for cls in CONFIG_CLASSES for _, f, _ in params(cls)} - {None}
    generated = {opt.flag for opt in config_options(PARSERS[name])}
    for flag in PARSERS[name]._option_string_actions:
        if flag in field_flags and flag not in generated:
            assert (name, flag) in HAND_WRITTEN, f"{name} {flag} is hand-written but a config field has that flag"


@pytest.mark.parametrize("name", sorted({n for n, flag in HAND_WRITTEN if flag == "--precision"}))
def test_training_precision_comes_from_the_accelerator_config(name):
    action = _action(name, "--precision")
    assert tuple(action.choices) == PRECISION_CHOICES == (*field_param(AcceleratorConfig, "amp_dtype").choices,
                                                          "float32")
    assert action.default == default_of(AcceleratorConfig, "amp_dtype")


def _bad_values(opt: ConfigOption) -> list[str]:
    """Above the maximum (below the minimum without one), and off the grid of a `multiple_of` field."""
    p = opt.param
    values = [p.max + 1 if p.max is not None else p.min - 1]
    if p.multiple_of:
        values.append((p.min or 0) + p.multiple_of + p.multiple_of // 2)  # in range, not a multiple (--patch 40)
    return [str(int(v)) if opt.kind is int else f"{v:g}" for v in values]


BAD = [(name, opt, value) for name, opt in OPTIONS if opt.is_ranged for value in _bad_values(opt)]


@pytest.mark.parametrize("name,opt,value", BAD, ids=[f"{n} {o.flag} {v}" for n, o, v in BAD])
def test_out_of_range_value_is_refused_naming_the_range(name, opt, value, capsys):
    assert main([*_minimal_argv(name), opt.flag, value]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert opt.param.describe_range() in lines[0]


@pytest.mark.parametrize("case", [c for c in OPTIONS if c[1].param.choices is not None], ids=_id)
def test_value_outside_the_choices_is_refused(case, capsys):
    name, opt = case
    # A value of the option's type, so argparse's choices check is what refuses it (an int for --tta).
    outside = str(max(opt.param.choices) + 1) if opt.kind is int else "bogus"
    argv = [*_minimal_argv(name), opt.flag, outside]
    if opt.is_tuple:  # checked by validate(): one error line naming the choices
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and opt.param.describe_range() in err
    else:  # argparse's own choices check, also exit status 2
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("name,cls", [(c.NAME, b) for c in COMMANDS for b in c.BUILDS
                                      if any(p == "data.structure_prior" for p, _, _ in params(b))])
def test_structure_prior_switches_off_with_no_prior(name, cls):
    on = config_from_args(cls, build_parser().parse_args(_minimal_argv(name)))
    off = config_from_args(cls, build_parser().parse_args([*_minimal_argv(name), "--no-prior"]))
    assert on.data.structure_prior is default_of(config.DataConfig, "structure_prior") is True
    assert off.data.structure_prior is False


def test_argparse_lives_only_in_the_cli_and_the_console_is_a_leaf():
    for path in SRC.rglob("*.py"):
        if "cli" in path.relative_to(SRC).parts or path.name == "__main__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "argparse" not in imported, f"{path} imports argparse"
        assert not any(m == "cli" or m.endswith(".cli") or ".cli." in m for m in imported), f"{path} imports the CLI"
    console = ast.parse((SRC / "cli" / "console.py").read_text(encoding="utf-8"))
    relative = {n.module for n in ast.walk(console) if isinstance(n, ast.ImportFrom) and n.level > 0}
    assert relative == {"errors"}

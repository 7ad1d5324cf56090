"""The widget's remembered settings: a small JSON file in the user config dir.

The file holds `config.to_dict` of each section's config (the same dataclasses the jobs
use) under the section's name, plus the folder last used and the prediction scope.
Loading ignores unknown keys; a file of the older flat form ({"steps": 300, ...}) is
read through `LEGACY_KEYS`.

`NAPARI_TOWER_CONFIG_DIR` overrides the folder (tests point it at a temporary
one). Reading never fails (a missing or damaged file gives the defaults) and
writing is atomic (temp file + rename), so a crash never leaves half a file.

Several napari windows (processes) share the file. `SharedSettings` saves only what its widget
changed since it opened: under a lock, it reads the file, applies those changes and writes it,
so a setting changed in one window is never reset by another that left it alone.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from ..config import (
    FinetuneConfig,
    PredictConfig,
    PretrainConfig,
    PreviewConfig,
    PrototypeConfig,
    RetrainConfig,
    from_dict,
    to_dict,
)

ENV_DIR = "NAPARI_TOWER_CONFIG_DIR"
FILE_NAME = "widget.json"


def config_dir() -> Path:
    """Where the settings live: $NAPARI_TOWER_CONFIG_DIR, else the platform's user config dir."""
    override = os.environ.get(ENV_DIR)
    if override:
        return Path(override)
    from platformdirs import user_config_dir

    return Path(user_config_dir("napari-tower", appauthor=False))


def settings_path() -> Path:
    return config_dir() / FILE_NAME


def load_settings() -> dict[str, Any]:
    """The last saved settings, or {} when there are none or the file is unreadable."""
    try:
        data = json.loads(settings_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_settings(values: dict[str, Any]) -> bool:
    """Write `values` atomically; returns False (and keeps the old file) when the folder is not writable."""
    from ..atomic import atomic_write_bytes
    from ..errors import TowerError

    try:
        atomic_write_bytes(settings_path(), json.dumps(values, indent=1, sort_keys=True).encode("utf-8"), "settings")
    except TowerError:
        return False
    return True


class SharedSettings:
    """One widget's view of the settings file that every napari process of the user shares."""

    def __init__(self) -> None:
        self.base: dict[str, Any] = {}  # what the widget showed when it opened (or last saved)

    def load(self) -> dict[str, Any]:
        return load_settings()

    def shown(self, values: dict[str, Any]) -> None:
        """Record what the widget shows now: later saves write only what differs from it."""
        self.base = copy.deepcopy(values)

    def save(self, values: dict[str, Any]) -> bool:
        """Merge this widget's changes (`values` against what it showed) into the file, under a lock."""
        from ..atomic import file_lock

        try:
            with file_lock(settings_path().with_name(FILE_NAME + ".lock")):
                merged = merge_changes(upgrade(load_settings()), upgrade(self.base), values)
                ok = save_settings(merged)
        except OSError:
            return False
        if ok:
            self.shown(values)
        return ok


def _leaves(values: dict[str, Any], prefix: tuple = ()) -> dict[tuple, Any]:
    out: dict[tuple, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def merge_changes(current: dict[str, Any], base: dict[str, Any], mine: dict[str, Any]) -> dict[str, Any]:
    """`current` (the file now) with every leaf of `mine` that differs from `base`, or that `current` lacks."""
    out = copy.deepcopy(current)
    have, before = _leaves(current), _leaves(base)
    missing = object()
    for path, value in _leaves(mine).items():
        if path in have and before.get(path, missing) == value:
            continue  # unchanged here: another window's value (if it changed it) stands
        node = out
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = copy.deepcopy(value)
    return out


VERSION = 2
CONFIGS: dict[str, type] = {"pretrain": PretrainConfig, "preview": PreviewConfig, "finetune": FinetuneConfig,
                            "predict": PredictConfig, "retrain": RetrainConfig, "prototypes": PrototypeConfig}
# Settings files before VERSION 2: flat key -> (config, dotted field).
LEGACY_KEYS = {"method": ("pretrain", "method"), "steps": ("pretrain", "steps"), "patch": ("pretrain", "data.patch"),
               "batch": ("pretrain", "batch"), "base": ("pretrain", "model.base"), "device": ("pretrain", "device"),
               "preview_seed": ("preview", "seed"), "finetune_steps": ("finetune", "steps"),
               "instances": ("predict", "instances"), "probabilities": ("predict", "probabilities"),
               "retrain_steps": ("retrain", "steps"), "edit_weight": ("retrain", "edit_weight"),
               "prototype_k": ("prototypes", "k"), "prototype_ignore": ("prototypes", "ignore")}


def to_settings(configs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The settings file's content: each config as `to_dict`, and `extra` plain values."""
    return {"version": VERSION, **extra, **{name: to_dict(cfg) for name, cfg in configs.items()}}


def upgrade(values: dict[str, Any]) -> dict[str, Any]:
    """Settings of the older flat form in the current one (current ones are returned as they are)."""
    if "version" in values:
        return values
    out: dict[str, Any] = {"version": VERSION, **{k: v for k, v in values.items() if k in ("last_dir", "scope")}}
    for key, value in values.items():
        if key in LEGACY_KEYS:
            name, path = LEGACY_KEYS[key]
            *parents, leaf = path.split(".")
            node = out.setdefault(name, {})
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        elif key == "sparse":
            out.setdefault("finetune", {})["target"] = "sparse" if value else "auto"
    return out


def configs_from(values: dict[str, Any]) -> dict[str, Any]:
    """The configs stored in settings `values` (either form); one that cannot be read is left out."""
    values = upgrade(values)
    out = {}
    for name, cls in CONFIGS.items():
        stored = values.get(name)
        if not isinstance(stored, dict):
            continue
        try:
            out[name] = from_dict(cls, stored)
        except (TypeError, ValueError):
            continue
    return out

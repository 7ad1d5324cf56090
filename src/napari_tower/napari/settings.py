"""The widget's remembered settings: a small JSON file in the user config dir.

`NAPARI_TOWER_CONFIG_DIR` overrides the folder (tests point it at a temporary
one). Reading never fails (a missing or damaged file gives the defaults) and
writing is atomic (temp file + rename), so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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

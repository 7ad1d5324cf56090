"""`napari-tower doctor`: the torch build, the device in use and how to get GPU support."""

from __future__ import annotations

import argparse

NAME = "doctor"
HELP = "show the torch build, the device in use and how to get GPU support"
BUILDS = ()


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No arguments."""


def run(args: argparse.Namespace) -> int:
    """Print the device report."""
    from ..device import device_report

    print(device_report().text())
    return 0

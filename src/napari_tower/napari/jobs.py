"""The widget's job runner and status line: one job at a time, off the UI thread, and its messages.

`JobRunner.start(name, fn, on_value)` runs `fn(callback, should_stop)` in a thread worker
(`workers.py`), disables the job buttons meanwhile, renders the job's progress records in the
progress panel and hands its value to `on_value(value, stopped)` on the GUI thread; an error
becomes one message, never a traceback. `StatusLine` shows errors, warnings and information.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QPushButton, QWidget

from ..errors import TowerError
from .sections import ProgressPanel
from .workers import GuiCall, Outcome, start_worker


class StatusLine(QLabel):
    """The widget's last message; errors and warnings also go to napari's notifications."""

    def __init__(self) -> None:
        super().__init__("")
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextSelectableByMouse)

    def show_error(self, message: str) -> None:
        from napari.utils.notifications import show_error

        self.setStyleSheet("color: #e06c6c;")
        self.setText(f"Error: {message}")
        show_error(f"napari-tower: {message}")

    def show_warning(self, message: str) -> None:
        from napari.utils.notifications import show_warning

        self.setStyleSheet("color: #e0b060;")
        self.setText(message)
        show_warning(f"napari-tower: {message}")

    def show_info(self, message: str) -> None:
        self.setStyleSheet("")
        self.setText(message)


class JobRunner:
    """Runs the widget's jobs, one at a time."""

    def __init__(self, owner: QWidget, status: StatusLine, progress: ProgressPanel, stop_button: QPushButton,
                 buttons: list[QPushButton], before_start: Callable[[], None] = lambda: None) -> None:
        self.owner, self.status, self.progress, self.stop_button = owner, status, progress, stop_button
        self.buttons = buttons  # disabled while a job runs
        self.before_start = before_start
        self.stop_event = threading.Event()
        self.worker: Any = None
        self.job = ""

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start(self, name: str, fn: Callable, on_value: Callable[[Any, bool], None],
              on_failure: Callable[[], None] | None = None) -> None:
        """Run `fn(callback, should_stop)` in a worker; `on_value(value, stopped)` gets its result, `on_failure()`
        runs (GUI thread) when it fails instead."""
        if self.busy:
            raise TowerError(f"{self.job} is still running: wait for it or press Stop")
        self.before_start()
        self.job = name
        self.stop_event = stop = threading.Event()
        self._enable(False)
        self.progress.start(name)
        self.status.show_info(f"{name} running...")
        # napari never closes dock widgets when its window closes, it deletes them: stop the job then.
        self.owner.destroyed.connect(stop.set)

        def render(p: Any) -> None:
            if deleted(self.owner):
                return
            if isinstance(p, GuiCall):  # e.g. a live preview: the job asks the GUI thread to show something
                try:
                    p()
                except Exception as exc:  # noqa: BLE001 - a preview that cannot be shown must not end the job
                    self.status.show_warning(f"live preview not shown: {exc}")
                return
            self.progress.render(p)

        def done(outcome: Outcome) -> None:
            if deleted(self.owner):  # napari was closed while the job ran: nothing left to show it in
                return
            self.worker = None
            self._enable(True)
            if outcome.error is not None:
                if on_failure is not None and not outcome.stopped:
                    on_failure()
                self.progress.finish(f"{name} {'stopped' if outcome.stopped else 'failed'}")
                if outcome.stopped:
                    self.status.show_info(f"{name} stopped")
                else:
                    self.status.show_error(outcome.error)
                return
            self.progress.finish(f"{name} stopped" if outcome.stopped else f"{name} finished")
            try:
                on_value(outcome.value, outcome.stopped)
            except TowerError as exc:
                self.status.show_error(str(exc))

        self.worker = start_worker(fn, stop, render, done)

    def stop(self) -> None:
        """Ask the running job to stop at its next step (training keeps a checkpoint)."""
        if self.busy:
            self.stop_event.set()
            self.status.show_info(f"stopping {self.job}...")

    def _enable(self, idle: bool) -> None:
        for b in self.buttons:
            b.setEnabled(idle)
        self.stop_button.setEnabled(not idle)


def deleted(widget: QWidget) -> bool:
    """Whether Qt has already deleted the widget behind this Python object (any Qt binding)."""
    try:
        widget.objectName()
    except RuntimeError:
        return True
    return False

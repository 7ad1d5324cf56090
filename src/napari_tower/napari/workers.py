"""Running core jobs off the UI thread and bridging their progress records.

A job is a core call `fn(callback, should_stop) -> value`. It runs in a plain
thread; its `Progress` records go into a `queue.Queue` that a napari generator
worker drains and yields, so the GUI only ever renders records (in its own
thread, through Qt signals). Stopping sets a `threading.Event` the core checks
every step. A job never raises into napari (which would show a traceback):
it returns an `Outcome` with the value or a user-facing error message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from ..errors import TowerError
from ..train.engine import Progress

log = logging.getLogger(__name__)

Job = Callable[[Callable[[Progress], None], Callable[[], bool]], Any]
_DONE = object()


@dataclass
class Outcome:
    """What a finished job hands the GUI: its value, or the message to show."""

    value: Any = None
    error: str | None = None
    stopped: bool = False


@dataclass
class GuiCall:
    """A job's request to run `fn(*args)` on the GUI thread (e.g. show a live preview), sent like a progress record."""

    fn: Callable[..., None]
    args: tuple = ()

    def __call__(self) -> None:
        self.fn(*self.args)


def training_threads() -> int:
    """Torch threads for a job: all cores but one, so the UI thread keeps a core."""
    return max(1, (os.cpu_count() or 2) - 1)


def warm_up_torch() -> None:
    """Do torch's one-time lazy set-up now, on the calling (GUI) thread, while the widget opens.

    torch imports its compiler stack (`torch._dynamo`, about a second) the first time an
    optimiser is built. Done inside a job, that import holds the GIL in stretches of
    ~200 ms and the viewer stutters during the first training step; done here it only
    makes the widget open a moment later.
    """
    import torch

    param = torch.nn.Parameter(torch.zeros(1))
    torch.optim.Adam([param])


def user_message(exc: BaseException) -> str:
    """One line for the user, never a traceback (which goes to the log)."""
    if isinstance(exc, TowerError):
        return str(exc)
    from ..segment.retry import is_out_of_memory

    if is_out_of_memory(exc):
        return "out of memory: use a smaller batch, patch or model size"
    log.exception("napari-tower job failed", exc_info=exc)
    return f"unexpected {type(exc).__name__}: {exc} (please report it)"


def run_job(fn: Job, stop: threading.Event, poll_s: float = 0.05) -> Generator[Progress, None, Outcome]:
    """Generator body of a worker: runs `fn` in a thread and yields its progress records as they come."""
    records: queue.Queue = queue.Queue()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            import torch

            torch.set_num_threads(training_threads())
            box["value"] = fn(records.put, stop.is_set)
        except BaseException as exc:  # noqa: BLE001 - reported to the user as one line
            box["error"] = user_message(exc)
        finally:
            records.put(_DONE)

    thread = threading.Thread(target=target, name="napari-tower-job", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = records.get(timeout=poll_s)
            except queue.Empty:
                continue
            if item is _DONE:
                break
            yield item
    finally:  # also when the worker is quit (e.g. the viewer closes): stop the core at its next step
        if thread.is_alive():
            stop.set()
        thread.join()
    value = box.get("value")
    stopped = stop.is_set() or bool(getattr(getattr(value, "last", None), "stopped", False))
    return Outcome(value, box.get("error"), stopped)


def start_worker(fn: Job, stop: threading.Event, on_progress: Callable[[Progress], None],
                 on_done: Callable[[Outcome], None]):
    """Start `fn` in a napari thread worker; `on_progress`/`on_done` run in the GUI thread."""
    from napari.qt.threading import create_worker

    worker = create_worker(run_job, fn, stop, _start_thread=False)
    worker.yielded.connect(on_progress)
    worker.returned.connect(on_done)
    # napari keeps every worker for the life of the window (its task list holds `worker.quit`), so the
    # slots, and with them the job's closure (its model, image and labels), would never be freed:
    # one model and a few images lost per job over a day of correct-and-retrain rounds.
    slots = [(worker.yielded, on_progress), (worker.returned, on_done)]

    def release() -> None:
        for signal, slot in slots:
            with contextlib.suppress(TypeError, RuntimeError):  # already disconnected, or the signals are gone
                signal.disconnect(slot)
        slots.clear()  # this function stays connected: it must not hold the slots either

    worker.finished.connect(release)
    worker.start()
    return worker


def progress_adapter(callback: Callable[[Progress], None], phase: str) -> Callable[[int, int], None]:
    """Turn a `(done, total)` progress callback (prediction) into Progress records with an ETA."""
    from ..segment.retrain import prediction_progress

    return prediction_progress(callback, phase)  # type: ignore[return-value] - never None for a callback

"""What the terminal sees: the progress bar, Ctrl-C handling, exit codes and the one-line error report.

A leaf module (it imports nothing from napari_tower but `errors`), so core modules that want
a progress bar or a stop flag can take one as a callback without importing the CLI.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from ..errors import TowerError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class ProgressBar:
    """A one-line progress bar on stderr (silent with --quiet); call it with a `train.engine.Progress`."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._last_line = -1

    def __call__(self, p: Any) -> None:
        if self.quiet:
            return
        losses = " ".join(f"{k}={v:.4f}" for k, v in p.losses.items())
        width = 24
        filled = int(width * p.step / max(1, p.total))
        line = (f"{p.phase} [{'#' * filled}{'.' * (width - filled)}] {p.step}/{p.total} {losses} "
                f"{p.patches_per_s:.1f} patches/s ETA {p.eta_s:.0f}s"
                + (f" val={p.val_loss:.4f}" if p.val_loss is not None else ""))
        if self.tty:
            sys.stderr.write("\r" + line[:160].ljust(160) + ("\n" if p.done else ""))
        elif p.done or p.step // max(1, p.total // 20) != self._last_line:
            # Not a terminal (a log file): about 20 lines per run instead of one per step.
            self._last_line = p.step // max(1, p.total // 20)
            sys.stderr.write(line + "\n")
        if p.done and p.message:
            sys.stderr.write(p.message + "\n")
        sys.stderr.flush()


class StopOnSignal:
    """Turns SIGINT/SIGTERM into a stop flag the training loop checks every step."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: int | None = None

    def __enter__(self) -> Callable[[], bool]:
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self.event.is_set

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.event.is_set():  # second signal: give up at once
            raise KeyboardInterrupt
        self.signal = signum
        self.event.set()

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def run_reporting_errors(run: Callable[[], int], debug: bool = False,
                         out_of_memory: Callable[[BaseException], bool] = lambda exc: False) -> int:
    """Run a command and turn what it raises into one `error: ...` line on stderr and an exit status.

    TowerError (the user's input) -> 2; Ctrl-C -> 130; running out of memory -> 2 with what to shrink;
    anything else -> 1 and a request to report it (`debug`: re-raise for the traceback instead).
    `out_of_memory` recognises allocation failures; it is passed in so this module stays a leaf.
    """
    try:
        return run()
    except TowerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - last resort: one line, not a traceback
        if debug:
            raise
        if out_of_memory(exc):
            print("error: the device ran out of memory: use a smaller --batch, --patch or --tile", file=sys.stderr)
            return EXIT_USER_ERROR
        print(f"error: unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback and report it)",
              file=sys.stderr)
        return 1


__all__ = ["EXIT_INTERRUPTED", "EXIT_USER_ERROR", "ProgressBar", "StopOnSignal", "run_reporting_errors"]

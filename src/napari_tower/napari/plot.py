"""A live plot of the loss terms of the running job (matplotlib in Qt).

Records arrive every step; drawing is throttled (at most every `min_interval_s`,
and once at the end) so the plot never holds the event loop up.
"""

from __future__ import annotations

import time

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure

from ..train.engine import Progress


class LossPlot(FigureCanvasQTAgg):
    """Loss per term against step; validation loss as dots."""

    def __init__(self, min_interval_s: float = 0.5) -> None:
        fig = Figure(figsize=(3.2, 1.8), dpi=90, layout="constrained")
        super().__init__(fig)
        self.ax = fig.add_subplot(1, 1, 1)
        self.min_interval_s = min_interval_s
        self.series: dict[str, tuple[list[int], list[float]]] = {}
        self.val: tuple[list[int], list[float]] = ([], [])
        self.title = ""
        self._last_draw = 0.0
        self.setMinimumHeight(140)
        self.reset("")

    def reset(self, title: str) -> None:
        self.series, self.val, self.title = {}, ([], []), title
        self._redraw()

    def add(self, p: Progress) -> None:
        for name, value in p.losses.items():
            xs, ys = self.series.setdefault(name, ([], []))
            if not xs or p.step > xs[-1]:
                xs.append(p.step)
                ys.append(value)
        if p.val_loss is not None and (not self.val[0] or p.step > self.val[0][-1]):
            self.val[0].append(p.step)
            self.val[1].append(p.val_loss)
        if p.done or time.perf_counter() - self._last_draw >= self.min_interval_s:
            self._redraw()

    def _redraw(self) -> None:
        ax = self.ax
        ax.clear()
        ax.set_title(self.title, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("step", fontsize=7)
        for name, (xs, ys) in self.series.items():
            ax.plot(xs, ys, lw=1, label=name)
        if self.val[0]:
            ax.plot(*self.val, "o", ms=3, label="validation")
        if self.series:
            ax.legend(fontsize=6, loc="upper right")
        self.draw_idle()
        self._last_draw = time.perf_counter()

"""A live plot of the loss terms of the running job, drawn with QPainter.

Records arrive every step. Painting a few polylines costs about a millisecond,
so the plot can follow every record without holding the event loop up (a
matplotlib canvas redraw took 40-70 ms on a 2-core CPU while training ran,
too close to the 100 ms we allow the UI to stall).
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QWidget

from ..train.engine import Progress

COLORS = ("#4c9be8", "#e8a33d", "#6cc06c", "#e06c6c", "#b07fe0", "#56c8c8")
INK = QColor("#a0a0a0")


def _fmt(v: float) -> str:
    return f"{v:.3g}"


class LossPlot(QWidget):
    """Loss per term against step; validation loss as dots."""

    def __init__(self) -> None:
        super().__init__()
        self.series: dict[str, tuple[list[int], list[float]]] = {}
        self.title = ""
        self.setMinimumHeight(140)

    def reset(self, title: str) -> None:
        self.series, self.title = {}, title
        self.update()

    def add(self, p: Progress) -> None:
        values = dict(p.losses)
        if p.val_loss is not None:
            values["validation"] = p.val_loss
        for name, value in values.items():
            xs, ys = self.series.setdefault(name, ([], []))
            if math.isfinite(value) and (not xs or p.step > xs[-1]):
                xs.append(p.step)
                ys.append(float(value))
        self.update()  # Qt merges repaints; painting happens when the event loop is free

    def paintEvent(self, event) -> None:  # noqa: N802, ANN001 - Qt name
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        font = painter.font()
        font.setPointSizeF(7.5)
        painter.setFont(font)
        painter.setPen(INK)
        w, h = self.width(), self.height()
        painter.drawText(QRectF(42, 0, w, 14), Qt.AlignLeft, self.title)
        plot = QRectF(42, 18, max(10, w - 52), max(10, h - 36))
        painter.drawRect(plot)
        points = [(x, y) for xs, ys in self.series.values() for x, y in zip(xs, ys)]
        if not points:
            painter.drawText(plot, Qt.AlignCenter, "losses appear here while training")
            return
        x0, x1 = 0, max(max(x for x, _ in points), 1)
        y0, y1 = min(y for _, y in points), max(y for _, y in points)
        pad = (y1 - y0) * 0.05 or abs(y1) * 0.05 or 1.0
        y0, y1 = y0 - pad, y1 + pad

        def to_px(x: float, y: float) -> QPointF:
            return QPointF(plot.left() + (x - x0) / (x1 - x0) * plot.width(),
                           plot.bottom() - (y - y0) / (y1 - y0) * plot.height())

        painter.drawText(QRectF(0, plot.top() - 6, 40, 12), Qt.AlignRight, _fmt(y1))
        painter.drawText(QRectF(0, plot.bottom() - 6, 40, 12), Qt.AlignRight, _fmt(y0))
        painter.drawText(QRectF(plot.left(), plot.bottom() + 2, 60, 12), Qt.AlignLeft, "0")
        painter.drawText(QRectF(plot.right() - 90, plot.bottom() + 2, 90, 12), Qt.AlignRight, f"step {x1}")
        legend_x = plot.right()  # legend along the top edge, right-aligned, away from the curves
        for i, (name, (xs, ys)) in enumerate(self.series.items()):
            color = QColor(COLORS[i % len(COLORS)])
            painter.setPen(QPen(color, 1.3))
            stride = max(1, len(xs) // int(plot.width()))  # at most ~one point per pixel column
            pts = [to_px(x, y) for x, y in zip(xs[::stride], ys[::stride])]
            if name == "validation":
                painter.setBrush(color)
                for pt in pts:
                    painter.drawEllipse(pt, 2.0, 2.0)
                painter.setBrush(Qt.NoBrush)
            else:
                painter.drawPolyline(QPolygonF(pts))
            width = painter.fontMetrics().horizontalAdvance(name) + 8
            legend_x -= width
            painter.drawText(QRectF(legend_x, 2, width, 12), Qt.AlignRight, name)

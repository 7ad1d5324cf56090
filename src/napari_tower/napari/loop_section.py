"""The controls of the guided loop (Correct tab): Next region, label history, "Did pretraining help?".

Controls only; the workflows are in `guided.py`.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import SpinBox
from qtpy.QtWidgets import QComboBox, QGroupBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from ..label_history import Version


class LoopPanel(QGroupBox):
    """Guided correction: where to correct next, going back to an earlier round, and the pretraining check."""

    def __init__(self) -> None:
        super().__init__("Guided correction")
        self.next_button = QPushButton("Next region to correct")
        self.next_button.setToolTip("Move to the region of this plane where the model is least sure and outline it "
                                    "(Alt+N)")
        self.region_size = SpinBox(value=128, min=32, max=2048, step=32, label="region (px)",
                                   tooltip="side of the suggested region")
        row = QHBoxLayout()
        row.addWidget(self.next_button, 1)
        row.addWidget(QLabel("side"))
        row.addWidget(self.region_size.native)

        self.versions = QComboBox()
        self.versions.setToolTip("Every Retrain saves the corrected labels as a round (on disk)")
        self.versions.addItem("(no rounds yet)", None)
        self.back_button = QPushButton("Go back")
        self.back_button.setToolTip("Write the chosen round's corrected labels into the corrected labels layer")
        history = QHBoxLayout()
        history.addWidget(QLabel("history"))
        history.addWidget(self.versions, 1)
        history.addWidget(self.back_button)

        self.check_button = QPushButton("Did pretraining help?")
        self.check_button.setToolTip("Fine-tune from the pretrained start and from scratch with the retrain budget,\n"
                                     "holding out the last suggested region, and compare their Dice there")
        self.check_result = QLabel("")
        self.check_result.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(row)
        layout.addLayout(history)
        layout.addWidget(self.check_button)
        layout.addWidget(self.check_result)

    def show_versions(self, versions: list[Version], select: int | None = None) -> None:
        self.versions.clear()
        if not versions:
            self.versions.addItem("(no rounds yet)", None)
        for v in versions:
            self.versions.addItem(v.describe(), v.number)
        if select is not None:
            index = self.versions.findData(select)
            if index >= 0:
                self.versions.setCurrentIndex(index)

    def chosen_version(self) -> int | None:
        data: Any = self.versions.currentData()
        return None if data is None else int(data)

    def buttons(self) -> list[QPushButton]:
        """The buttons that start jobs (disabled while one runs)."""
        return [self.next_button, self.check_button]

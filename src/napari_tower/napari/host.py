"""What the widget's sections and workflows may use of the widget: a small public interface.

`JobHost` is all a section such as Prototypes needs (start a job, run a button's action, the device,
messages, the chosen layers); `Tower` adds the sections the workflows read their settings from.
Both are Protocols, so nothing here imports the widget and no module imports it back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from napari.viewer import Viewer

    from .autosave import Autosave
    from .loop_section import LoopPanel
    from .loop_state import LoopState
    from .sections import CorrectSection, DataSection, ModelSection, PretrainSection, PreviewSection, SegmentSection
    from .session import Session
    from .volume_section import VolumeSection

OnValue = Callable[[Any, bool], None]  # (the job's value, whether it was stopped)


class JobHost(Protocol):
    """The widget as a section sees it."""

    viewer: Viewer
    session: Session

    @property
    def busy(self) -> bool: ...

    def start_job(self, name: str, fn: Callable, on_value: OnValue, on_failure: Callable[[], None] | None = None
                  ) -> None:
        """Run `fn(callback, should_stop)` in a worker; `on_value(value, stopped)` gets its result (GUI thread),
        `on_failure()` runs instead when it fails."""

    def user_action(self, action: Callable[[], None]) -> None:
        """Run a button's action; a TowerError becomes a message, never a traceback."""

    def device(self) -> str:
        """The device chosen under 2. Pretrain ("auto", "cpu", ...)."""

    def show_error(self, message: str) -> None: ...

    def show_warning(self, message: str) -> None: ...

    def show_info(self, message: str) -> None: ...

    def selected_images(self) -> list[Any]:
        """The image layers ticked under 1. Data."""

    def use_for_finetune(self, image_layer: Any, labels_layer: Any, sparse: bool) -> None:
        """Point 4. Segment at these layers (and the sparse option) for the next Fine-tune."""


class Tower(JobHost, Protocol):
    """The widget as its workflows (pretrain, preview, fine-tune, predict, retrain, models) see it."""

    data: DataSection
    volume: VolumeSection
    train: PretrainSection
    preview: PreviewSection
    segment: SegmentSection
    correct: CorrectSection
    models: ModelSection
    autosave: Autosave
    loop: LoopState
    loop_panel: LoopPanel
    last_dir: str

    def update_models(self) -> None:
        """Show the session's models under Model."""

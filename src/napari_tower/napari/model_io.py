"""The widget's models: what the Model section shows, save, load and bioimage.io export.

All of the widget's reading and writing of model files is here, through `ModelBundle`.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QFileDialog

from ..errors import TowerError
from .host import Tower
from .layers import image_from_layer


def describe_models(w: Tower) -> str:
    """One line per model of the session: kind, method or target, step and model size."""
    parts = []
    for name, ckpt in (("pretrained", w.session.pretrained), ("segmenter", w.session.segmenter)):
        if ckpt is not None:
            what = ckpt.method if name == "pretrained" else ckpt.target
            parts.append(f"{name}: {what}, step {ckpt.step}, base {ckpt.base}")
    return "; ".join(parts) if parts else "no model yet"


def save_model(w: Tower, path: str | Path, kind: str | None = None) -> Path:
    """Save the segmenter (or, without one, the pretrained model); `kind` picks one explicitly."""
    models = {"segmenter": w.session.segmenter, "pretrained": w.session.pretrained}
    ckpt = models.get(kind) if kind else (w.session.segmenter or w.session.pretrained)
    if ckpt is None:
        raise TowerError("no model to save yet: pretrain or fine-tune first")
    out = ckpt.save(path)
    w.last_dir = str(Path(path).parent)
    w.show_info(f"Saved the {ckpt.kind} model to {out}")
    return out


def load_model(w: Tower, path: str | Path, job: str = "") -> str:
    """Load a checkpoint as the session's pretrained model or segmenter; returns its kind."""
    from ..model_bundle import ModelBundle

    if w.busy:
        raise TowerError(f"{job or 'a job'} is running: wait for it or press Stop before loading a model")
    kind = w.session.set_model(ModelBundle.load(path))
    w.last_dir = str(Path(path).parent)
    w.update_models()
    w.show_info(f"Loaded a {kind} model from {path}")
    return kind


def export_bioimageio(w: Tower, path: str | Path) -> None:
    """Write the segmenter as a bioimage.io package (in a worker), then run bioimage.io's own test on it.

    A centred crop of the image chosen under 4. Segment becomes the package's test input
    (the built-in sample when there is none, or its channels do not fit the model).
    """
    from ..bioimageio.exporter import BioimageioExportConfig, check_bioimageio_package
    from ..bioimageio.exporter import export_bioimageio as export

    ckpt = w.session.segmenter
    if ckpt is None:
        raise TowerError("no segmenter to export: fine-tune one (4. Segment) or load one first")
    layer = w.segment.image.layer()
    test_image = image_from_layer(layer) if layer is not None else None
    if test_image is not None and test_image.channels != ckpt.in_channels:
        test_image = None
    cfg = BioimageioExportConfig(name=f"napari-tower {ckpt.target} segmenter"
                                      + (f" ({layer.name})" if layer is not None else ""))
    out = Path(path)

    def job(callback, should_stop):
        written = export(ckpt, out, cfg, test_image)
        return written, check_bioimageio_package(written)

    def finished(value, stopped: bool) -> None:
        written, report = value
        w.last_dir = str(written.parent)
        if report.passed:
            w.show_info(f"Exported {written}; bioimage.io's test passed. Add the authors' names "
                        "(e.g. napari-tower export ... --author) before uploading it to bioimage.io.")
        else:
            w.show_warning(f"Exported {written}, but bioimage.io's test failed: {'; '.join(report.errors[:2])}")

    w.start_job("export", job, finished)


def export_clicked(w: Tower) -> None:
    path, _ = QFileDialog.getSaveFileName(w.models, "Export bioimage.io package",
                                          str(Path(w.last_dir) / "model.bioimageio.zip"),
                                          "bioimage.io model package (*.zip)")
    if path:
        w.user_action(lambda: export_bioimageio(w, path))


def save_clicked(w: Tower) -> None:
    path, _ = QFileDialog.getSaveFileName(w.models, "Save model", str(Path(w.last_dir) / "tower.pt"),
                                          "napari-tower model (*.pt)")
    if path:
        w.user_action(lambda: save_model(w, path))


def load_clicked(w: Tower) -> None:
    path, _ = QFileDialog.getOpenFileName(w.models, "Load model", w.last_dir,
                                          "napari-tower model or bioimage.io package (*.pt *.zip)")
    if path:
        w.user_action(lambda: load_model(w, path))

"""bioimage.io model packages: export a fine-tuned segmenter, and check a package.

A package is a zip holding `rdf.yaml` (a bioimage.io model description, format 0.5), the
weights as TorchScript and as a PyTorch state dict, a test input and the test output our
own `Predictor` gives for it, a cover image and a README. The input normalisation is
written as bioimage.io preprocessing, so any consumer (bioimageio.core, deepImageJ,
ilastik, ...) reproduces our class probabilities; splitting touching objects into
instances stays napari-tower's own post-processing.

napari-tower's metadata (target kind, classes, training config, normalisation) sits in
the description's `config.napari_tower`; `reader` rebuilds the model from it and the
state dict, which is how `ModelBundle.load` reads a package we wrote.

This module sits above `segment/` (it predicts the test output with our own `Predictor`).
`bioimageio.spec` and `bioimageio.core` are optional (`pip install "napari-tower[bioimageio]"`);
they are imported only when a package is written or checked.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..atomic import atomic_copy
from ..errors import TowerError
from ..model_bundle import ModelBundle, check_writable
from ..segment.instance_heads import head_for
from ..segment.model import Segmenter
from ..segment.shape_heads import DistanceHead
from .reader import INSTALL_HINT, METADATA_KEY, require_bioimageio

WEIGHT_FORMATS = ("pytorch_state_dict", "torchscript")
NORMALISE_MODES = ("image", "model")
INPUT_ID, OUTPUT_ID = "raw", "probabilities"
TEST_SIDE = 256  # the test input is a crop of at most this many pixels a side: small package, quick check
TOWER_DOI = "10.48550/arXiv.2211.14715"
# Metadata copied into the package's `config.napari_tower`: what `reader` needs to rebuild the segmenter.
METADATA_FIELDS = ("format", "version", "kind", "target", "classes", "config", "normalisation", "init_method", "step",
                   "best_val_dice", "instance_head", "postprocess")


class ProbabilitySegmenter(Segmenter):
    """The segmenter with softmax on its output: class probabilities, background first.

    This is the architecture the packaged state dict loads into (its keys are the
    `Segmenter`'s), and what the TorchScript weights were traced from. With a shape-aware
    instance head (`instance_head`), the outputs are that head's activated maps instead
    (background, foreground, distance to the edge, and for "stardist" the ray lengths in pixels).
    """

    def __init__(self, in_channels: int, classes: int, base: int = 16, depth: int = 4,
                 instance_head: str = "") -> None:
        super().__init__(in_channels, classes, base, depth)
        self.shape_head = head_for(instance_head or None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shape_head is not None:
            return self.shape_head.activate(super().forward(x))
        return super().forward(x).softmax(dim=1)


@dataclass
class BioimageioExportConfig:
    """What goes into a package besides the model: names, people, license, formats."""

    name: str = "napari-tower segmenter"
    description: str = ""
    authors: Sequence[str] = ()
    license: str = "CC-BY-4.0"
    weight_formats: Sequence[str] = WEIGHT_FORMATS
    # "image": percentiles of each input image (what `napari-tower predict` does by default);
    # "model": the fixed low/high stored with the model (`PredictConfig(normalise="model")`).
    normalise: str = "image"
    tags: Sequence[str] = ("segmentation", "unet", "2d", "pytorch", "napari-tower", "tower")

    def validate(self) -> None:
        if not self.name.strip():
            raise TowerError("the package needs a name: give --name")
        bad = [w for w in self.weight_formats if w not in WEIGHT_FORMATS]
        if bad or not self.weight_formats:
            raise TowerError(f"weight format(s) {bad or '(none)'} not supported: "
                             f"choose from {', '.join(WEIGHT_FORMATS)}")
        if self.normalise not in NORMALISE_MODES:
            raise TowerError(f"normalise '{self.normalise}' is invalid: choose 'image' or 'model'")


@dataclass
class CheckReport:
    """The outcome of bioimage.io's own test of a package."""

    passed: bool
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _channel_names(target: str, classes: int, head: str | None = None) -> list[str]:
    if isinstance(head_for(head or None), DistanceHead):  # distance and capped
        return ["background", "foreground", "distance"]
    if head == "stardist":
        return ["background", "foreground", "distance"] + [f"ray{k}" for k in range(classes - 3)]
    if target == "instance":
        return ["background", "foreground", "boundary"]
    if target == "binary":
        return ["background", "foreground"]
    return ["background"] + [f"class{k}" for k in range(1, classes)]


def _test_plane(image: Any, in_channels: int, multiple: int) -> np.ndarray:
    """A (1, C, Y, X) float32 crop of the first plane, sides multiples of the U-Net's `multiple`."""
    from ..data import Image, from_array

    img = image if isinstance(image, Image) else from_array(np.asarray(image), "test image")
    if img.channels != in_channels:
        raise TowerError(f"the test image {img.source} has {img.channels} channel(s) but the model expects "
                         f"{in_channels}: give --test-image with {in_channels} channel(s)")
    _, _, h, w = img.shape
    ch, cw = (min(s, TEST_SIDE) // multiple * multiple for s in (h, w))
    if ch < multiple or cw < multiple:
        raise TowerError(f"the test image {img.source} is {h} x {w}: "
                         f"give one of at least {multiple} x {multiple} pixels")
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return np.asarray(img.data[0:1, :, y0:y0 + ch, x0:x0 + cw], dtype=np.float32)


def _cover(plane: np.ndarray, labels: np.ndarray, path: Path) -> None:
    """A 2:1 cover: the (normalised) input next to the predicted objects drawn over it."""
    import imageio.v3 as iio
    from skimage.color import label2rgb

    gray = plane[0].astype(np.float64)
    lo, hi = np.percentile(gray, (1, 99.8))
    gray = np.clip((gray - lo) / max(hi - lo, 1e-12), 0, 1)
    left = np.repeat(gray[..., None], 3, axis=-1)
    right = label2rgb(labels, image=gray, alpha=0.35, bg_label=0)
    iio.imwrite(path, (np.concatenate([left, right], axis=1) * 255).round().astype(np.uint8))


def _output_text(bundle: ModelBundle) -> str:
    if bundle.instance_head:
        cap = head_for(bundle.instance_head).cap_px
        distance = (f"each pixel's distance to its object's edge in pixels divided by {cap:g}, capped at 1" if cap
                    else "each object's distance to its edge normalised to 1 at its centre")
        return (f"the `{bundle.instance_head}` instance head's maps: softmax background/foreground "
                f"probabilities, {distance} (sigmoid)"
                + (", and the distances to the object's edge along 32 rays in pixels (ray k at angle "
                   "2 pi k / 32, pointing along (y, x) = (sin, cos))" if bundle.instance_head == "stardist" else ""))
    return "softmax class probabilities"


def _postprocess_text(bundle: ModelBundle) -> str:
    """How napari-tower turns the outputs into labels, with the tuned parameters of a shape head."""
    p = dict(bundle.postprocess or {})
    tuned = (f"Tuned on the labelled training images after fine-tuning (training F1@0.5 {p.get('f1', 'n/a')}): "
             f"seed threshold {p.get('seed_threshold')}, minimum object size {p.get('min_size')} px"
             + (f", NMS IoU threshold {p.get('nms_threshold')}" if bundle.instance_head == "stardist" else "") + ".")
    if isinstance(head_for(bundle.instance_head or None), DistanceHead):  # distance and capped
        return ("Post-processing (napari-tower `segment/shape_heads.py`): foreground = foreground probability > 0.5; "
                "seeds = connected regions where the distance exceeds the seed threshold; a watershed on minus "
                "the distance grows the seeds over the foreground; holes are filled and objects smaller than the "
                "minimum size removed. " + tuned)
    if bundle.instance_head == "stardist":
        return ("Post-processing (napari-tower `segment/stardist.py`): candidate centres are local maxima "
                "(3 x 3) of the distance map above the seed threshold, inside the foreground (probability "
                "> 0.5); each proposes the star-convex polygon of its 32 rays; greedy non-maximum suppression "
                "in order of decreasing distance drops a polygon overlapping a kept one by more than the NMS "
                "IoU threshold; polygons are clipped to the foreground and objects smaller than the minimum "
                "size removed. " + tuned)
    return ("napari-tower turns the probabilities into labels (argmax, or for instance models a "
            "watershed on the foreground seeded by the interiors away from the boundaries).")


def _readme(bundle: ModelBundle, cfg: BioimageioExportConfig, test_shape: tuple[int, ...]) -> str:
    target, classes = str(bundle.target), int(bundle.classes)
    low, high = bundle.percentiles
    norm = (f"per image: the {low}th and {high}th percentiles of each channel map "
            "to 0 and 1 (`scale_range` over y, x), then clipped to [0, 1]"
            if cfg.normalise == "image" else
            f"fixed, from the training images: channel values {_stored(bundle).low} map to 0 and "
            f"{_stored(bundle).high} to 1 (`scale_linear`), then clipped to [0, 1]")
    return f"""# {cfg.name}

{cfg.description or "A 2D U-Net segmenter fine-tuned with napari-tower."}

Exported by napari-tower {__version__}: a U-Net (base width {bundle.base}, depth {bundle.depth},
{bundle.in_channels} input channel(s)) pretrained with TOWER self-supervised learning
(Chen et al., arXiv 2211.14715, init: `{bundle.init_method or 'unknown'}`) and fine-tuned
on {target} labels for {bundle.step} steps.

## Inputs and outputs

- Input `{INPUT_ID}`: (batch, channel, y, x) raw intensities; y and x multiples of {2 ** bundle.depth}.
- Normalisation (preprocessing): {norm}.
- Output `{OUTPUT_ID}`: {_output_text(bundle)} (batch, channel, y, x), channels
  {', '.join(_channel_names(target, classes, bundle.instance_head))}.

{_postprocess_text(bundle)} For large images, predict in tiles of 256-512 pixels with some
overlap, as napari-tower does.

## Validation

The package's test input (a {test_shape[-2]} x {test_shape[-1]} crop) and test output were
produced by napari-tower's own predictor; `bioimageio.core`'s `test_model` reproduces the
output from the input with every weight format. Measure accuracy on your own annotated
images, e.g. with `napari-tower predict` then `napari-tower evaluate --pred ... --truth ...`.

## Use it again in napari-tower

`napari-tower predict THIS.zip IMAGES --out DIR`, `napari-tower finetune IMAGES --labels ...
--init THIS.zip --out MODEL`, or **Load model...** in the napari widget.
"""


def _stored(bundle: ModelBundle) -> Any:
    """The normalisation stored with the model (what `--normalise model` writes as preprocessing)."""
    if bundle.normalisation is None:
        raise TowerError("the model stores no normalisation: "
                         "export it with per-image normalisation (--normalise image)")
    return bundle.normalisation


def export_bioimageio(model: str | os.PathLike | ModelBundle, out: str | os.PathLike,
                      cfg: BioimageioExportConfig | None = None, test_image: Any = None) -> Path:
    """Write a bioimage.io model package (zip) of a fine-tuned segmenter.

    `model` is a segmenter (a model file's path or a loaded `ModelBundle`). `test_image` (an `Image`,
    array, or None for the built-in synthetic nuclei) supplies the test input: a centred
    crop of its first plane. The zip is written atomically; returns its path.
    """
    require_bioimageio()
    import tifffile
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as bmz

    from ..config import PredictConfig
    from ..data import from_array
    from ..segment.predict import Predictor

    cfg = cfg or BioimageioExportConfig()
    cfg.validate()
    bundle = model if isinstance(model, ModelBundle) else ModelBundle.load(model)
    bundle.require_segmenter(str(model) if not isinstance(model, ModelBundle) else "the model")
    if bundle.spatial_dims == 3:
        # The package's network, axes and test tensors are those of a 2D U-Net on (batch, channel, y, x) tiles.
        raise TowerError(f"{model if not isinstance(model, ModelBundle) else 'the model'} is a 3D (volume) model: "
                         "bioimage.io export writes 2D models only. Export a model fine-tuned in 2D (--dims 2d), "
                         "or share the model file, which napari-tower predicts in 3D")
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise TowerError(f"{out} is not a .zip name: "
                         f"bioimage.io packages are zip files, e.g. {out.with_suffix('.zip')}")
    check_writable(out)

    in_channels, classes, target = bundle.in_channels, int(bundle.classes), str(bundle.target)
    base, depth = bundle.base, bundle.depth
    multiple = 2 ** depth
    if test_image is None:
        from ..samples import synthetic_nuclei

        test_image = from_array(synthetic_nuclei((TEST_SIDE, TEST_SIDE), 40, seed=0)[0], "the built-in sample")
    # Sides that need no padding in our tiler either (it pads to multiples of 16), so both sides see the same pixels.
    test_input = _test_plane(test_image, in_channels, max(multiple, 16))

    # The test output is what napari-tower itself predicts, in one tile (no blending).
    side = max(test_input.shape[-2:])
    pcfg = PredictConfig(tile=max(32, side), overlap=0, device="cpu", normalise=cfg.normalise)
    if hasattr(pcfg, "precision"):  # consumers compute in float32; so must the reference output
        pcfg.precision = "float32"
    predictor = Predictor(bundle, pcfg)
    prediction = predictor.predict(from_array(test_input[0], "test input", axes="CYX"))
    test_output = prediction.probabilities[:1].astype(np.float32)
    net = ProbabilitySegmenter(in_channels, classes, base, depth, bundle.instance_head or "")
    net.load_state_dict(bundle.state)
    net.eval()

    y, x = bmz.AxisId("y"), bmz.AxisId("x")
    size = bmz.ParameterizedSize(min=multiple, step=multiple)
    if cfg.normalise == "image":
        low_pct, high_pct = bundle.percentiles
        scale: Any = bmz.ScaleRangeDescr(kwargs=bmz.ScaleRangeKwargs(
            axes=(y, x), min_percentile=low_pct, max_percentile=high_pct))
    else:
        stored = _stored(bundle)
        low, high = np.asarray(stored.low, np.float64), np.asarray(stored.high, np.float64)
        gain, offset = (1.0 / (high - low)).tolist(), (-low / (high - low)).tolist()
        scale = bmz.ScaleLinearDescr(kwargs=(
            bmz.ScaleLinearKwargs(gain=gain[0], offset=offset[0]) if in_channels == 1 else
            bmz.ScaleLinearAlongAxisKwargs(axis=bmz.AxisId("channel"), gain=gain, offset=offset)))
    preprocessing = [scale, bmz.ClipDescr(kwargs=bmz.ClipKwargs(min=0.0, max=1.0))]

    with tempfile.TemporaryDirectory(prefix="napari-tower-bioimageio-") as tmp:
        folder = Path(tmp)
        np.save(folder / "test_input.npy", test_input)
        np.save(folder / "test_output.npy", test_output)
        # Sample tensors are for people (bioimage.io shows them); TIFF, as the spec asks for an image format.
        tifffile.imwrite(folder / "sample_input.tif", test_input[0, 0] if in_channels == 1 else test_input[0])
        tifffile.imwrite(folder / "sample_output.tif", test_output[0])
        _cover(test_input[0], predictor.labels_from(prediction.probabilities[0]), folder / "cover.png")
        (folder / "README.md").write_text(_readme(bundle, cfg, test_input.shape), encoding="utf-8")
        pytorch_version = bmz.Version(torch.__version__.split("+")[0])
        weights: dict[str, Any] = {}
        if "pytorch_state_dict" in cfg.weight_formats:
            torch.save({k: v.detach().cpu() for k, v in bundle.state.items()}, folder / "weights.pt")
            weights["pytorch_state_dict"] = bmz.PytorchStateDictWeightsDescr(
                source=folder / "weights.pt", pytorch_version=pytorch_version,
                architecture=bmz.ArchitectureFromLibraryDescr(
                    import_from=__name__, callable=bmz.Identifier(ProbabilitySegmenter.__name__),
                    kwargs={"in_channels": in_channels, "classes": classes, "base": base, "depth": depth,
                            **({"instance_head": bundle.instance_head} if bundle.instance_head else {})}))
        if "torchscript" in cfg.weight_formats:
            with torch.no_grad():
                traced = torch.jit.trace(net, torch.from_numpy(test_input))
            traced.save(str(folder / "weights_torchscript.pt"))
            weights["torchscript"] = bmz.TorchscriptWeightsDescr(
                source=folder / "weights_torchscript.pt", pytorch_version=pytorch_version,
                parent="pytorch_state_dict" if "pytorch_state_dict" in weights else None)

        payload = bundle.to_dict()
        metadata = {k: payload[k] for k in METADATA_FIELDS if k in payload}
        metadata.update({"napari_tower_version": __version__, "normalise": cfg.normalise})
        descr = bmz.ModelDescr(
            name=cfg.name,
            description=(cfg.description
                         or f"2D U-Net {target} segmenter, TOWER-pretrained, fine-tuned with napari-tower"),
            authors=[bmz.Author(name=a) for a in cfg.authors],
            cite=[bmz.CiteEntry(text="Chen, Li, Chen, Luo. A knowledge-based learning framework for self-supervised "
                                     "pre-training towards enhanced recognition of biomedical microscopy images. "
                                     "Neural Networks 167 (2023)", doi=bmz.Doi(TOWER_DOI))],
            license=bmz.LicenseId(cfg.license),
            tags=list(cfg.tags),
            documentation=bmz.FileDescr(source=folder / "README.md"),
            covers=[bmz.FileDescr(source=folder / "cover.png")],
            inputs=[bmz.InputTensorDescr(
                id=bmz.TensorId(INPUT_ID),
                axes=[bmz.BatchAxis(),
                      bmz.ChannelAxis(channel_names=[bmz.Identifier(f"channel{c}") for c in range(in_channels)]),
                      bmz.SpaceInputAxis(id=y, size=size), bmz.SpaceInputAxis(id=x, size=size)],
                test_tensor=bmz.FileDescr(source=folder / "test_input.npy"),
                sample_tensor=bmz.FileDescr(source=folder / "sample_input.tif"),
                data=bmz.IntervalOrRatioDataDescr(type="float32"),
                preprocessing=preprocessing)],
            outputs=[bmz.OutputTensorDescr(
                id=bmz.TensorId(OUTPUT_ID),
                axes=[bmz.BatchAxis(),
                      bmz.ChannelAxis(channel_names=[bmz.Identifier(n) for n in
                                                     _channel_names(target, classes, bundle.instance_head)]),
                      bmz.SpaceOutputAxis(id=y, size=bmz.SizeReference(tensor_id=bmz.TensorId(INPUT_ID), axis_id=y)),
                      bmz.SpaceOutputAxis(id=x, size=bmz.SizeReference(tensor_id=bmz.TensorId(INPUT_ID), axis_id=x))],
                test_tensor=bmz.FileDescr(source=folder / "test_output.npy"),
                sample_tensor=bmz.FileDescr(source=folder / "sample_output.tif"),
                data=bmz.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))],
            weights=bmz.WeightsDescr(**weights),
            config=bmz.Config(**{METADATA_KEY: _plain(metadata)}),
        )
        staged = folder / "package.zip"
        save_bioimageio_package(descr, output_path=staged)
        atomic_copy(staged, out, "bioimage.io package")
    return out


def _plain(value: Any) -> Any:
    """Checkpoint metadata as YAML-safe values (tuples become lists, numpy scalars numbers)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def check_bioimageio_package(path: str | os.PathLike) -> CheckReport:
    """Run bioimage.io's own test (`bioimageio.core.test_model`) on a package: format, then inference.

    Every weight format predicts the test input, compared with the packaged test output.
    """
    try:
        from bioimageio.core import test_model
    except ImportError:
        raise TowerError(f"checking a package needs bioimageio.core: {INSTALL_HINT}") from None
    summary = test_model(str(path), devices=["cpu"])
    errors, warnings = [], []
    for detail in summary.details:
        errors += [f"{detail.name}: {e.loc}: {e.msg}" if e.loc else f"{detail.name}: {e.msg}" for e in detail.errors]
        warnings += [f"{detail.name}: {w.msg}" for w in detail.warnings]
    return CheckReport(summary.status == "passed", errors, warnings)


__all__ = ["BioimageioExportConfig", "CheckReport", "ProbabilitySegmenter", "check_bioimageio_package",
           "export_bioimageio"]

"""The model bundle: one typed object for everything a napari-tower model file holds.

A bundle is a pretrained network ("pretrained") or a fine-tuned segmenter
("segmenter"): its weights, training config, input normalisation, training
history, and what each kind needs besides (the pretraining method and optimiser
state for a resume; the segmenter's target kind and class count).

`ModelBundle.load` is the one reader and `ModelBundle.save` the one writer. On
disk a bundle is a plain dict (format "napari-tower", version 1) saved with
`torch.save`, so files written before this class existed load unchanged. It is
written atomically (`atomic.atomic_write`: exclusive temp file, fsync, rename),
so an interrupted write or a full disk never replaces a good file with half of
one, and read with `torch.load(weights_only=True)`, which refuses any pickled
object other than tensors and plain containers, so a file can never run code on
load. A bioimage.io package napari-tower exported loads too (`bioimageio.reader`).
"""

from __future__ import annotations

import io
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write, os_error_advice
from .bioimageio.reader import is_bioimageio_package, payload_from_bioimageio
from .data.normalise import Normalisation
from .errors import CheckpointError, TowerError

FORMAT = "napari-tower"
VERSION = 1
KINDS = ("pretrained", "segmenter")
# Keys of the on-disk dict the fields below are read from; anything else is kept in `extra`.
_FORMAT_KEYS = ("format", "version")
_FIELD_KEYS = ("kind", "config", "state", "normalisation", "history", "step", "method", "transfers", "optimizer",
               "world_size", "target", "classes", "init_method", "best_val_dice", "source", "instance_head",
               "postprocess", "levels", "normalisations")


@dataclass
class ModelBundle:
    """A pretrained network or a fine-tuned segmenter, with everything needed to use or continue it.

    Fields that belong to one kind only are None for the other. `config` is the
    training config as a plain dict (`config.to_dict`), exactly as saved, so a
    file from another napari-tower version never fails on a renamed option.
    """

    kind: str  # "pretrained" or "segmenter"
    config: dict[str, Any]  # to_dict(PretrainConfig) or to_dict(FinetuneConfig)
    state: dict[str, torch.Tensor]  # the network's weights (for "pretrained": the whole method, `unet.*` inside)
    normalisation: Normalisation | None = None  # the training images' per-channel percentiles (median over images)
    history: dict[str, list[float]] = field(default_factory=dict)  # per-step loss, validation, ... curves
    step: int = 0  # training steps done
    # pretrained only
    method: str | None = None  # the self-supervised method ("tower", "simclr", ...)
    transfers: list[str] | None = None  # U-Net parts that initialise a segmenter ("encoder", "decoder")
    optimizer: dict[str, Any] | None = None  # Adam's state, so --resume continues the same run
    world_size: int | None = None  # ranks it trained on: config's batch is per rank
    # segmenter only
    target: str | None = None  # "binary", "semantic", "instance" or "sparse"
    classes: int | None = None  # output channels, background first
    init_method: str | None = None  # what it was fine-tuned from: a method name, "scratch" or "segmenter"
    best_val_dice: float | None = None
    source: str | None = None  # the bioimage.io package it was read from
    # instance segmenters: the shape-aware head ("distance", "stardist"; None: the boundary head) and its
    # post-processing parameters tuned on the labelled images (seed_threshold, nms_threshold, min_size, f1)
    instance_head: str | None = None
    postprocess: dict[str, Any] | None = None
    # [lowest, highest] median intensity of the labelled images as the model saw them (`data.median_level`):
    # where their backgrounds sat, so prediction can flag an image unlike them (`Predictor.unfamiliar`)
    levels: list[float] | None = None
    # each labelled image's own percentiles, as fine-tuning scaled it: prediction scales an image as the labelled
    # image whose scaling fits it best was scaled (`data.nearest_normalisation`); None in models before it
    normalisations: list[Normalisation] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept on save

    def __post_init__(self) -> None:
        if self.kind == "segmenter" and (self.target is None or self.classes is None):
            raise ValueError("a segmenter bundle needs its target and classes")

    # ------------------------------------------------------------------ typed views of the config

    @property
    def in_channels(self) -> int:
        """Image channels the network takes."""
        return int(self.config["model"]["in_channels"])

    @property
    def base(self) -> int:
        """U-Net base width."""
        return int(self.config["model"]["base"])

    @property
    def depth(self) -> int:
        """U-Net depth (each level halves the image)."""
        return int(self.config["model"]["depth"])

    @property
    def spatial_dims(self) -> int:
        """2 for a plane-by-plane model, 3 for a volume model (files before issue 17 are 2D)."""
        return 3 if self.config["model"].get("dims", "2d") == "3d" else 2

    def _model_config(self) -> tuple[Any, int]:
        """The saved model settings as a `ModelConfig`, and the training patch depth: what the U-Net is built from."""
        from .config import ModelConfig

        model = self.config["model"]
        cfg = ModelConfig(depth=self.depth, dims=model.get("dims", "2d"),
                          voxel_size=tuple(float(v) for v in model.get("voxel_size", (1.0, 1.0, 1.0))))
        return cfg, int((self.config.get("data") or {}).get("patch_z", 16))

    @property
    def pools(self) -> list[tuple[int, ...]] | None:
        """The U-Net's per-level pooling factors, as training built them (None: 2 on every axis)."""
        cfg, patch_z = self._model_config()
        return cfg.pools(patch_z)

    @property
    def kernels(self) -> list[tuple[int, ...]] | None:
        """The U-Net's per-level convolution sizes, as training built them (None: 3 on every axis)."""
        cfg, patch_z = self._model_config()
        return cfg.kernels(patch_z)

    @property
    def percentiles(self) -> tuple[float, float]:
        """The low and high percentiles that per-image normalisation maps to 0 and 1."""
        data = self.config.get("data") or {}
        return float(data.get("low_percentile", 1.0)), float(data.get("high_percentile", 99.8))

    def require_segmenter(self, source: str = "the model") -> None:
        """Raise a `CheckpointError` naming the fix unless this is a segmenter (what prediction needs)."""
        if self.kind != "segmenter":
            raise CheckpointError(
                f"{source} is a {self.kind} checkpoint, but prediction needs a segmenter: "
                "fine-tune it first (napari-tower finetune IMAGE --labels LABELS --init CKPT --out MODEL)"
            )

    # ------------------------------------------------------------------ the on-disk dict

    def to_dict(self) -> dict[str, Any]:
        """The on-disk form: a dict of tensors and plain values; fields that are None are left out."""
        values: dict[str, Any] = {
            "kind": self.kind, "config": self.config, "state": self.state,
            "normalisation": self.normalisation.to_dict() if self.normalisation is not None else None,
            "history": self.history, "step": self.step, "method": self.method, "transfers": self.transfers,
            "optimizer": self.optimizer, "world_size": self.world_size, "target": self.target,
            "classes": self.classes, "init_method": self.init_method, "best_val_dice": self.best_val_dice,
            "source": self.source, "instance_head": self.instance_head, "postprocess": self.postprocess,
            "levels": self.levels,
            "normalisations": [n.to_dict() for n in self.normalisations] if self.normalisations else None,
        }
        return {"format": FORMAT, "version": VERSION, **self.extra,
                **{k: v for k, v in values.items() if v is not None}}

    @classmethod
    def from_dict(cls, data: Any, source: str | os.PathLike = "the checkpoint") -> ModelBundle:
        """Check an on-disk dict (format, version, kind, config, weights) and build the bundle from it."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CheckpointError(f"{source} is not a napari-tower checkpoint: give a file written by napari-tower")
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise CheckpointError(f"checkpoint {source} has no valid format version ({version!r}): it is damaged; "
                                  "use an earlier copy or train again")
        if version > VERSION:
            raise CheckpointError(
                f"checkpoint {source} has format version {version}, newer than this napari-tower understands "
                f"({VERSION}): upgrade napari-tower (pip install -U napari-tower)"
            )
        have = data.get("kind")
        if have not in KINDS or not isinstance(data.get("config"), dict) or not isinstance(data.get("state"), dict):
            raise CheckpointError(f"checkpoint {source} is incomplete (kind {have!r}, config or weights missing): "
                                  "use an earlier copy or train again")
        if have == "segmenter" and (data.get("target") is None or data.get("classes") is None):
            raise CheckpointError(f"checkpoint {source} is incomplete (a segmenter without its target or classes): "
                                  "use an earlier copy or train again")
        try:
            return cls(
                kind=have, config=data["config"], state=data["state"],
                normalisation=_optional(data, "normalisation", Normalisation.from_dict),
                history=dict(data.get("history") or {}), step=int(data.get("step", 0)),
                method=_optional(data, "method", str), transfers=_optional(data, "transfers", list),
                optimizer=data.get("optimizer"), world_size=_optional(data, "world_size", int),
                target=_optional(data, "target", str), classes=_optional(data, "classes", int),
                init_method=_optional(data, "init_method", str),
                best_val_dice=_optional(data, "best_val_dice", float), source=_optional(data, "source", str),
                instance_head=_optional(data, "instance_head", str), postprocess=_optional(data, "postprocess", dict),
                levels=_optional(data, "levels", lambda v: [float(x) for x in v]),
                normalisations=_optional(data, "normalisations", lambda v: [Normalisation.from_dict(n) for n in v]),
                extra={k: v for k, v in data.items() if k not in _FIELD_KEYS + _FORMAT_KEYS},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {source} is damaged ({type(exc).__name__} in its fields): "
                                  "use an earlier copy or train again") from None

    # ------------------------------------------------------------------ the one reader and the one writer

    @classmethod
    def load(cls, path: str | os.PathLike, kind: str | None = None) -> ModelBundle:
        """Read a model file safely; `kind` ("pretrained"/"segmenter") is checked when given.

        Only tensors and plain containers are unpickled (`weights_only=True`): a file
        that would build any other object, which is how a pickle runs code, is refused
        before that object is created. A bioimage.io package napari-tower exported is
        read as the segmenter it holds.
        """
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist: check the path")
        try:
            with warnings.catch_warnings():  # torch warns about foreign pickle protocols; the refusal below says enough
                warnings.simplefilter("ignore")
                data = (payload_from_bioimageio(path) if is_bioimageio_package(path)
                        else torch.load(path, map_location="cpu", weights_only=True))
        except pickle.UnpicklingError as exc:
            reason = _refusal_reason(exc, path)
            if reason is None:
                raise CheckpointError(f"checkpoint {path} is damaged or not a checkpoint: use an earlier copy or "
                                      "train again") from None
            raise CheckpointError(
                f"checkpoint {path} was refused: besides weights it holds {reason}, which could run code when "
                "loaded; only load checkpoints written by napari-tower, from a source you trust"
            ) from None
        except PermissionError as exc:
            raise CheckpointError(f"checkpoint {path} cannot be read ({exc.strerror}): check the file's "
                                  "permissions") from None
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, TypeError, AttributeError) as exc:
            raise CheckpointError(
                f"checkpoint {path} is damaged or not a checkpoint ({type(exc).__name__}): "
                "it may be truncated; use an earlier copy or train again"
            ) from None
        bundle = cls.from_dict(data, path)
        if kind is not None and bundle.kind != kind:
            hint = ("fine-tune it first (napari-tower finetune --init CKPT) to get a segmenter"
                    if bundle.kind == "pretrained" else "give a pretraining checkpoint (napari-tower pretrain) instead")
            raise CheckpointError(f"{path} is a {bundle.kind} checkpoint, but a {kind} checkpoint is needed here: "
                                  f"{hint}")
        return bundle

    def save(self, path: str | os.PathLike) -> Path:
        """Write the bundle atomically to `path` (see the module's docstring); returns the path."""
        path = Path(path)
        if self.kind not in KINDS:
            raise ValueError(f"checkpoint kind must be one of {KINDS}")
        # Serialised in memory first: torch's writer turns a failed file write (disk full) into an opaque
        # RuntimeError, while a plain write of the bytes reports the real reason.
        with atomic_write(path, "checkpoint") as fh:
            buffer = io.BytesIO()
            torch.save(self.to_dict(), buffer)
            fh.write(buffer.getbuffer())
        return path


def _optional(data: dict[str, Any], key: str, convert: Any) -> Any:
    value = data.get(key)
    return None if value is None else convert(value)


def check_writable(path: str | os.PathLike) -> None:
    """Fail before hours of training, not after, when the model file cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise TowerError(f"{path} is a folder: give a file name such as {path / 'model.pt'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
    except OSError as exc:
        raise TowerError(f"could not write checkpoint {path} ({os_error_advice(exc)})") from None
    os.close(fd)
    os.unlink(probe)


def _refusal_reason(exc: Exception, path: Path) -> str | None:
    """What torch's weights-only unpickler refused, or None when the file is no pickle at all (just damaged)."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    if found:
        return f"a reference to {found.group(1)}"
    with open(path, "rb") as fh:
        head = fh.read(2)
    if head[:1] == b"\x80" or head == b"PK":  # a pickle (protocol 2+) or torch's zip container
        return "pickle instructions napari-tower never writes"
    return None


__all__ = ["FORMAT", "KINDS", "VERSION", "ModelBundle", "check_writable"]

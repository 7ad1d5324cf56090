"""Configuration dataclasses shared by the CLI and the napari widget.

One config, two faces: both front ends build these objects and call the same
core functions, and every checkpoint stores the config that produced it so a
run can be reproduced from either side.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import TowerError

METHODS = ("tower", "genesis", "simclr", "byol", "pcrl", "tower-gen-only", "tower-con-only")
PROXY_TASKS = ("nonlinear", "masking", "shuffle", "inpaint", "outpaint")
DEVICES = ("auto", "cpu", "cuda", "mps")

T = TypeVar("T")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise TowerError(message)


@dataclass
class DataConfig:
    """How images become normalised training patches."""

    patch: int = 128
    low_percentile: float = 1.0
    high_percentile: float = 99.8
    structure_prior: bool = True
    # Share of patch draws that ignore the structure score, so background is still seen.
    prior_floor: float = 0.25

    def validate(self) -> None:
        _check(16 <= self.patch <= 4096 and self.patch % 16 == 0,
               f"patch size {self.patch} is invalid: use a multiple of 16 between 16 and 4096")
        _check(0 <= self.low_percentile < self.high_percentile <= 100,
               "percentiles must satisfy 0 <= low < high <= 100")
        _check(0 <= self.prior_floor <= 1, "prior_floor must be between 0 and 1")


@dataclass
class ModelConfig:
    """U-Net shape. `in_channels` is filled in from the data."""

    base: int = 16
    depth: int = 4
    in_channels: int = 1
    projection_dim: int = 128

    def validate(self) -> None:
        _check(4 <= self.base <= 256, f"model base width {self.base} is invalid: use 4..256 (16 on CPU, 32 on GPU)")
        _check(1 <= self.depth <= 6, f"model depth {self.depth} is invalid: use 1..6")
        _check(1 <= self.in_channels <= 64, f"{self.in_channels} input channels is not supported (1..64)")


@dataclass
class AcceleratorConfig:
    """GPU-path options for training; each is a no-op where it would not help (on CPU)."""

    amp_dtype: str = "bfloat16"  # autocast dtype on CUDA when mixed_precision is on; "float16" adds loss scaling
    channels_last: bool = True  # NHWC tensors and weights on CUDA (tensor-core convolutions)
    compile: bool = False  # torch.compile the U-Net: minutes of warm-up, pays off on long GPU runs
    pin_memory: bool = True  # page-locked host batches, copied to CUDA asynchronously

    def validate(self) -> None:
        _check(self.amp_dtype in ("bfloat16", "float16"),
               f"unknown mixed-precision type '{self.amp_dtype}': choose bfloat16 or float16")


@dataclass
class PretrainConfig:
    """Self-supervised pretraining (spec sections 2, 4 and 5)."""

    method: str = "tower"
    steps: int = 300
    batch: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    tasks: tuple[str, ...] = ("nonlinear", "masking")
    temperature: float = 0.1
    mixed_precision: bool = True
    checkpoint_every: int = 100
    val_every: int = 50
    val_batches: int = 2
    early_stop_patience: int = 0  # validation rounds without improvement; 0 disables
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    accel: AcceleratorConfig = field(default_factory=AcceleratorConfig)

    def validate(self) -> None:
        _check(self.method in METHODS, f"unknown method '{self.method}': choose one of {', '.join(METHODS)}")
        _check(self.steps >= 0, "steps must be >= 0")
        _check(self.batch >= 2, "batch must be >= 2 (contrastive losses need negatives)")
        _check(self.lr > 0, "learning rate must be > 0")
        _check(self.device in DEVICES, f"unknown device '{self.device}': choose one of {', '.join(DEVICES)}")
        bad = [t for t in self.tasks if t not in PROXY_TASKS]
        _check(not bad, f"unknown proxy task(s) {bad}: choose from {', '.join(PROXY_TASKS)}")
        _check(self.temperature > 0, "temperature must be > 0")
        self.data.validate()
        self.model.validate()
        self.accel.validate()


@dataclass
class FinetuneConfig:
    """Supervised fine-tuning of a segmenter (spec section 6)."""

    steps: int = 300
    batch: int = 8
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    fraction: float = 1.0
    # "auto": instance masks -> foreground+boundary, binary -> foreground, else semantic classes;
    # "sparse": napari scribbles, 0 = unannotated, 1 = background, 2.. = classes.
    target: str = "auto"
    val_fraction: float = 0.2
    val_every: int = 50
    checkpoint_every: int = 100
    mixed_precision: bool = True
    edit_weight: float = 5.0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    accel: AcceleratorConfig = field(default_factory=AcceleratorConfig)

    def validate(self) -> None:
        _check(self.steps >= 0, "steps must be >= 0")
        _check(self.batch >= 1, "batch must be >= 1")
        _check(self.lr > 0, "learning rate must be > 0")
        _check(0 < self.fraction <= 1, f"fraction {self.fraction} is invalid: use a value in (0, 1]")
        _check(0 <= self.val_fraction < 1, "val_fraction must be in [0, 1)")
        _check(self.target in ("auto", "binary", "semantic", "instance", "sparse"),
               "target must be one of auto, binary, semantic, instance, sparse")
        _check(self.device in DEVICES, f"unknown device '{self.device}': choose one of {', '.join(DEVICES)}")
        self.data.validate()
        self.model.validate()
        self.accel.validate()


PRECISIONS = ("auto", "float32", "bfloat16")


@dataclass
class PredictConfig:
    """Tiled prediction."""

    # 1024 px tiles (shrunk evenly to fit the image) waste less on overlaps than 512 px ones at the same speed
    # per pixel; two of them need about 1 GB on a CPU.
    tile: int = 1024
    overlap: int = 64
    batch: int = 2
    device: str = "auto"
    instances: bool = False
    min_size: int = 16
    # "model": the intensity mapping stored with the model (the training images' percentiles), so every image is
    # scaled as the model saw its training data; "image": each image's own 1st/99.8th percentiles, which move with
    # its content (issue 21: sparse phase frames had their background lifted from 0.28 to 0.38-0.42, and 95-99% of
    # them was predicted as cells). Use "image" for images from another microscope or exposure than the training's.
    normalise: str = "model"
    # Block-wise (out-of-core) prediction: approximate block side, and context read around each block,
    # which must hold the largest objects whole for instance ids to agree across block seams.
    block: int = 4096
    halo: int = 64
    # "auto": bfloat16 where the hardware computes it natively (CUDA, CPUs with AVX512-BF16/AMX), else float32.
    precision: str = "auto"

    def validate(self) -> None:
        _check(self.precision in PRECISIONS,
               f"unknown precision '{self.precision}': choose one of {', '.join(PRECISIONS)}")
        _check(self.tile >= 32 and self.tile % 16 == 0, f"tile {self.tile} is invalid: use a multiple of 16, >= 32")
        _check(0 <= self.overlap <= self.tile // 2,
               f"overlap {self.overlap} is invalid: use 0..{self.tile // 2} (at most half the {self.tile} px tile)")
        _check(self.normalise in ("image", "model"), "normalise must be 'image' or 'model'")
        _check(self.block >= 256 and self.block % 16 == 0, f"block {self.block} is invalid: use a multiple of 16, >= 256")
        _check(0 <= self.halo <= self.block // 2,
               f"halo {self.halo} is invalid: use 0..{self.block // 2} px (at least the largest object's diameter)")
        _check(self.device in DEVICES, f"unknown device '{self.device}': choose one of {', '.join(DEVICES)}")


@dataclass
class PrototypeConfig:
    """Prototype dictionary for a label-free start: cluster pretrained pixel embeddings, name clusters, pseudo-label."""

    k: int = 16
    seed: int = 0
    device: str = "auto"
    # Encoder levels whose features describe a pixel (0 = full resolution); empty: the finest four (0, 1, 2, 3).
    levels: tuple[int, ...] = ()
    # Weight of the normalised intensity next to the unit-norm encoder features (0 leaves it out).
    intensity_weight: float = 0.5
    samples: int = 100_000  # pixels drawn (seeded) to fit the prototypes; bounds the clustering cost
    iterations: int = 50
    restarts: int = 3
    # Share of each plane's assigned pixels, the least certain, left unannotated (0) in pseudo-labels.
    ignore: float = 0.2
    tile: int = 512
    overlap: int = 64

    def validate(self) -> None:
        _check(2 <= self.k <= 64, f"K = {self.k} prototypes is invalid: use 2..64")
        _check(all(0 <= lv <= 6 for lv in self.levels), f"encoder levels {self.levels} are invalid: use 0..depth")
        _check(self.intensity_weight >= 0, "intensity_weight must be >= 0")
        _check(self.samples >= 10 * self.k, f"samples must be at least 10 x K = {10 * self.k}")
        _check(self.iterations >= 1 and self.restarts >= 1, "iterations and restarts must be >= 1")
        _check(0 <= self.ignore < 1, f"ignore {self.ignore} is invalid: use a share in [0, 1), e.g. 0.2")
        _check(self.tile >= 32 and self.tile % 16 == 0, f"tile {self.tile} is invalid: use a multiple of 16, >= 32")
        _check(0 <= self.overlap <= self.tile // 2, f"overlap {self.overlap} is invalid: use 0..{self.tile // 2}")
        _check(self.device in DEVICES, f"unknown device '{self.device}': choose one of {', '.join(DEVICES)}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict of a config (tuples become lists) for checkpoints and JSON."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a config dataclass from `to_dict` output, ignoring unknown keys (newer versions)."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        value = data[f.name]
        sub = {"data": DataConfig, "model": ModelConfig, "accel": AcceleratorConfig}.get(f.name)
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value)
        elif f.name in ("tasks", "levels") and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)

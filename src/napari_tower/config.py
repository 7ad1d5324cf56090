"""Configuration dataclasses shared by the CLI and the napari widget.

One config, two faces: both front ends build these objects and call the same
core functions, and every checkpoint stores the config that produced it so a
run can be reproduced from either side. Each field is declared once with
`param(...)`: its default, help, range or choices, CLI flag and widget label;
`validate()`, the argparse options and the widget controls all come from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import TowerError
from .params import check_params, nested_config, param

METHODS = ("tower", "genesis", "simclr", "byol", "pcrl", "tower-gen-only", "tower-con-only")
PROXY_TASKS = ("nonlinear", "masking", "shuffle", "inpaint", "outpaint")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "float32", "bfloat16")
TARGETS = ("auto", "binary", "semantic", "instance", "sparse", "sparse_instance")
# How instance labels are learnt (segment/shape_heads.py): "capped" regresses each pixel's distance to its object's
# edge capped at 6 px, "distance" the same normalised per object (both a seeded watershed), "stardist" radial
# distances (polygons + NMS), "boundary" a 2-px inner boundary class.
INSTANCE_HEADS = ("auto", "capped", "distance", "stardist", "boundary")
TRANSFERS = ("auto", "encoder", "encoder+decoder")
MAX_STEPS = 10_000_000

T = TypeVar("T")

# Parameters several configs share, defined once.
_DEVICE = dict(help="where to compute (auto: CUDA, then MPS, then CPU)", label="device", choices=DEVICES)
_SEED = dict(help="random seed (same seed and inputs, same result)", min=0, max=2**31 - 1)
_LR = dict(help="learning rate", min=0, min_open=True, max=10, noun="learning rate")
_MIXED = dict(help="mixed precision on CUDA (a CPU follows --cpu-bf16)", flag="")
_CKPT_EVERY = dict(help="write a resumable checkpoint every N steps (0: only at the end)", min=0, max=MAX_STEPS)
_VAL_EVERY = dict(help="validate every N steps (0: never)", flag="", min=0, max=MAX_STEPS)
_MINUTES = dict(help="train for this many minutes instead of a step count (0: train for the given steps)", min=0,
                label="or minutes", step=0.5,
                max=100_000, noun="time budget (minutes)")
_TILE = dict(help="tile side in pixels for tiled prediction", min=32, max=16384, multiple_of=16, noun="tile")


def loop_steps(steps: int, minutes: float) -> int:
    """The step cap of a training loop: the steps, or under a time budget as many as the time allows."""
    return MAX_STEPS if minutes > 0 else steps


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise TowerError(message)


@dataclass
class DataConfig:
    """How images become normalised training patches."""

    patch: int = param(128, "patch size in pixels", label="patch", min=16, max=4096, multiple_of=16, step=16,
                       noun="patch size")
    low_percentile: float = param(1.0, "lower normalisation percentile", flag="", min=0, max=100)
    high_percentile: float = param(99.8, "upper normalisation percentile", flag="", min=0, max=100)
    structure_prior: bool = param(True, "draw patches preferably where the image has structure (--no-prior: "
                                  "uniformly)", flag="--prior")
    # Share of patch draws that ignore the structure score, so background is still seen.
    prior_floor: float = param(0.25, "share of patch draws that ignore the structure prior", flag="", min=0, max=1)
    patch_z: int = param(16, "slices per training patch in 3D (ignored in 2D)", label="slices per patch", min=1,
                         max=512, noun="3D patch depth")

    def validate(self) -> None:
        check_params(self)
        _check(self.low_percentile < self.high_percentile, "percentiles must satisfy 0 <= low < high <= 100")


@dataclass
class ModelConfig:
    """U-Net shape. `in_channels` is filled in from the data."""

    base: int = param(16, "U-Net base width (16 on CPU, 32 on GPU)", label="model size (base)", min=4, max=256,
                      step=4, noun="model base width", hint="16 on CPU, 32 on GPU")
    depth: int = param(4, "U-Net depth (poolings)", min=1, max=6, noun="model depth")
    in_channels: int = param(1, "input channels (set from the data)", flag="", min=1, max=64,
                             noun="input channel count")
    projection_dim: int = param(128, "width of the contrastive projection", flag="", min=8, max=4096)
    # issue 17: "3d" trains and predicts on volumes; voxel_size (z, y, x) decides where z is pooled. Both are set on
    # the command line by the hand-written --dims (which adds "auto") and --voxel-size (cli/volumes.py), in the
    # widget by the mode and voxel-size controls (napari/volume_controls.py).
    dims: str = param("2d", "2d: every plane on its own; 3d: volumes with 3D convolutions", choices=("2d", "3d"),
                      flag="", noun="dimensionality")
    voxel_size: tuple[float, ...] = param((1.0, 1.0, 1.0), "voxel size z,y,x (any unit; only the ratios count; "
                                          "3D only)", flag="", min=0, min_open=True, noun="voxel size")

    def validate(self) -> None:
        check_params(self)
        _check(len(self.voxel_size) == 3, f"voxel size needs 3 values (z, y, x), got {len(self.voxel_size)}")

    @property
    def spatial_dims(self) -> int:
        """2 or 3."""
        return 3 if self.dims == "3d" else 2

    def pools(self, patch_z: int | None = None) -> list[tuple[int, ...]] | None:
        """The U-Net's per-level pooling factors: None (2 everywhere) in 2D, from the voxel size in 3D.

        `patch_z` (slices per training patch) stops z pooling where a patch would run out of slices.
        """
        if self.spatial_dims == 2:
            return None
        from .models.anisotropy import pool_schedule
        min_size = None if patch_z is None else (patch_z, 1 << 30, 1 << 30)
        return pool_schedule(self.voxel_size, self.depth, min_size)

    def kernels(self, patch_z: int | None = None) -> list[tuple[int, ...]] | None:
        """The U-Net's per-level convolution sizes: None (3 everywhere) in 2D, 1 along a coarse z in 3D."""
        pools = self.pools(patch_z)
        if pools is None:
            return None
        from .models.anisotropy import conv_kernels
        return conv_kernels(self.voxel_size, pools)


@dataclass
class AcceleratorConfig:
    """GPU-path options for training; each is a no-op where it would not help (on CPU)."""

    amp_dtype: str = param("bfloat16", "autocast type on CUDA (float16 adds loss scaling)", flag="",
                           choices=("bfloat16", "float16"), noun="mixed-precision type")
    channels_last: bool = param(True, "NHWC tensors and weights on CUDA (tensor-core convolutions)", flag="")
    compile: bool = param(False, "torch.compile the U-Net (slow start, faster long GPU runs)")
    pin_memory: bool = param(True, "page-locked host batches, copied to CUDA asynchronously", flag="")
    cpu_bf16: bool = param(False, "bfloat16 autocast when training on a CPU that computes it natively "
                           "(AVX512-BF16 or AMX); ignored on other CPUs and on GPUs")

    def validate(self) -> None:
        check_params(self)


@dataclass
class PretrainConfig:
    """Self-supervised pretraining (spec sections 2, 4 and 5)."""

    method: str = param("tower", "self-supervised method", label="method", choices=METHODS)
    steps: int = param(300, "optimiser steps", label="steps", min=0, max=MAX_STEPS, step=50)
    minutes: float = param(0.0, **_MINUTES)
    batch: int = param(16, "patches per step (contrastive losses need at least 2)", label="batch", min=2, max=4096)
    lr: float = param(1e-3, **_LR)
    weight_decay: float = param(0.0, "AdamW weight decay", flag="", min=0, max=1)
    seed: int = param(0, **_SEED)
    device: str = param("auto", **_DEVICE)
    tasks: tuple[str, ...] = param(("nonlinear", "masking"), "TOWER corruptions, comma-separated",
                                   choices=PROXY_TASKS, noun="proxy task(s)")
    temperature: float = param(0.1, "InfoNCE temperature", flag="", min=0, min_open=True, max=10)
    # TOWER's corruption strength and view geometry (spec defaults; issue 16 ablates them).
    mask_ratio: float = param(0.25, "share of block-mask cells blanked in the corrupted view", min=0, max=0.9)
    mask_cell: int = param(8, "block-mask cell side in pixels", min=2, max=64)
    remap_p: float = param(0.9, "probability that a sample's intensities are non-linearly remapped", min=0, max=1)
    view_shift: int = param(0, "random offset in pixels between the clean and the corrupted view (0: same "
                            "geometry)", min=0, max=64)
    mixed_precision: bool = param(True, **_MIXED)
    checkpoint_every: int = param(100, **_CKPT_EVERY)
    val_every: int = param(50, **_VAL_EVERY)
    val_batches: int = param(2, "validation batches per round", flag="", min=1, max=1000)
    early_stop_patience: int = param(0, "validation rounds without improvement before stopping (0: never)",
                                     flag="", min=0, max=1000)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    accel: AcceleratorConfig = field(default_factory=AcceleratorConfig)

    def validate(self) -> None:
        check_params(self)


@dataclass
class FinetuneConfig:
    """Supervised fine-tuning of a segmenter (spec section 6)."""

    steps: int = param(300, "optimiser steps", label="fine-tune steps", min=0, max=MAX_STEPS, step=50)
    minutes: float = param(0.0, **_MINUTES)
    batch: int = param(8, "patches per step", min=1, max=4096)
    lr: float = param(1e-3, **_LR)
    seed: int = param(0, **_SEED)
    device: str = param("auto", **_DEVICE)
    fraction: float = param(1.0, "share of labelled planes to use (seeded, nested)", min=0, min_open=True, max=1)
    # "auto": instance masks -> foreground+boundary, binary -> foreground, else semantic classes;
    # "sparse": napari scribbles, 0 = unannotated, 1 = background, 2.. = classes.
    target: str = param("auto", "how to read the labels; sparse: 0 = unannotated, 1 = background, 2.. = classes; "
                        "sparse_instance: 0 = unannotated, 1 = background, 2.. = one id per object",
                        choices=TARGETS)
    # Only for instance labels; a model being retrained keeps its own head. Post-processing (seed threshold, NMS
    # threshold, minimum size) is tuned on the labelled images after training and stored in the model.
    instance_head: str = param("auto", "how instances are learnt: capped (distance to each object's edge in pixels, "
                               "capped at 6 px, then watershed), distance (the same normalised to 1 at each object's "
                               "centre), stardist (radial distances, then NMS) or boundary (boundary class, then "
                               "watershed); auto: capped for planes, boundary for volumes (volumes train capped or "
                               "boundary)",
                               label="instance head", choices=INSTANCE_HEADS)
    transfer: str = param("auto", "which pretrained parts initialise the segmenter (auto: what the method "
                          "transfers)", choices=TRANSFERS)
    pretrained_lr_scale: float = param(1.0, "learning-rate multiplier for the layers loaded from a pretraining "
                                       "checkpoint (below 1 keeps more of what pretraining learned)",
                                       min=0, max=10, step=0.1)
    warmup: float = param(0.0, "share of the run over which the learning rate ramps up linearly", min=0, max=0.5,
                          step=0.05)
    val_fraction: float = param(0.2, "share of labelled planes held out for validation", flag="", min=0, max=1,
                                max_open=True)
    val_every: int = param(50, **_VAL_EVERY)
    checkpoint_every: int = param(100, **_CKPT_EVERY)
    mixed_precision: bool = param(True, **_MIXED)
    edit_weight: float = param(5.0, "loss weight of the pixels the user corrected (1: no extra weight)",
                               label="weight of edits", min=1, max=100, step=0.5)
    # Issue 21: without it, a model fine-tuned on one image keys on that image's absolute background level: a
    # 0.05 shift of a sparse frame's normalised intensities turned 14% predicted foreground into 83%. 0.4 rather
    # than 0.2: 0.2 lost Dice on DSB2018 (docs/benchmarks.md, "Dense-to-sparse transfer").
    intensity_jitter: float = param(0.4, "random brightness/contrast change of training patches, so the model "
                                    "does not key on the training image's exact intensities (0: off)",
                                    label="intensity jitter", min=0, max=1, step=0.05)
    # Issue 21: a model fine-tuned on large nuclei put a rim of +40% area around small ones (DSB2018, 3.2x the
    # true foreground on one seed; 1.5x with zoom 2). Off by default: where objects keep their size
    # (S-BIAD634, Usiigaci) the copies cost 1.5-4 Dice points (docs/benchmarks.md, "Dense-to-sparse transfer").
    zoom: float = param(1.0, "also train on copies of the labelled images scaled down and up to this factor: "
                        "use 2 when the objects to segment are smaller or larger than the ones you painted "
                        "(1: off; 2D class and boundary targets only, not shape heads or 3D)",
                        label="scale range", min=1, max=4, step=0.25)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # bfloat16 training on CPUs that compute it natively: 0.59x the step time at the same Dice (5 seeds, DSB2018,
    # benchmarks/bench_bf16_train.py, docs/benchmarks.md). 2D only (finetune keeps 3D in float32); a no-op on other
    # CPUs and on GPUs.
    accel: AcceleratorConfig = field(default_factory=lambda: AcceleratorConfig(cpu_bf16=True))

    def validate(self) -> None:
        check_params(self)


@dataclass
class RetrainConfig:
    """One round of the correct-and-retrain loop: a short fine-tuning on the user's corrections."""

    steps: int = param(50, "optimiser steps of the retrain", label="retrain steps", min=1, max=100_000, step=10)
    minutes: float = param(0.0, **_MINUTES)
    edit_weight: float = param(5.0, "loss weight of the pixels the user corrected (1: no extra weight)",
                               label="weight of edits", min=1, max=100, step=0.5)
    # A trade-off measured on DSB2018 (bench_loop, 5 seeds): 0.3 halves the round-to-round swings of held-out Dice
    # (mean 4.6 to 2.6 points) at the same final Dice, but a short retrain then learns fewer of the pixels the user
    # just corrected (tutorial test, 30 steps: 45% instead of 83%). Seeing the fix taken matters more in the loop.
    lr_scale: float = param(1.0, "learning rate of a retrain, as a multiple of the model's fine-tuning rate; "
                            "below 1 it ramps up over the first tenth of the steps (steadier between rounds, but "
                            "learns your corrections more slowly)", label="retrain rate", min=0.01, max=1.0,
                            step=0.05)
    replay: float = param(1.0, "labelled pixels of the images the model was fine-tuned on, replayed beside each "
                          "corrected pixel learnt from, when those labels are given (keeps what the model knew; "
                          "0: learn from the corrections only)", label="replay", min=0.0, max=10.0, step=0.5)
    seed: int = param(0, **_SEED)
    device: str = param("auto", **_DEVICE)

    def validate(self) -> None:
        check_params(self)


@dataclass
class PreviewConfig:
    """What the corruption preview shows."""

    seed: int = param(0, "random seed of the corruptions", label="seed", min=0, max=2**31 - 1)
    plane: int = param(0, "which plane of a stack", min=0, max=1_000_000)

    def validate(self) -> None:
        check_params(self)


@dataclass
class PredictConfig:
    """Tiled prediction."""

    # 1024 px tiles (shrunk evenly to fit the image) waste less on overlaps than 512 px ones at the same speed
    # per pixel; two of them need about 1 GB on a CPU.
    tile: int = param(1024, **_TILE)
    overlap: int = param(64, "overlap between tiles in pixels", min=0, max=8192)
    batch: int = param(2, "tiles per forward pass", min=1, max=1024)
    device: str = param("auto", **_DEVICE)
    instances: bool = param(False, "instance labels (watershed) instead of classes", label="instances")
    probabilities: bool = param(False, "also write the class probabilities", label="probability image")
    min_size: int = param(16, "smallest object kept, in pixels", min=0, max=1_000_000)
    # The shape heads' decoding threshold is tuned on the labelled images; one or two of them cannot show every
    # crowding a user's other images hold, so the user may move it, as Cellpose's and StarDist's thresholds are.
    seed_threshold: float = param(0.0, "shape heads (capped, distance, stardist): threshold of the seeds that "
                                  "split touching objects; 0 keeps the one tuned on the labelled images, higher "
                                  "splits more, lower merges more", min=0.0, max=1.0, step=0.05,
                                  label="split threshold")
    # Flips and quarter turns of each tile, their predictions averaged (`segment.test_time`).
    tta: int = param(1, "test-time augmentation: average the prediction over 1 (off), 4 (flips) or 8 (flips and "
                     "quarter turns) transforms of the image; 4 or 8 times slower", choices=(1, 4, 8),
                     label="test-time flips", noun="test-time flips")
    # "model": an intensity mapping stored with the model (the percentiles of the labelled image whose range fits
    # the image best), so every image is scaled as the model saw its training data; "image": each image's own
    # 1st/99.8th percentiles, which move with its content (issue 21: sparse phase frames had their background
    # lifted from 0.28 to 0.38-0.42, and 95-99% of them was predicted as cells). An image whose range is far from
    # the training's (another bit depth or exposure) falls back to its own percentiles, with a note
    # (`segment.predict.normalisation_for`).
    normalise: str = param("model", "intensity scaling: the training images' (model; per image when an image's "
                           "range is far from theirs) or each image's own percentiles (image)",
                           choices=("model", "image"))
    # Block-wise (out-of-core) prediction: approximate block side, and context read around each block,
    # which must hold the largest objects whole for instance ids to agree across block seams.
    block: int = param(4096, "block side for zarr output", min=256, max=1 << 20, multiple_of=16)
    halo: int = param(64, "context read around each block: at least the largest object's diameter", min=0,
                      max=1 << 19)
    # "auto": bfloat16 where the hardware computes it natively (CUDA, CPUs with AVX512-BF16/AMX), else float32.
    precision: str = param("auto", "compute precision (auto: bfloat16 where the device computes it natively)",
                           choices=PRECISIONS)

    def validate(self) -> None:
        check_params(self)
        _check(self.overlap <= self.tile // 2,
               f"overlap {self.overlap} is invalid: use 0..{self.tile // 2} (at most half the {self.tile} px tile)")
        _check(self.halo <= self.block // 2,
               f"halo {self.halo} is invalid: use 0..{self.block // 2} px (at least the largest object's diameter)")


@dataclass
class PrototypeConfig:
    """Prototype dictionary for a label-free start: cluster pretrained pixel embeddings, name clusters, pseudo-label."""

    k: int = param(16, "how many prototypes (pixel clusters) to find", label="prototypes (K)", min=2, max=64,
                   noun="K =")  # "K = 1 is invalid: use 2..64"
    seed: int = param(0, **_SEED)
    device: str = param("auto", **_DEVICE)
    # Encoder levels whose features describe a pixel (0 = full resolution); empty: the finest four (0, 1, 2, 3).
    levels: tuple[int, ...] = param((), "encoder levels to describe pixels with, comma-separated (default: the "
                                    "finest four, 0,1,2,3)", min=0, max=6, noun="encoder level")
    # Weight of the normalised intensity next to the unit-norm encoder features (0 leaves it out).
    intensity_weight: float = param(0.5, "weight of the pixel intensity beside the encoder features (0: left out)",
                                    min=0, max=100)
    samples: int = param(100_000, "pixels drawn (seeded) to fit the prototypes", min=20, max=100_000_000)
    iterations: int = param(50, "k-means iterations", flag="", min=1, max=10_000)
    restarts: int = param(3, "k-means restarts", flag="", min=1, max=100)
    # Share of each plane's assigned pixels, the least certain, left unannotated (0) in pseudo-labels.
    ignore: float = param(0.2, "share of each class's least certain pixels left unannotated (0) in the "
                          "pseudo-labels", label="leave uncertain share", min=0, max=0.9, step=0.05)
    tile: int = param(512, **_TILE)
    overlap: int = param(64, "overlap between tiles in pixels", flag="", min=0, max=8192)

    def validate(self) -> None:
        check_params(self)
        _check(self.samples >= 10 * self.k, f"samples must be at least 10 x K = {10 * self.k}")
        _check(self.overlap <= self.tile // 2, f"overlap {self.overlap} is invalid: use 0..{self.tile // 2}")


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
        sub = nested_config(f)
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value)
        elif isinstance(f.default, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)

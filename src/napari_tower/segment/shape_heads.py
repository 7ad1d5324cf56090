"""Shape-aware instance heads: the network learns object shape, not just a thin boundary class.

The boundary head (`instances.py`) learns foreground and a two-pixel inner boundary and splits touching
objects where the boundary band is found; with few labels that thin class is the hardest thing to learn.
The heads here regress a shape quantity from instance labels (each object its own id) instead:

- "distance": foreground + each object's distance to its own boundary, normalised to 1 at its centre.
  Seeds are the connected regions above a seed threshold; a watershed on the distance grows them back
  over the foreground.
- "capped": foreground + each pixel's distance to its object's edge in pixels, divided by `CAP_PX` and capped
  at 1 (not normalised per object), decoded as "distance" is. A 64-px nucleus then asks for the values its
  first pixels in from the edge would have in a big one, so learning small objects does not move "deep inside"
  towards edges: that normalisation made a retrain on small nuclei flood a distance model (docs/benchmarks.md).
- "stardist": foreground + the same normalised distance as an object probability + the distances from
  every object pixel to its object's edge along `RAYS` directions (star-convex polygons, Schmidt et al.
  2018). Candidate centres above the seed threshold become polygons; overlapping polygons are removed by
  non-maximum suppression (NMS) at an IoU threshold.

Every head outputs `channels` maps whose activated form (`activate`) starts with background and foreground
probabilities, so foreground Dice, the probability layer and fine-tuning validation read them as they read
the boundary head's classes. Targets are computed on whole planes (a patch crop would cut objects and
change their distances), then cropped and augmented with the image (`augment`). The capped head also trains
volumes from a few painted slices (`encode_volume`, `volume_edge_distance`); its decoding is n-dimensional.
Post-processing parameters (`seed_threshold`, `nms_threshold`, `min_size`) are tuned on the labelled images
after fine-tuning (`shape_training.tune_postprocess`) and stored in the model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..errors import TowerError
from .instances import _fill_holes, _relabel_sequential, remove_small
from .losses import segmentation_loss
from .targets import painted_runs

BOUNDARY = "boundary"
DEFAULT_POSTPROCESS = {"seed_threshold": 0.5, "nms_threshold": 0.4, "min_size": 16}


CAP_PX = 6.0  # the capped head's distance reaches 1 this many pixels in from an object's edge


def edge_distance(labels: np.ndarray, cap_px: float | None = None,
                  sampling: tuple[float, ...] | None = None) -> np.ndarray:
    """Each object's Euclidean distance to its own edge (other objects and background count as outside),
    divided by the object's largest distance (cap_px None: 1 at the centre of every object, whatever its
    size) or by `cap_px` and capped at 1. Planes or volumes; `sampling` is the spacing of each axis in
    in-plane pixels (anisotropic voxels), default 1 everywhere."""
    lab = np.asarray(labels)
    out = np.zeros(lab.shape, np.float32)
    inner = (slice(1, -1),) * lab.ndim
    for index, box in enumerate(ndi.find_objects(lab), start=1):
        if box is None:
            continue
        padded = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        obj = lab[padded] == index
        # Pad with outside so an object touching the image edge still ends there.
        dist = ndi.distance_transform_edt(np.pad(obj, 1), sampling=sampling)[inner]
        scale = dist.max() if cap_px is None else cap_px
        if scale > 0:
            out[padded][obj] = np.minimum(dist[obj] / scale, 1.0).astype(np.float32)
    return out


def volume_edge_distance(labels: np.ndarray, annotated: np.ndarray, cap_px: float,
                         sampling: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """`edge_distance` (capped) of a label volume (Z, Y, X) of which only the slices `annotated` (Z,) were painted.

    An object's edge is known in-plane on every painted slice, and along z only where the neighbouring slice was
    painted too (there its id is seen to end or change) or the volume ends. Next to an unpainted slice its extent
    in z is unknown (a lone painted slice usually cuts an object mid-way), so it is continued through that slice
    for as far as the cap reaches: a lone slice gets in-plane distances, objects stacked in z on neighbouring
    painted slices get a valley between them. The boundary head's targets follow the same rule
    (`instances.instance_to_targets`). Unpainted slices are 0 (they carry no loss). `sampling`: the voxel size
    (z, y, x) in in-plane pixels.
    """
    lab = np.asarray(labels)
    done = np.asarray(annotated, bool)
    if lab.ndim != 3 or done.shape != (lab.shape[0],):
        raise TowerError(f"a label volume (Z, Y, X) with one painted flag per slice is needed, got labels "
                         f"{lab.shape} and flags {done.shape}")
    out = np.zeros(lab.shape, np.float32)
    reach = int(np.ceil(cap_px / float(sampling[0]))) + 1  # slices within the cap of a painted one
    for start, stop in painted_runs(done):
        before = reach if start > 0 else 0  # the volume's end is an edge, as an image's is in a plane
        after = reach if stop < lab.shape[0] else 0
        run = np.pad(lab[start:stop], ((before, after), (0, 0), (0, 0)), mode="edge")
        out[start:stop] = edge_distance(run, cap_px, sampling)[before: before + stop - start]
    return out


def normalised_distance(labels: np.ndarray) -> np.ndarray:
    """`edge_distance` normalised per object: 1 at the centre of every object."""
    return edge_distance(labels)


def _object_ids(labels: np.ndarray) -> np.ndarray:
    """Instance labels as int64 object ids, 0 = background (negative ids count as background)."""
    lab = np.asarray(labels)
    if not np.issubdtype(lab.dtype, np.integer):
        raise TowerError(f"instance labels have data type {lab.dtype}; give an integer label image")
    return np.where(lab > 0, lab, 0).astype(np.int64)


class InstanceHead:
    """What a shape-aware head outputs, learns from, and how its outputs become instance labels."""

    name = ""
    channels = 3  # background, foreground, normalised distance (+ head-specific maps)
    tuned = ("seed_threshold", "min_size")  # post-processing parameters `tune_postprocess` chooses
    cap_px: float | None = None  # None: the distance is normalised per object; else capped (see `edge_distance`)
    volumes = False  # whether `encode_volume` trains it on volumes from painted slices (3D models)
    symmetric = True  # whether its maps are unchanged in value by flips and turns (test-time flips average them)

    # --------------------------------------------------------------- network outputs

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Raw outputs (N, channels, Y, X) -> [p_background, p_foreground, distance, ...]."""
        fg = logits[:, :2].softmax(1)
        return torch.cat([fg, torch.sigmoid(logits[:, 2:3]), self._activate_extra(logits[:, 3:])], 1)

    def _activate_extra(self, raw: torch.Tensor) -> torch.Tensor:
        return raw

    # --------------------------------------------------------------- targets

    def encode(self, labels: np.ndarray) -> np.ndarray:
        """Training targets (T, Y, X) float32 of one instance label plane (0 = background, 1.. = objects):
        foreground, distance to the edge, and the head's own maps."""
        lab = _object_ids(labels)
        return np.concatenate([(lab > 0)[None].astype(np.float32), edge_distance(lab, self.cap_px)[None],
                               self._encode_extra(lab)])

    def _encode_extra(self, labels: np.ndarray) -> np.ndarray:
        return np.zeros((0,) + labels.shape, np.float32)

    def encode_volume(self, labels: np.ndarray, annotated: np.ndarray,
                      sampling: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
        """Training targets (T, Z, Y, X) float32 of one instance label volume whose slices `annotated` were
        painted: foreground and the capped distance of `volume_edge_distance` (meaningful on painted slices)."""
        if not self.volumes or self.cap_px is None:
            raise TowerError(f"the {self.name} instance head trains planes only: use the capped head (or boundary) "
                             "for volumes, or fine-tune in 2D")
        lab = _object_ids(labels)
        return np.stack([(lab > 0).astype(np.float32), volume_edge_distance(lab, annotated, self.cap_px, sampling)])

    def augment(self, targets: np.ndarray, k: int, flip: bool) -> np.ndarray:
        """Targets (..., T, Y, X) rotated by k x 90 degrees then flipped, as `PatchSampler` does the image."""
        out = np.rot90(targets, k, axes=(-2, -1))
        return out[..., ::-1] if flip else out

    # --------------------------------------------------------------- loss

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Foreground cross-entropy + soft Dice, and the distance regression, over pixels of weight > 0."""
        logits = logits.float()
        fg = targets[:, 0]
        classes = torch.where(weights > 0, fg.long() + 1, torch.zeros_like(fg, dtype=torch.long))
        loss = segmentation_loss(logits[:, :2], classes, weights)
        dist = F.binary_cross_entropy_with_logits(logits[:, 2], targets[:, 1], reduction="none")
        loss = loss + 2.0 * (dist * weights).sum() / weights.sum().clamp(min=1.0)
        return loss + self._extra_loss(logits, targets, weights)

    def _extra_loss(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return logits.sum() * 0

    # --------------------------------------------------------------- post-processing

    def decode(self, outputs: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """Instance labels (int32, 1..n, background 0) of one plane's activated outputs (channels, Y, X), or of
        one volume's (channels, Z, Y, X) for a head that trains volumes (seeds and watershed are then 3D)."""
        raise NotImplementedError

    def grid(self) -> list[dict[str, Any]]:
        """Candidate post-processing parameters for tuning (min_size is tuned separately, after decoding)."""
        return [{"seed_threshold": t} for t in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)]


def _params(params: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(DEFAULT_POSTPROCESS)
    out.update(params or {})
    return out


class DistanceHead(InstanceHead):
    """Normalised distance regression; seeds above a threshold, grown by a watershed on the distance."""

    name = "distance"
    channels = 3

    def decode(self, outputs: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        from skimage.measure import label
        from skimage.segmentation import watershed

        p = _params(params)
        mask = outputs[1] > 0.5
        dist = np.where(mask, outputs[2], 0.0).astype(np.float32)
        seeds = label(dist > float(p["seed_threshold"]), connectivity=1).astype(np.int32)
        labels = watershed(-dist, markers=seeds, mask=mask).astype(np.int32) if seeds.max() else seeds
        orphans = mask & (labels == 0)  # foreground no seed reached: objects of their own
        if orphans.any():
            extra = label(orphans).astype(np.int32)
            labels[orphans] = extra[orphans] + labels.max()
        if labels.max() > 0:
            labels = _fill_holes(labels)
        return _relabel_sequential(remove_small(labels, int(p["min_size"])))


class CappedDistanceHead(DistanceHead):
    """The distance head with the distance in pixels capped at `CAP_PX`, the same for objects of every size."""

    name = "capped"
    cap_px = CAP_PX
    volumes = True

    def grid(self) -> list[dict[str, Any]]:
        # A big object's plateau is 1 wherever it is CAP_PX in, so necks between touching big objects need the
        # higher thresholds; the normalised head never needs them.
        return super().grid() + [{"seed_threshold": t} for t in (0.8, 0.9)]


__all__ = ["BOUNDARY", "CAP_PX", "DEFAULT_POSTPROCESS", "CappedDistanceHead", "DistanceHead", "InstanceHead",
           "edge_distance", "normalised_distance", "volume_edge_distance"]

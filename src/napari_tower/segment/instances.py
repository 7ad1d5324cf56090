"""Instance masks <-> foreground/boundary targets.

Instance segmentation is trained as two binary maps (spec section 6, target
"instance"): foreground and the inner boundary of every object. Touching
objects then have a band of boundary pixels between them, so the interiors
(foreground minus boundary) are separate seeds, and a seeded watershed grows
them back out to the full foreground.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..errors import TowerError


def instance_to_targets(labels: Any, annotated: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, boundary) uint8 maps of a label image (Y, X) or volume (Z, Y, X).

    ``boundary`` marks the pixels of each object that touch another label or
    the background (``find_boundaries(mode="inner")``), so two touching objects
    are separated by a two-pixel band. ``foreground`` is ``labels > 0``.

    For a volume, `annotated` (Z,) says which slices the user labelled (default: all). Boundaries
    are found in-plane on every labelled slice, and across z only between two neighbouring labelled
    slices: next to an unlabelled slice an object's extent in z is unknown (a lone painted slice is
    usually mid-object), so marking its pixels as boundary there would teach the model that whole
    cross-sections are edges. With every slice labelled this equals 3D ``find_boundaries`` with
    6-connectivity, so objects touching along z get a boundary band between them too.
    """
    from skimage.segmentation import find_boundaries

    lab = np.asarray(labels)
    if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool):
        raise TowerError(f"instance labels have data type {lab.dtype}; give an integer label image")
    lab = np.where(lab > 0, lab, 0)
    foreground = (lab > 0).astype(np.uint8)
    if lab.ndim != 3 or annotated is None:
        return foreground, find_boundaries(lab, mode="inner").astype(np.uint8)
    done = np.asarray(annotated, bool)
    if done.shape != (lab.shape[0],):
        raise TowerError(f"annotated slices have shape {done.shape} but the labels have {lab.shape[0]} slice(s)")
    boundary = np.zeros(lab.shape, bool)
    for z in np.flatnonzero(done):
        boundary[z] = find_boundaries(lab[z], mode="inner")
    # Across z: where both neighbouring slices are labelled and their ids differ, each side's object pixel is edge.
    differs = (lab[1:] != lab[:-1]) & (done[1:] & done[:-1])[:, None, None]
    boundary[1:] |= differs & (lab[1:] > 0)
    boundary[:-1] |= differs & (lab[:-1] > 0)
    return foreground, boundary.astype(np.uint8)


def _relabel_sequential(labels: np.ndarray) -> np.ndarray:
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    if ids.size and ids[0] == 0:
        return inverse.astype(np.int32)
    return (inverse + 1).astype(np.int32)


def _fill_holes(labels: np.ndarray) -> np.ndarray:
    """Fill the holes of each object (only background pixels are filled)."""
    out = labels.copy()
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        obj = labels[box] == index
        filled = ndi.binary_fill_holes(obj)
        holes = filled & ~obj & (out[box] == 0)
        if holes.any():
            out[box][holes] = index
    return out


def instances_from_probabilities(foreground: Any, boundary: Any = None, threshold: float = 0.5,
                                 min_size: int = 16, fill_holes: bool = True) -> np.ndarray:
    """Label image (int32, 1..n, background 0) from foreground (and boundary) probabilities.

    Without `boundary`: connected components of ``foreground > threshold``.
    With `boundary`: seeds are the connected components of
    ``foreground - boundary > threshold`` (object interiors); a watershed on
    ``boundary - foreground`` grows them within the foreground mask, and
    foreground regions that no seed reaches become objects of their own.
    Objects then get their holes filled (`fill_holes`), objects smaller than
    `min_size` pixels are removed, and labels are made sequential.
    Maps may be planes (Y, X) or volumes (Z, Y, X): in a volume seeds, watershed and
    connectivity are 3D (6-connected), so one object keeps one id across slices, and
    `min_size` counts voxels.
    """
    from skimage.measure import label
    from skimage.segmentation import watershed

    fg = np.asarray(foreground, dtype=np.float32)
    if fg.ndim < 2:
        raise TowerError(f"foreground probabilities have shape {fg.shape}; "
                         "give a 2D (Y, X) map or a 3D (Z, Y, X) volume")
    if min_size < 0:
        raise TowerError(f"min_size {min_size} is invalid: use 0 or more pixels")
    mask = fg > threshold
    if boundary is None:
        labels = label(mask).astype(np.int32)
    else:
        bd = np.asarray(boundary, dtype=np.float32)
        if bd.shape != fg.shape:
            raise TowerError(
                f"boundary probabilities have shape {bd.shape} but foreground has shape {fg.shape}; "
                "give both channels of the same prediction")
        seeds = label((fg - bd) > threshold, connectivity=1).astype(np.int32)
        if seeds.max() > 0:
            labels = watershed(bd - fg, markers=seeds, mask=mask, connectivity=1).astype(np.int32)
        else:
            labels = np.zeros(fg.shape, np.int32)
        orphans = mask & (labels == 0)
        if orphans.any():
            extra = label(orphans).astype(np.int32)
            labels[orphans] = extra[orphans] + labels.max()
    if fill_holes and labels.max() > 0:
        labels = _fill_holes(labels)
    return _relabel_sequential(remove_small(labels, min_size))


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """`labels` with objects of fewer than `min_size` pixels set to background, in place."""
    if min_size > 0 and labels.max() > 0:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        if small.any():
            labels[small[labels]] = 0
    return labels

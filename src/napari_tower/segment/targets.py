"""Turning the user's labels into training targets.

Internally every target follows napari's sparse-painting convention:
0 = not annotated (ignored by the loss), 1 = background, 2.. = classes.
Dense masks are shifted into it; instance masks become background /
interior / boundary so touching objects can be split after prediction.
"""

from __future__ import annotations

import numpy as np

from ..errors import TowerError

TARGET_KINDS = ("binary", "semantic", "instance", "sparse")


def infer_target_kind(labels: list[np.ndarray]) -> str:
    """'binary' for 0/1 (or 0/255) masks, 'instance' when ids look like objects, else 'semantic'."""
    values = np.unique(np.concatenate([np.unique(lab) for lab in labels]))
    fg = values[values > 0]
    if fg.size == 1:
        return "binary"
    # Many ids, or few ids each forming one blob, read as instances.
    return "instance" if fg.size > 8 else "semantic"


def encode_targets(labels: np.ndarray, kind: str) -> np.ndarray:
    """Labels (P, Y, X) as sparse-convention class maps (uint8: 0 ignore, 1 background, 2.. classes)."""
    if kind == "sparse":
        if labels.max() < 1:
            raise TowerError("the sparse labels hold no annotation: paint 1 for background and 2, 3, ... for classes")
        return labels.astype(np.uint8)
    if kind == "binary":
        return np.where(labels > 0, 2, 1).astype(np.uint8)
    if kind == "semantic":
        if labels.max() > 250:
            raise TowerError(f"semantic labels go up to {labels.max()}: at most 250 classes are supported")
        return (labels + 1).astype(np.uint8)
    if kind == "instance":
        from .instances import instance_to_targets

        out = np.ones(labels.shape, np.uint8)
        for i in range(labels.shape[0]):
            fg, boundary = instance_to_targets(labels[i])
            out[i][fg > 0] = 2
            out[i][boundary > 0] = 3
        return out
    raise TowerError(f"unknown target kind '{kind}': choose one of {', '.join(TARGET_KINDS)}")


def labelled_slices(labels: np.ndarray) -> np.ndarray:
    """(Z,) bool: the slices of a label volume (Z, Y, X) that hold any label.

    In 3D the user paints a few slices of a volume; a slice without any label was not annotated
    (not "all background"), so it carries no loss. Dense labels simply have every slice labelled.
    """
    lab = np.asarray(labels)
    return (lab.reshape(lab.shape[0], -1) > 0).any(axis=1)


def painted_runs(painted: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of neighbouring painted slices in `painted` (Z,) bool: where a volume's objects
    are known along z as well as in-plane."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], np.asarray(painted, np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def encode_volume_targets(labels: np.ndarray, kind: str) -> np.ndarray:
    """Labels of one volume (Z, Y, X) as sparse-convention class maps, like `encode_targets` for planes.

    Slices without any label become 0 (unannotated; see `labelled_slices`). For "sparse" labels 0 is
    unannotated voxel by voxel already. Instance boundaries are 3D between labelled neighbouring
    slices and in-plane elsewhere (`instances.instance_to_targets`).
    """
    lab = np.asarray(labels)
    done = labelled_slices(lab)
    if kind == "instance":
        from .instances import instance_to_targets

        fg, boundary = instance_to_targets(lab, done)
        out = np.ones(lab.shape, np.uint8)
        out[fg > 0] = 2
        out[boundary > 0] = 3
    else:
        out = encode_targets(lab, kind)
    out[~done] = 0
    return out


def n_classes(kind: str, targets: list[np.ndarray]) -> int:
    """Output channels of the segmentation head: background plus classes."""
    if kind == "binary":
        return 2
    if kind == "instance":
        return 3
    return int(max(t.max() for t in targets))


def check_labels(labels: np.ndarray, image_shape: tuple[int, ...], source: str, foreground: bool = True) -> None:
    """Labels must cover the image plane for plane and (unless `foreground` is False) hold some foreground."""
    p, _, h, w = image_shape
    if labels.shape != (p, h, w):
        raise TowerError(
            f"labels {source} have shape {labels.shape} but the image has {p} plane(s) of {h} x {w}: "
            "give labels of the same size as their image, in the same order"
        )
    if foreground and not (labels > 0).any():
        raise TowerError(f"labels {source} have no foreground (all 0): annotate at least one object")

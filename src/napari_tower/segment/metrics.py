"""Segmentation metrics (spec section 6): Dice, IoU, object F1 and DSB2018-style AP.

Pure numpy/scipy/scikit-image, no torch, so the evaluation can run anywhere.

Conventions
-----------
* Foreground is ``label > 0``; zero (and anything negative) is background.
* Binary scores (``dice``, ``iou``) of two empty masks are 1.0: nothing to find,
  nothing found.
* Object scores take *label images* (one integer id per object). ``evaluate``
  turns binary masks (values only 0/1 or 0/255) into their connected
  components first; the lower-level functions use the ids as given.
* Objects are matched one-to-one by IoU. The IoU matrix is built from a
  contingency table of (prediction id, truth id) pixel pairs counted in one
  pass (``np.bincount``, or ``np.unique`` for sparse ids), and the matching that maximises the number of pairs with
  ``IoU >= threshold`` is found with ``scipy.optimize.linear_sum_assignment``
  (run only on the connected groups of candidate pairs that are not already
  trivially one-to-one, so thousands of objects stay cheap).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

from ..errors import TowerError

DEFAULT_AP_THRESHOLDS = np.arange(0.5, 0.95, 0.05)  # 0.50, 0.55, ..., 0.90
_TOL = 1e-9  # IoU comparisons forgive float noise, so IoU 0.6 counts at threshold 0.6


# ----------------------------------------------------------------------------- helpers


def _array(x: Any, what: str = "mask") -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == bool:
        return a
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TowerError(f"{what} has data type {a.dtype}; give an integer label image or a binary mask")
    return a


def _check_shapes(pred: np.ndarray, truth: np.ndarray, index: int | None = None) -> None:
    if pred.shape != truth.shape:
        if index is None:
            raise TowerError(
                f"the prediction has shape {pred.shape} but the truth has shape {truth.shape}; "
                "compare masks of the same image")
        raise TowerError(
            f"prediction {index} has shape {pred.shape} but its truth has shape {truth.shape}; "
            "give matching files in the same order")


def _labels(x: np.ndarray, what: str = "label image") -> np.ndarray:
    """Integer label image with background 0 (negatives become background)."""
    if x.dtype == bool:
        return x.astype(np.int64)
    if np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)) or np.any(x != np.round(x)):
            raise TowerError(
                f"{what} contains non-integer values (probabilities?); "
                "threshold it first (for example prob > 0.5) or give a label image")
        x = x.astype(np.int64)
    return np.where(x > 0, x, 0)


def is_binary(x: Any) -> bool:
    """True when `x` holds only 0/1 or only 0/255 (a mask, not a label image)."""
    a = np.asarray(x)
    if a.dtype == bool or a.size == 0:
        return True
    top = a.max()
    if top not in (0, 1, 255) or a.min() < 0:
        return False
    return bool(np.all((a == 0) | (a == top)))


def as_instances(x: Any, what: str = "label image") -> np.ndarray:
    """Label image of `x`: binary masks become their connected components, labels stay as they are."""
    from skimage.measure import label

    a = _array(x, what)
    if is_binary(a):
        return label(a > 0).astype(np.int32)
    return _labels(a, what)


# ----------------------------------------------------------------------------- binary scores


def _binary_counts(pred: Any, truth: Any) -> tuple[int, int, int]:
    p = _array(pred, "prediction")
    t = _array(truth, "truth")
    _check_shapes(p, t)
    pf = p > 0
    tf = t > 0
    return int(np.count_nonzero(pf & tf)), int(np.count_nonzero(pf)), int(np.count_nonzero(tf))


def _dice_from(inter: int, n_pred: int, n_true: int) -> float:
    total = n_pred + n_true
    return 1.0 if total == 0 else 2.0 * inter / total


def _iou_from(inter: int, n_pred: int, n_true: int) -> float:
    union = n_pred + n_true - inter
    return 1.0 if union == 0 else inter / union


def dice(pred: Any, truth: Any) -> float:
    """Dice coefficient of the foregrounds (label > 0); 1.0 when both are empty."""
    return _dice_from(*_binary_counts(pred, truth))


def iou(pred: Any, truth: Any) -> float:
    """Intersection over union of the foregrounds (label > 0); 1.0 when both are empty."""
    return _iou_from(*_binary_counts(pred, truth))


# ----------------------------------------------------------------------------- object matching


@dataclass
class Overlaps:
    """Sparse IoU table between the objects of a prediction and a truth."""

    n_pred: int
    n_true: int
    pred_index: np.ndarray  # compact index (0..n_pred-1) of each overlapping pair
    true_index: np.ndarray
    iou: np.ndarray


def _compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Map ids to 0..n-1 (background -> -1)."""
    flat = labels.reshape(-1)
    top = int(flat.max()) if flat.size else 0
    if top <= 4 * flat.size + 1024:
        # Ids are usually 1..n (watershed, painting): a lookup table is O(pixels), where np.unique sorts them.
        flat = flat.astype(np.intp, copy=False)  # bincount refuses uint64
        present = np.bincount(flat, minlength=top + 1) > 0
        present[0] = False
        n = int(np.count_nonzero(present))
        lut = np.full(top + 1, -1, np.int64)
        lut[present] = np.arange(n)
        return lut[flat], n
    ids, inverse = np.unique(flat, return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.int64)
    if ids.size and ids[0] == 0:
        return inverse - 1, int(ids.size - 1)
    return inverse, int(ids.size)


def overlaps(pred: Any, truth: Any) -> Overlaps:
    """IoU of every overlapping (prediction object, truth object) pair, from one contingency table."""
    p = _labels(_array(pred, "prediction"), "prediction")
    t = _labels(_array(truth, "truth"), "truth")
    _check_shapes(p, t)
    pc, n_pred = _compact(p)
    tc, n_true = _compact(t)
    area_p = np.bincount(pc[pc >= 0], minlength=n_pred)
    area_t = np.bincount(tc[tc >= 0], minlength=n_true)
    both = (pc >= 0) & (tc >= 0)
    pairs = pc[both] * max(n_true, 1) + tc[both]
    if n_pred * n_true <= 4 * pairs.size + 4096:  # a dense table is cheaper than sorting the pixels
        counts = np.bincount(pairs, minlength=n_pred * n_true)
        keys = np.flatnonzero(counts)
        inter = counts[keys]
    else:
        keys, inter = np.unique(pairs, return_counts=True)
    pi = keys // max(n_true, 1)
    ti = keys % max(n_true, 1)
    union = area_p[pi] + area_t[ti] - inter
    return Overlaps(n_pred, n_true, pi, ti, inter / union)


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0 < threshold <= 1:
        raise TowerError(f"IoU threshold {threshold} is invalid: use a value in (0, 1], usually 0.5")
    return threshold


def _count_matches(ov: Overlaps, threshold: float) -> int:
    """Largest number of one-to-one pairs with IoU >= threshold."""
    keep = ov.iou >= threshold - _TOL
    pi, ti, w = ov.pred_index[keep], ov.true_index[keep], ov.iou[keep]
    if pi.size == 0:
        return 0
    deg_p = np.bincount(pi, minlength=ov.n_pred)
    deg_t = np.bincount(ti, minlength=ov.n_true)
    simple = (deg_p[pi] == 1) & (deg_t[ti] == 1)  # isolated pairs: always matched
    matches = int(np.count_nonzero(simple))
    pi, ti, w = pi[~simple], ti[~simple], w[~simple]
    if pi.size == 0:
        return matches
    # Groups of candidates that compete with each other: solve each by assignment.
    n = ov.n_pred + ov.n_true
    graph = sparse.coo_matrix((np.ones(pi.size), (pi, ti + ov.n_pred)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    edge_comp = component[pi]
    order = np.argsort(edge_comp, kind="stable")
    pi, ti, w, edge_comp = pi[order], ti[order], w[order], edge_comp[order]
    bounds = np.flatnonzero(np.diff(edge_comp)) + 1
    for gp, gt, gw in zip(np.split(pi, bounds), np.split(ti, bounds), np.split(w, bounds)):
        rows, r_inv = np.unique(gp, return_inverse=True)
        cols, c_inv = np.unique(gt, return_inverse=True)
        gain = np.zeros((rows.size, cols.size))
        # Every candidate is worth 1; IoU only breaks ties between equally large matchings.
        gain[r_inv, c_inv] = 1.0 + gw / (2.0 * (gw.size + 1))
        r, c = linear_sum_assignment(gain, maximize=True)
        matches += int(np.count_nonzero(gain[r, c] > 0))
    return matches


def match_instances(pred: Any, truth: Any, threshold: float = 0.5) -> tuple[int, int, int]:
    """(TP, FP, FN) of an optimal one-to-one matching of objects at ``IoU >= threshold``.

    `pred` and `truth` are label images (0 = background); ids need not be sequential.
    """
    threshold = _check_threshold(threshold)
    ov = overlaps(pred, truth)
    tp = _count_matches(ov, threshold)
    return tp, ov.n_pred - tp, ov.n_true - tp


def _scores_from(tp: int, fp: int, fn: int) -> dict[str, float]:
    if tp + fp + fn == 0:  # nothing to find, nothing found
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": precision, "recall": recall, "f1": 2.0 * tp / (2 * tp + fp + fn)}


def object_scores(pred: Any, truth: Any, threshold: float = 0.5) -> dict[str, float]:
    """Object precision, recall and F1 at ``IoU >= threshold`` (all 1.0 when both have no objects)."""
    return _scores_from(*match_instances(pred, truth, threshold))


def _ap_from(counts: Sequence[tuple[int, int, int]]) -> float:
    values = [1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn) for tp, fp, fn in counts]
    return float(np.mean(values))


def _thresholds(thresholds: Any) -> np.ndarray:
    values = np.round(np.atleast_1d(np.asarray(thresholds, dtype=float)), 9)
    if values.size == 0:
        raise TowerError("no IoU thresholds given for average precision; use e.g. 0.5, 0.55, ..., 0.9")
    for v in values:
        _check_threshold(v)
    return values


def average_precision(pred: Any, truth: Any, thresholds: Any = DEFAULT_AP_THRESHOLDS) -> float:
    """DSB2018-style AP: mean over IoU thresholds (default 0.5..0.9) of TP / (TP + FP + FN)."""
    ths = _thresholds(thresholds)
    ov = overlaps(pred, truth)
    counts = []
    for th in ths:
        tp = _count_matches(ov, th)
        counts.append((tp, ov.n_pred - tp, ov.n_true - tp))
    return _ap_from(counts)


# ----------------------------------------------------------------------------- volumes


def object_scores_3d(pred: Any, truth: Any, threshold: float = 0.5) -> dict[str, float]:
    """Precision, recall and F1 of 3D objects: label volumes (Z, Y, X) matched by their 3D IoU.

    The same matching as `object_scores` (it is n-dimensional); an object predicted with a different id
    on some slices counts as two objects, each with a lower IoU, so split objects cost F1.
    """
    p, t = _array(pred, "prediction"), _array(truth, "truth")
    if p.ndim != 3:
        raise TowerError(f"the prediction has shape {p.shape}; give label volumes (Z, Y, X)")
    return object_scores(p, t, threshold)


def z_consistency(pred: Any, truth: Any) -> dict[str, float | int]:
    """How often true objects change predicted id between neighbouring slices (label volumes (Z, Y, X)).

    On every slice each true object takes the predicted id that covers most of its voxels there
    (predicted background ignored: a miss is recall's business, not a split; ties go to the smaller
    id). An object is split when that id differs between two neighbouring slices on which both are
    defined. Returns ``split_share`` (split objects / objects that span two such neighbouring slices;
    0.0 when there are none), ``split`` and ``objects`` (the counts).
    """
    p = _labels(_array(pred, "prediction"), "prediction")
    t = _labels(_array(truth, "truth"), "truth")
    _check_shapes(p, t)
    if t.ndim != 3:
        raise TowerError(f"the labels have shape {t.shape}; give label volumes (Z, Y, X)")
    both = (p > 0) & (t > 0)
    z = np.nonzero(both)[0].astype(np.int64)
    tc, n_true = _compact(t[both])
    pc, n_pred = _compact(p[both])
    if z.size == 0:
        return {"split_share": 0.0, "split": 0, "objects": 0}
    # One key per (truth object, slice, predicted id); counts give each pair's overlap in voxels.
    keys, counts = np.unique((tc * t.shape[0] + z) * n_pred + pc, return_counts=True)
    obj_slice, pid = keys // n_pred, keys % n_pred
    order = np.lexsort((pid, -counts, obj_slice))  # per (object, slice): largest overlap, then smallest id
    obj_slice, pid = obj_slice[order], pid[order]
    first = np.r_[True, obj_slice[1:] != obj_slice[:-1]]
    obj_slice, pid = obj_slice[first], pid[first]  # sorted by object, then slice
    obj, sl = obj_slice // t.shape[0], obj_slice % t.shape[0]
    neighbours = (obj[1:] == obj[:-1]) & (sl[1:] == sl[:-1] + 1)
    spanning = np.unique(obj[1:][neighbours])
    split = np.unique(obj[1:][neighbours & (pid[1:] != pid[:-1])])
    share = split.size / spanning.size if spanning.size else 0.0
    return {"split_share": float(share), "split": int(split.size), "objects": int(spanning.size)}


def split_share(pred: Any, truth: Any) -> float:
    """Share of true objects whose predicted id changes between neighbouring slices (see `z_consistency`)."""
    return float(z_consistency(pred, truth)["split_share"])


# ----------------------------------------------------------------------------- datasets


def evaluate(preds: Sequence[Any], truths: Sequence[Any], instances: bool | None = None,
             threshold: float = 0.5, thresholds: Any = DEFAULT_AP_THRESHOLDS) -> dict[str, Any]:
    """Score predicted masks against ground truth, image by image and pooled.

    Parameters
    ----------
    preds, truths
        Equally long sequences of masks or label images, paired by position.
    instances
        Whether to add object scores (precision, recall, F1 at `threshold`, AP over
        `thresholds`). ``None`` decides from the truths: yes when any truth is a label
        image (values other than 0/1 or 0/255). Binary masks are split into connected
        components before object matching (pass ``instances=True`` to force that).

    Returns
    -------
    ``{"images": [row, ...], "mean": {...}, "pooled": {...}, "instances": bool, "n_images": n}``
    where each row has ``dice`` and ``iou`` (plus ``precision``, ``recall``, ``f1``,
    ``ap``, ``tp``, ``fp``, ``fn`` for instances), ``mean`` averages the per-image
    values, and ``pooled`` computes Dice/IoU over all pixels together and object
    scores from summed object counts.
    """
    preds = list(preds)
    truths = list(truths)
    if len(preds) != len(truths):
        raise TowerError(
            f"got {len(preds)} predictions but {len(truths)} truths; give one truth per prediction, in the same order")
    if not preds:
        raise TowerError("no images to evaluate; give at least one prediction and its truth")
    threshold = _check_threshold(threshold)
    ths = _thresholds(thresholds)

    arrays = []
    for i, (p, t) in enumerate(zip(preds, truths)):
        pa = _array(p, f"prediction {i}")
        ta = _array(t, f"truth {i}")
        _check_shapes(pa, ta, i)
        for a, what in ((pa, f"prediction {i}"), (ta, f"truth {i}")):
            if np.issubdtype(a.dtype, np.floating):
                _labels(a, what)  # refuses probabilities with a clear message
        arrays.append((pa, ta))
    if instances is None:
        instances = any(not is_binary(t) for _, t in arrays)

    rows: list[dict[str, Any]] = []
    inter_sum = pred_sum = true_sum = 0
    obj = np.zeros(3, dtype=np.int64)
    ap_counts = np.zeros((ths.size, 3), dtype=np.int64)
    for i, (pa, ta) in enumerate(arrays):
        inter, n_pred, n_true = _binary_counts(pa, ta)
        inter_sum += inter
        pred_sum += n_pred
        true_sum += n_true
        row: dict[str, Any] = {"image": i, "dice": _dice_from(inter, n_pred, n_true),
                               "iou": _iou_from(inter, n_pred, n_true)}
        if instances:
            pl = as_instances(pa, f"prediction {i}")
            tl = as_instances(ta, f"truth {i}")
            ov = overlaps(pl, tl)
            tp = _count_matches(ov, threshold)
            counts = (tp, ov.n_pred - tp, ov.n_true - tp)
            obj += counts
            per_th = []
            for k, th in enumerate(ths):
                m = _count_matches(ov, th)
                c = (m, ov.n_pred - m, ov.n_true - m)
                ap_counts[k] += c
                per_th.append(c)
            row.update(_scores_from(*counts))
            row.update({"ap": _ap_from(per_th), "tp": counts[0], "fp": counts[1], "fn": counts[2]})
        rows.append(row)

    keys = ["dice", "iou"] + (["precision", "recall", "f1", "ap"] if instances else [])
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    pooled: dict[str, Any] = {"dice": _dice_from(inter_sum, pred_sum, true_sum),
                              "iou": _iou_from(inter_sum, pred_sum, true_sum)}
    if instances:
        pooled.update(_scores_from(*(int(v) for v in obj)))
        pooled["ap"] = _ap_from([tuple(int(v) for v in c) for c in ap_counts])
        pooled.update({"tp": int(obj[0]), "fp": int(obj[1]), "fn": int(obj[2])})
    return {"images": rows, "mean": mean, "pooled": pooled, "instances": bool(instances), "n_images": len(rows)}

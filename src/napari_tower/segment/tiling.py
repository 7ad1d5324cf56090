"""Tiled prediction of images of any size with smooth blending.

The image is cut into overlapping tiles (all of the same size, the last row
and column moved flush with the image edge), tiles go to the model in
batches, and the outputs are blended with a separable weight window:

* along an edge shared with a neighbouring tile, the weight is 0 for the
  outer quarter of the overlap, rises as a raised cosine over the middle half,
  and is 1 beyond; the two ramps of neighbours sum to 1, and a tile's own
  border (where padding corrupts a convolution's output) never counts, so a
  network whose receptive-field radius is at most ``overlap // 4`` gives the
  same result tiled as untiled;
* along the image border the weight stays 1 (nothing is down-weighted there).

Work goes one row band of tiles at a time: the band's strip of input rows is
read once (zarr/dask arrays are only sliced, never loaded whole), and weighted
outputs accumulate in a buffer of ``tile`` rows; rows no later band touches are
normalised and written into ``out``. Because the window is separable and every
band uses the same columns, the weight sum is the outer product of two 1D
sums, so no 2D weight buffer is kept. Memory beyond ``out`` is O(tile x W).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import TowerError

MULTIPLE = 16  # U-Net input sides must be multiples of 2**depth; 16 covers depth <= 4


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``min(tile, length)`` covering ``length``, the last flush with the end."""
    t = min(tile, length)
    step = t - overlap
    if t >= length:
        return [0]
    starts = list(range(0, length - t, step))
    starts.append(length - t)
    return starts


def balanced_tile(length: int, tile: int, overlap: int, multiple: int = MULTIPLE) -> int:
    """The smallest tile side (a multiple of `multiple`, at most `tile`) covering `length` with as few tiles as `tile`.

    A fixed tile leaves the last one overlapping its neighbour by up to a whole
    tile; shrinking every tile evenly spreads that slack, so no pixel is
    computed more often than the overlap needs (about 10% less work at 4096 px
    with 1024 px tiles).
    """
    if tile >= length:
        return length
    count = -(-(length - overlap) // (tile - overlap))
    side = -(-(length - overlap) // count) + overlap
    return min(tile, -(-side // multiple) * multiple)


def _ramp(overlap: int) -> np.ndarray:
    """Rising weights over an overlap: 0 for the outer quarter, raised cosine, 1 for the inner quarter."""
    margin = overlap // 4
    rise = overlap - 2 * margin
    ramp = np.ones(overlap, dtype=np.float64)
    ramp[:margin] = 0.0
    if rise > 0:
        x = (np.arange(rise) + 0.5) / rise
        ramp[margin:margin + rise] = 0.5 - 0.5 * np.cos(np.pi * x)
    return ramp


def _window(start: int, size: int, length: int, overlap: int) -> np.ndarray:
    """1D weights of one tile; ramps only on sides that face another tile."""
    w = np.ones(size, dtype=np.float64)
    if overlap <= 0:
        return w
    ramp = _ramp(overlap)
    if start > 0:
        w[:overlap] = np.minimum(w[:overlap], ramp)
    if start + size < length:
        w[size - overlap:] = np.minimum(w[size - overlap:], ramp[::-1])
    return w


def _pad_to(length: int) -> int:
    return -(-length // MULTIPLE) * MULTIPLE


def _pad_tiles(batch: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """Reflect-pad a (B, C, h, w) batch at the bottom/right to (B, C, ph, pw)."""
    h, w = batch.shape[-2:]
    if (h, w) == (ph, pw):
        return batch
    pad = ((0, 0), (0, 0), (0, ph - h), (0, pw - w))
    return np.pad(batch, pad, mode="reflect")  # numpy repeats a one-pixel side


def predict_tiled(image: Any, fn: Callable[[Any], Any], out_channels: int, tile: int = 512, overlap: int = 64,
                  batch: int = 4, out: Any = None,
                  progress: Callable[[int, int], None] | None = None) -> Any:
    """Run `fn` over `image` tile by tile and blend the results.

    Parameters
    ----------
    image
        (C, H, W) array-like (numpy, zarr, dask; a 2D (H, W) array is taken as one
        channel). Only row strips are read, via slicing.
    fn
        Maps a float32 torch tensor (B, C, th, tw) to a tensor (B, out_channels, th, tw),
        e.g. a model followed by a sigmoid. ``th`` and ``tw`` are multiples of 16
        (tiles are reflect-padded at the bottom/right and the output cropped back).
        Called under ``torch.no_grad()``.
    out_channels
        Number of output channels of `fn`.
    tile, overlap
        Tile side and the minimum overlap between neighbouring tiles
        (``0 <= overlap <= tile // 2``). Outputs within ``overlap // 4`` of an inner
        tile edge are ignored, so pick ``overlap >= 4 x`` the model's receptive-field
        radius for seamless results.
    batch
        Tiles per call of `fn`.
    out
        Preallocated writable array-like of shape (out_channels, H, W), e.g. a zarr
        array; by default a new float32 numpy array.
    progress
        Called as ``progress(done_tiles, total_tiles)`` after each batch.

    Returns
    -------
    `out` (or the new array) holding the blended float32 outputs.
    """
    import torch

    shape = tuple(getattr(image, "shape", ()))
    if len(shape) == 2:
        two_d = True
        channels, height, width = 1, shape[0], shape[1]
    elif len(shape) == 3:
        two_d = False
        channels, height, width = shape
    else:
        raise TowerError(f"image has shape {shape}; tiled prediction needs (C, H, W) or (H, W)")
    if height < 1 or width < 1 or channels < 1:
        raise TowerError(f"image has shape {shape}; it is empty")
    tile, overlap, batch, out_channels = int(tile), int(overlap), int(batch), int(out_channels)
    if tile < 16:
        raise TowerError(f"tile {tile} is invalid: use at least 16 pixels (a multiple of 16, e.g. 512)")
    if not 0 <= overlap <= tile // 2:
        raise TowerError(f"overlap {overlap} is invalid: use 0..{tile // 2} (at most half the tile {tile})")
    if batch < 1:
        raise TowerError(f"batch {batch} is invalid: use 1 or more tiles per batch")
    if out_channels < 1:
        raise TowerError(f"out_channels {out_channels} is invalid: use 1 or more")
    if out is None:
        out = np.zeros((out_channels, height, width), dtype=np.float32)
    elif tuple(getattr(out, "shape", ())) != (out_channels, height, width):
        raise TowerError(
            f"output array has shape {tuple(getattr(out, 'shape', ()))} but the prediction needs "
            f"{(out_channels, height, width)}; create it as (out_channels, H, W) of the image")

    th, tw = balanced_tile(height, tile, overlap), balanced_tile(width, tile, overlap)
    ys = tile_starts(height, th, overlap)
    xs = tile_starts(width, tw, overlap)
    ph, pw = _pad_to(th), _pad_to(tw)
    wx = [_window(x, tw, width, overlap) for x in xs]
    wy = [_window(y, th, height, overlap) for y in ys]
    # Separable window, same columns in every band: total weight = outer(sum_y, sum_x).
    sum_x = np.zeros(width)
    for x, w in zip(xs, wx):
        sum_x[x:x + tw] += w
    sum_y = np.zeros(height)
    for y, w in zip(ys, wy):
        sum_y[y:y + th] += w
    if not (np.all(sum_x > 0) and np.all(sum_y > 0)):  # pragma: no cover - guaranteed by the window design
        raise RuntimeError("internal error: tile weights do not cover the image")

    total = len(ys) * len(xs)
    done = 0
    # float32 is exact enough for a weighted mean of a few probabilities and halves the memory traffic.
    acc = np.zeros((out_channels, th, width), dtype=np.float32)  # rows [lo, lo + th)
    inv_sum_x = (1.0 / sum_x).astype(np.float32)
    inv_sum_y = (1.0 / sum_y).astype(np.float32)
    lo = 0

    def flush(upto: int) -> None:
        """Normalise and write rows [lo, upto), then shift the buffer."""
        nonlocal lo
        n = upto - lo
        if n <= 0:
            return
        norm = acc[:, :n]
        norm *= inv_sum_y[lo:upto, None]
        norm *= inv_sum_x[None, :]
        out[:, lo:upto, :] = norm
        acc[:, :th - n] = acc[:, n:]  # numpy handles the overlapping move
        acc[:, th - n:] = 0.0
        lo = upto

    with torch.no_grad():
        wx32 = [w.astype(np.float32) for w in wx]
        for y, wyy in zip(ys, wy):
            wyy32 = wyy.astype(np.float32)
            flush(y)
            strip = image[y:y + th, :] if two_d else image[:, y:y + th, :]
            strip = np.asarray(strip, dtype=np.float32)
            if two_d:
                strip = strip[None]
            for b0 in range(0, len(xs), batch):
                bxs = xs[b0:b0 + batch]
                tiles = np.stack([strip[:, :, x:x + tw] for x in bxs])
                tiles = _pad_tiles(tiles, ph, pw)
                result = fn(torch.from_numpy(np.ascontiguousarray(tiles)))
                if not isinstance(result, torch.Tensor):
                    result = torch.as_tensor(np.asarray(result))
                expected = (len(bxs), out_channels, ph, pw)
                if tuple(result.shape) != expected:
                    raise TowerError(
                        f"the model returned shape {tuple(result.shape)} for tiles of shape {tuple(tiles.shape)} "
                        f"(expected {expected}); check that out_channels={out_channels} matches the model's head")
                res = result.detach().to("cpu", torch.float32).numpy()[:, :, :th, :tw]
                for k, x in enumerate(bxs):
                    weighted = res[k] * wyy32[:, None]
                    weighted *= wx32[b0 + k][None, :]
                    acc[:, :, x:x + tw] += weighted
                done += len(bxs)
                if progress is not None:
                    progress(done, total)
    flush(height)
    return out

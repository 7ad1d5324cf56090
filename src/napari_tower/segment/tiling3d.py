"""Tiled prediction of volumes with a 3D network, blended along z, y and x (issue 17).

The 3D counterpart of `tiling.predict_tiled`. A (Z, C, Y, X) volume is cut
into overlapping (tz, ty, tx) tiles, the last along each axis flush with the
volume's end, and every tile side is a multiple of the network's per-axis
multiple (`UNet.multiples`: an anisotropic U-Net pools z less, so z tiles may
be thinner). The blending window is the outer product of the same 1D
raised-cosine ramps as in 2D (`tiling._window`), one per axis: a tile's outer
quarter of every overlap it shares with a neighbour never counts, and the
ramps of neighbours sum to 1, so a network whose receptive-field radius along
an axis is at most ``overlap // 4`` there gives the same output tiled as
untiled.

Weighted outputs accumulate straight into the output array, so memory beyond
the output is one batch of tiles (input, network activations and output),
whatever the volume's size; the weight sum is separable and is never stored
as a volume (three 1D sums), and each z plane is normalised at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import product
from typing import Any

import numpy as np

from ..errors import TowerError
from .tiling import _window, balanced_tile, tile_starts

# Defaults for a 3D network when the config gives a 2D tile: a 3D U-Net's activations grow with the cube
# of the side, so tiles stay far smaller than 2D ones (32 x 256 x 256 at base 16 is ~0.5 GB of activations).
TILE_Z = 32
MAX_TILE_YX = 256

Triple = tuple[int, int, int]


def _triple(value: int | Sequence[int], name: str) -> Triple:
    if isinstance(value, (int, np.integer)):
        return (int(value),) * 3
    out = tuple(int(v) for v in value)
    if len(out) != 3:
        raise TowerError(f"{name} {tuple(value)} is invalid: give one value or three (z, y, x)")
    return out  # type: ignore[return-value]


def tiling_3d(tile: int, overlap: int, multiples: Sequence[int]) -> tuple[Triple, Triple]:
    """3D (tile, overlap) per axis from a 2D config's `tile` and `overlap` and the network's `multiples`.

    y and x take the 2D tile (at most `MAX_TILE_YX`) and overlap; z takes `TILE_Z` slices and an overlap
    scaled by how much less the network pools z than y (an anisotropic network's receptive field holds
    fewer slices), each rounded to the network's multiples and the overlap to at most half a tile.
    """
    mz, my, mx = (int(m) for m in multiples)
    side = max(my, mx, min(int(tile), MAX_TILE_YX) // max(my, mx) * max(my, mx))
    tz = -(-TILE_Z // mz) * mz
    oyx = min(int(overlap), side // 2)
    oz = min(round(oyx * mz / my), tz // 2)
    return (tz, side, side), (oz, oyx, oyx)


def _axis_plan(length: int, tile: int, overlap: int, multiple: int) -> tuple[int, list[int], list[np.ndarray], int]:
    """Along one axis: the tile side, tile starts, each tile's weights, and the padded side the network gets."""
    side = balanced_tile(length, tile, overlap, multiple)
    starts = tile_starts(length, side, overlap)
    windows = [_window(s, side, length, overlap).astype(np.float32) for s in starts]
    return side, starts, windows, -(-side // multiple) * multiple


def _pad_to(tiles: np.ndarray, padded: Sequence[int]) -> np.ndarray:
    """Reflect-pad a (B, C, z, y, x) batch at the far end of each spatial axis to `padded`."""
    pads = [(0, 0), (0, 0)] + [(0, p - s) for s, p in zip(tiles.shape[2:], padded)]
    if all(after == 0 for _, after in pads):
        return tiles
    return np.pad(tiles, pads, mode="reflect")  # numpy reflects repeatedly when the pad exceeds the side


def predict_tiled_3d(volume: Any, fn: Callable[[Any], Any], out_channels: int,
                     tile: int | Sequence[int] = (TILE_Z, 128, 128), overlap: int | Sequence[int] = (8, 32, 32),
                     multiples: int | Sequence[int] = 16, batch: int = 1, out: Any = None,
                     progress: Callable[[int, int], None] | None = None) -> Any:
    """Run `fn` over `volume` tile by tile in 3D and blend the results.

    Parameters
    ----------
    volume
        (Z, C, Y, X) array-like (numpy, zarr, dask, an `Image.volume`); a (Z, Y, X) array is one channel.
        Only tiles are read, by slicing.
    fn
        Maps a float32 torch tensor (B, C, tz, ty, tx) to (B, out_channels, tz, ty, tx); the sides it gets
        are multiples of `multiples` (tiles are reflect-padded at the far end and outputs cropped back).
        Called under ``torch.no_grad()``.
    out_channels
        Output channels of `fn`.
    tile, overlap
        Tile side and minimum overlap between neighbouring tiles, per axis (z, y, x) or one for all.
        Sides are rounded down to multiples of `multiples`; ``0 <= overlap <= tile // 2``. Outputs within
        ``overlap // 4`` of an inner tile face are ignored: pick ``overlap >= 4 x`` the receptive-field
        radius along each axis for seamless results.
    multiples
        The network's per-axis size multiples (`UNet.multiples`).
    batch
        Tiles per call of `fn`.
    out
        Preallocated writable (Z, out_channels, Y, X) array (numpy; it is accumulated into); by default
        a new float32 array.
    progress
        ``progress(done_tiles, total_tiles)`` after each batch.

    Returns
    -------
    `out` (or the new array) holding the blended float32 outputs, (Z, out_channels, Y, X).
    """
    import torch

    shape = tuple(getattr(volume, "shape", ()))
    if len(shape) == 3:
        one_channel, (depth, channels, height, width) = True, (shape[0], 1, shape[1], shape[2])
    elif len(shape) == 4:
        one_channel, (depth, channels, height, width) = False, shape
    else:
        raise TowerError(f"volume has shape {shape}; 3D tiled prediction needs (Z, C, Y, X) or (Z, Y, X)")
    if min(depth, channels, height, width) < 1:
        raise TowerError(f"volume has shape {shape}; it is empty")
    mults = _triple(multiples, "multiples")
    tiles3 = tuple(max(m, t // m * m) for t, m in zip(_triple(tile, "tile"), mults))
    overlaps = _triple(overlap, "overlap")
    for axis, t, o in zip("zyx", tiles3, overlaps):
        if not 0 <= o <= t // 2:
            raise TowerError(f"overlap {o} along {axis} is invalid: use 0..{t // 2} (at most half the tile {t})")
    if int(batch) < 1 or int(out_channels) < 1:
        raise TowerError(f"batch {batch} and out_channels {out_channels} must both be 1 or more")
    out_shape = (depth, int(out_channels), height, width)
    if out is None:
        out = np.zeros(out_shape, dtype=np.float32)
    elif tuple(getattr(out, "shape", ())) != out_shape:
        raise TowerError(f"output array has shape {tuple(getattr(out, 'shape', ()))} but the prediction needs "
                         f"{out_shape}; create it as (Z, out_channels, Y, X) of the volume")
    else:
        out[...] = 0.0

    plans = [_axis_plan(n, t, o, m) for n, t, o, m in zip((depth, height, width), tiles3, overlaps, mults)]
    (tz, zs, wz, pz), (ty, ys, wy, py), (tx, xs, wx, px) = plans
    sums = []
    for length, (side, starts, windows, _) in zip((depth, height, width), plans):
        total_weight = np.zeros(length, np.float64)
        for s, w in zip(starts, windows):
            total_weight[s:s + side] += w
        if not np.all(total_weight > 0):  # pragma: no cover - guaranteed by the window design
            raise RuntimeError("internal error: tile weights do not cover the volume")
        sums.append((1.0 / total_weight).astype(np.float32))

    grid = list(product(range(len(zs)), range(len(ys)), range(len(xs))))
    done = 0
    with torch.no_grad():
        for b0 in range(0, len(grid), int(batch)):
            chunk = grid[b0:b0 + int(batch)]
            reads = []
            for i, j, k in chunk:
                z, y, x = zs[i], ys[j], xs[k]
                part = np.asarray(volume[z:z + tz, y:y + ty, x:x + tx] if one_channel
                                  else volume[z:z + tz, :, y:y + ty, x:x + tx], dtype=np.float32)
                reads.append(part[None] if one_channel else part.transpose(1, 0, 2, 3))  # (C, tz, ty, tx)
            tiles = _pad_to(np.stack(reads), (pz, py, px))
            result = fn(torch.from_numpy(np.ascontiguousarray(tiles)))
            if not isinstance(result, torch.Tensor):
                result = torch.as_tensor(np.asarray(result))
            expected = (len(chunk), int(out_channels), pz, py, px)
            if tuple(result.shape) != expected:
                raise TowerError(
                    f"the model returned shape {tuple(result.shape)} for tiles of shape {tuple(tiles.shape)} "
                    f"(expected {expected}); check that out_channels={out_channels} matches the model's head")
            res = result.detach().to("cpu", torch.float32).numpy()[:, :, :tz, :ty, :tx]
            for n, (i, j, k) in enumerate(chunk):
                weight = wz[i][:, None, None] * wy[j][None, :, None] * wx[k][None, None, :]
                weighted = res[n] * weight  # (K, tz, ty, tx)
                z, y, x = zs[i], ys[j], xs[k]
                out[z:z + tz, :, y:y + ty, x:x + tx] += weighted.transpose(1, 0, 2, 3)
            done += len(chunk)
            if progress is not None:
                progress(done, len(grid))
    inv_z, inv_y, inv_x = sums
    plane_weight = inv_y[:, None] * inv_x[None, :]
    for z in range(depth):  # plane by plane: no volume-sized temporary
        out[z] *= plane_weight * inv_z[z]
    return out


__all__ = ["MAX_TILE_YX", "TILE_Z", "predict_tiled_3d", "tiling_3d"]

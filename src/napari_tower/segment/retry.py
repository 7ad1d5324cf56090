"""Tiled prediction that survives running out of memory.

A batch of tiles that does not fit on the device is retried with half the
batch, then with smaller tiles, and the sizes that fit are kept for the next
plane. Only when a single tile of the smallest size still does not fit does
the user get a `TowerError` that says what to change.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import Any

from ..config import PredictConfig
from ..errors import TowerError
from .tiling import predict_tiled, tile_starts

log = logging.getLogger(__name__)

MIN_TILE = 64  # below this, tiles are mostly overlap and padding: better to say so than to crawl

# Messages of allocation failures that torch raises as plain RuntimeError (CPU allocator, older CUDA/MPS builds).
_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "failed to allocate")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is an allocation failure (numpy/Python, CUDA, MPS or the CPU allocator)."""
    if isinstance(exc, MemoryError):
        return True
    import torch

    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc).lower() for text in _OOM_TEXT)


def _release_cached_memory() -> None:
    """Hand the failed attempt's blocks back before retrying smaller."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        mps.empty_cache()


def smaller(tile: int, batch: int, overlap: int, height: int, width: int) -> tuple[int, int] | None:
    """The next (tile, batch) to try after running out of memory, or None when nothing smaller is sensible.

    Halving the batch changes nothing in the result, so it comes first, unless a
    row of the image holds a single tile (a batch never spans rows). Halving the
    tile keeps the overlap (so seams stay hidden) and a multiple of 16, and stops
    at `MIN_TILE` or twice the overlap, whichever is larger. A tile larger than
    the image is first cut to the image, since only that much is used.
    """
    tile = min(tile, -(-max(height, width) // 16) * 16)
    per_row = len(tile_starts(width, min(tile, width), overlap))
    if min(batch, per_row) > 1:
        return tile, min(batch, per_row) // 2
    floor = max(MIN_TILE, 2 * overlap)
    half = max(floor, (tile // 2) // 16 * 16)
    return (half, 1) if half < tile else None


def predict_tiled_within_memory(image: Any, fn: Callable[[Any], Any], out_channels: int, cfg: PredictConfig,
                                out: Any = None, progress: Callable[[int, int], None] | None = None,
                                notify: Callable[[str], None] | None = None) -> Any:
    """`predict_tiled` with `cfg.tile` and `cfg.batch`, shrinking them while the device runs out of memory.

    What fits is written back into `cfg.tile` and `cfg.batch`, so the next call
    (the next plane) starts there instead of failing again. `notify` gets a
    one-line note for each retry (default: a logged warning).
    """
    notify = notify or log.warning
    tile, batch = cfg.tile, cfg.batch
    height, width = (int(n) for n in tuple(image.shape)[-2:])
    while True:
        try:
            result = predict_tiled(image, fn, out_channels, tile=tile, overlap=cfg.overlap, batch=batch, out=out,
                                   progress=progress)
        except Exception as exc:  # noqa: BLE001 - only allocation failures are retried; the rest re-raise
            if not is_out_of_memory(exc):
                raise
        else:
            cfg.tile, cfg.batch = tile, batch
            return result
        # Outside the except block the failed attempt's frames (and their tensors) are already released.
        _release_cached_memory()
        nxt = smaller(tile, batch, cfg.overlap, height, width)
        # What the attempt really used: tiles no larger than the image, batches no longer than a row of tiles.
        shown = min(tile, max(height, width))
        batch = min(batch, len(tile_starts(width, min(tile, width), cfg.overlap)))
        if nxt is None:
            raise TowerError(
                f"out of memory even for one {shown} px tile at a time: use a smaller model, "
                "free memory on the device (close other programs), or predict on the CPU (device cpu)"
            )
        notify(f"out of memory with {batch} tile(s) of {shown} px at a time: retrying with {nxt[1]} of {nxt[0]} px")
        tile, batch = nxt

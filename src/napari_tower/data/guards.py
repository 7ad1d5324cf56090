"""Refusing image files whose declared size cannot be true, before anything is allocated.

A TIFF states its width, height, planes and data type in a few header bytes; a damaged or
hostile file (a "decompression bomb") can declare terabytes in a file of kilobytes. Read as
declared, it would allocate that much (or decode one enormous strip) and take the machine down.
`check_tiff_series` compares the declaration with the file: uncompressed data must fit in the
file, compressed data cannot decode to more than any TIFF codec achieves on real images, and no
single strip or tile may need more memory than the machine has. Big images that are real pass:
they are read lazily, tile by tile (`io._read_tiff`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TowerError

# Decoded bytes per stored byte beyond which compressed pixel data cannot be real. Deflate peaks near
# 1032:1 and LZW near 1400:1 on constant images; a margin for the odd all-zero image of another codec.
MAX_COMPRESSION_RATIO = 5_000
# Below this, a declaration is too small to hurt: the ratio check is not applied.
SMALL_BYTES = 64 * 2**20


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def available_memory() -> int:
    """Bytes of memory this process may still allocate (physical memory when psutil is missing)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is a dependency of napari
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_tiff_series(path: Path, series: Any) -> None:
    """Refuse a TIFF series whose declared size the file cannot hold, or that would not fit in memory."""
    shape = tuple(int(s) for s in series.shape)
    itemsize = np.dtype(series.dtype).itemsize
    declared = float(np.prod([float(s) for s in shape])) * itemsize
    if declared == 0:
        return  # an empty image: `io.check_array` says so in its own words
    stored = path.stat().st_size
    page = series.keyframe if getattr(series, "keyframe", None) is not None else series.pages[0]
    what = f"{path} declares an image of {' x '.join(map(str, shape))} {np.dtype(series.dtype).name}"
    compression = int(getattr(page, "compression", 1) or 1)
    if compression == 1 and declared > stored:
        raise TowerError(f"{what} ({_size(declared)}) but the file holds only {_size(stored)}: it is truncated "
                         "or its header is wrong; export the image again")
    if compression != 1 and declared > SMALL_BYTES and declared > MAX_COMPRESSION_RATIO * stored:
        raise TowerError(f"{what} ({_size(declared)}) in a file of {_size(stored)}, more than any real compressed "
                         "image decodes to (a damaged header or a decompression bomb): it was not read; "
                         "export the image again")
    try:
        offsets, chunked, contiguous = page.dataoffsets, page.chunked, page.is_contiguous
        chunk = page.chunks
    except Exception:  # noqa: BLE001 - tags too damaged to lay out strips: the reader reports the file
        return
    if offsets is not None and chunked and not contiguous:
        needed = int(np.prod([int(c) for c in chunked]))
        if len(offsets) < needed:
            raise TowerError(f"{what}, which needs {needed} strips or tiles per page, but the file lists "
                             f"{len(offsets)}: its header is damaged; export the image again")
    if chunk:
        piece = float(np.prod([float(c) for c in chunk])) * itemsize
        if piece > available_memory() / 2:
            raise TowerError(f"{what} stored in pieces of {_size(piece)} each, more than half the free memory "
                             f"({_size(available_memory())}): save it tiled (e.g. 512 x 512 tiles) or as zarr")


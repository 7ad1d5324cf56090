"""Hostile and unusual image files: each reads correctly or gives one clear error, never a traceback or a hang.

Files are generated (hypothesis and seeded mutations) and read by the readers the CLI and the
core use (`read_image`, `read_labels`), in a separate process with a time limit per file, so a
hang or a crash of the interpreter counts as a failure instead of stopping the suite. A
file either reads, and then its pixels are read whole and must equal what was written where
the file is valid, or it raises a `TowerError`: one line naming the file. Anything else
(another exception, a hang, a killed worker) fails the test with the file kept for inspection.

Default suite: a sample of each kind; slow suite: more than 1,000 generated files.
"""

from __future__ import annotations

import multiprocessing
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_tower.data import read_image, read_labels
from napari_tower.errors import TowerError

TIME_LIMIT_S = 20.0  # per file, generous for a shared 2-core machine; real reads take milliseconds
FAST, SLOW = 6, 120  # hypothesis examples per property (12 properties: > 1,000 files in the slow suite)


def _verdict(path: str, labels: bool) -> tuple[str, object]:
    """In the worker: ("ok", (shape, data)), ("error", message) or ("crash", traceback text)."""
    import traceback

    try:
        if labels:
            data = read_labels(path)
        else:
            image = read_image(path)
            data = np.asarray(image.data)
        return "ok", data
    except TowerError as exc:
        return "error", str(exc)
    except BaseException:  # noqa: BLE001 - what the test must never see
        return "crash", traceback.format_exc()


class Reader:
    """One worker process that reads files, restarted after a hang or a crash."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("fork")  # the readers need no torch: forking is safe and fast
        self.pool = self.ctx.Pool(1)
        self.count = 0

    def read(self, path: Path, labels: bool = False) -> tuple[str, object]:
        self.count += 1
        job = self.pool.apply_async(_verdict, (str(path), labels))
        try:
            return job.get(timeout=TIME_LIMIT_S)
        except multiprocessing.TimeoutError:
            self.restart()
            return "hang", f"no answer within {TIME_LIMIT_S} s"
        except Exception as exc:  # noqa: BLE001 - the worker died (e.g. a segfault in a decoder)
            self.restart()
            return "crash", f"the reading process died: {exc!r}"

    def restart(self) -> None:
        self.pool.terminate()
        self.pool = self.ctx.Pool(1)

    def close(self) -> None:
        self.pool.terminate()


@pytest.fixture(scope="module")
def reader():
    r = Reader()
    yield r
    r.close()
    print(f"\nhostile and unusual files read: {r.count}")


@pytest.fixture(params=[pytest.param(FAST, id="sample"), pytest.param(SLOW, id="many", marks=pytest.mark.slow)])
def examples(request) -> int:
    """Hypothesis examples per property: a sample in the default suite, many in the slow one."""
    return request.param


def assert_clear(verdict: tuple[str, object], path: Path) -> None:
    """A hostile file: read (any content) or one clear error line naming it."""
    kind, value = verdict
    assert kind in ("ok", "error"), f"{path.name}: {kind}\n{value}"
    if kind == "error":
        assert "\n" not in value and path.name in value and "Traceback" not in value, value


def assert_reads(verdict: tuple[str, object], path: Path, expected: np.ndarray) -> None:
    kind, value = verdict
    assert kind == "ok", f"{path.name} should read: {kind} {value}"
    np.testing.assert_array_equal(value, expected)


def _hypothesis(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------------ damaged files


def _valid_tiff(path: Path, rng: np.random.Generator, compression: str | None) -> bytes:
    data = rng.integers(0, 4000, (int(rng.integers(1, 4)), 40, 56), dtype=np.uint16)
    tifffile.imwrite(path, data, compression=compression, rowsperstrip=8)
    return path.read_bytes()


COMPRESSIONS = [None, "zlib", "lzw", "packbits"]


def _truncated(tmp: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path = tmp / f"truncated-{seed}.tif"
    raw = _valid_tiff(path, rng, COMPRESSIONS[seed % len(COMPRESSIONS)])
    path.write_bytes(raw[: int(rng.integers(0, len(raw)))])
    return path


def _mutated(tmp: Path, seed: int) -> Path:
    """Wrong tags and values: random bytes of the header, the IFDs and the data overwritten."""
    rng = np.random.default_rng(seed)
    path = tmp / f"mutated-{seed}.tif"
    raw = bytearray(_valid_tiff(path, rng, COMPRESSIONS[seed % len(COMPRESSIONS)]))
    ifd = struct.unpack("<I", raw[4:8])[0]
    for _ in range(int(rng.integers(1, 8))):
        # Mostly the first IFD's entries (tags, types, counts, offsets), sometimes anywhere.
        at = int(rng.integers(ifd, min(len(raw), ifd + 2 + 12 * 20))) if rng.random() < 0.8 else \
            int(rng.integers(0, len(raw)))
        raw[at] = int(rng.integers(0, 256))
    path.write_bytes(bytes(raw))
    return path


def test_truncated_tiffs(tmp_path, reader, examples):
    @_hypothesis(examples * 2)
    @given(seed=st.integers(0, 2**31 - 1))
    def check(seed):
        path = _truncated(tmp_path, seed)
        assert_clear(reader.read(path), path)
        assert_clear(reader.read(path, labels=True), path)

    check()


def test_tiffs_with_wrong_tags(tmp_path, reader, examples):
    @_hypothesis(examples * 3)
    @given(seed=st.integers(0, 2**31 - 1))
    def check(seed):
        path = _mutated(tmp_path, seed)
        assert_clear(reader.read(path), path)

    check()


def test_random_bytes_under_every_image_suffix(tmp_path, reader, examples):
    @_hypothesis(examples)
    @given(raw=st.binary(max_size=2048), suffix=st.sampled_from([".tif", ".png", ".jpg", ".npy"]))
    def check(raw, suffix):
        path = tmp_path / f"random{suffix}"
        path.write_bytes(raw)
        assert_clear(reader.read(path), path)

    check()


# ------------------------------------------------------------------------------------------------ decompression bombs


def _patch_dimensions(path: Path, width: int, height: int, rows_per_strip: int | None = None) -> None:
    """Overwrite ImageWidth/ImageLength (and RowsPerStrip) in every page's header, leaving the data as it was."""
    raw = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        for page in tif.pages:
            for name, value in (("ImageWidth", width), ("ImageLength", height), ("RowsPerStrip", rows_per_strip)):
                tag = page.tags.get(name)
                if tag is None or value is None:
                    continue
                # Entries of type SHORT become LONG so large values fit: type at entry offset + 2.
                struct.pack_into("<HII", raw, tag.offset + 2, 4, 1, value)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("rows", [None, "one strip"])
def test_decompression_bomb_is_refused_before_any_allocation(tmp_path, compression, rows):
    path = tmp_path / "bomb.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint16), compression=compression, rowsperstrip=64)
    side = 200_000  # 200,000 x 200,000 x 2 bytes = 80 GB declared in a file of a few hundred bytes
    _patch_dimensions(path, side, side, side if rows else None)
    tracemalloc.start()
    try:
        with pytest.raises(TowerError) as info:
            read_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "bomb.tif declares an image of 200000 x 200000 uint16" in message and "\n" not in message
    assert peak < 32 * 2**20, f"{peak / 2**20:.0f} MB allocated before refusing"


def test_a_strip_larger_than_free_memory_is_refused(tmp_path, monkeypatch):
    from napari_tower.data import guards

    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.ones((1024, 1024), np.uint16), compression="zlib", rowsperstrip=1024)
    monkeypatch.setattr(guards, "available_memory", lambda: 2**20)  # a machine with 1 MB free
    with pytest.raises(TowerError, match=r"big.tif declares an image of 1024 x 1024 uint16 stored in pieces of "
                                         r"2.0 MB each, more than half the free memory \(1.0 MB\)"):
        read_image(path)


def _png(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares width x height over a tiny, valid zlib stream."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_png_decompression_bomb_is_one_clear_line(tmp_path, reader):
    path = tmp_path / "bomb.png"
    _png(path, 100_000, 100_000)
    kind, message = reader.read(path)
    assert kind == "error" and "bomb.png" in message and "decompression bomb" in message, message


# ------------------------------------------------------------------------------------------------ unusual valid files


def test_imagej_5d_hyperstacks_read_in_order(tmp_path, reader, examples):
    @_hypothesis(examples)
    @given(t=st.integers(1, 3), z=st.integers(1, 3), c=st.integers(1, 3), y=st.integers(16, 40),
           x=st.integers(16, 40), dtype=st.sampled_from(["uint8", "uint16", "float32"]))
    def check(t, z, c, y, x, dtype):
        data = np.random.default_rng(t * 100 + z * 10 + c).integers(0, 200, (t, z, c, y, x)).astype(dtype)
        path = tmp_path / "hyper.tif"
        tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZCYX"})
        # Planes are T x Z in order; channels stay channels.
        assert_reads(reader.read(path), path, data.reshape(t * z, c, y, x))

    check()


AXES = ["ZCYX", "CZYX", "TCYX", "CTYX", "TZYX", "ZTCYX", "CZTYX", "TCZYX"]


def test_ome_tiffs_with_unusual_axis_orders(tmp_path, reader, examples):
    @_hypothesis(examples)
    @given(axes=st.sampled_from(AXES), sizes=st.lists(st.integers(1, 3), min_size=3, max_size=3))
    def check(axes, sizes):
        lead = {a: s for a, s in zip("TZC", sizes)}
        shape = tuple(lead.get(a, 24) for a in axes)
        data = np.arange(int(np.prod(shape)), dtype=np.uint16).reshape(shape)
        path = tmp_path / "ome.ome.tif"
        tifffile.imwrite(path, data, ome=True, metadata={"axes": axes})
        # Expected: plane axes (T, Z in file order) first, then C, then Y, X, as to_pcyx folds them.
        order = [axes.index(a) for a in axes if a in "TZ"] + [axes.index(a) for a in axes if a == "C"] + \
            [axes.index("Y"), axes.index("X")]
        moved = np.transpose(data, order)
        n_planes = int(np.prod([data.shape[axes.index(a)] for a in axes if a in "TZ"]))
        c = data.shape[axes.index("C")] if "C" in axes else 1
        assert_reads(reader.read(path), path, moved.reshape(n_planes, c, 24, 24))

    check()


def test_big_endian_tiffs(tmp_path, reader, examples):
    @_hypothesis(examples)
    @given(dtype=st.sampled_from([">u2", ">i2", ">u4", ">i4", ">f4", ">f8"]), planes=st.integers(1, 3),
           compression=st.sampled_from([None, "zlib"]), y=st.integers(8, 40), x=st.integers(8, 40))
    def check(dtype, planes, compression, y, x):
        data = (np.random.default_rng(planes).random((planes, y, x)) * 1000).astype(dtype)
        path = tmp_path / "big-endian.tif"
        tifffile.imwrite(path, data, byteorder=">", compression=compression, photometric="minisblack")
        assert_reads(reader.read(path), path, data[:, None].astype(dtype.replace(">", "=")))
        if dtype[1] == "u":  # the same file as labels
            assert_reads(reader.read(path, labels=True), path, data.astype(np.int64))

    check()


def test_float64_with_nan_and_inf_reads_as_written(tmp_path, reader, examples):
    @_hypothesis(examples)
    @given(values=st.lists(st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1.5, -2.0, 1e300]), min_size=16,
                           max_size=16))
    def check(values):
        data = np.array(values * 36, np.float64).reshape(24, 24)
        path = tmp_path / "float64.tif"
        tifffile.imwrite(path, data)
        kind, got = reader.read(path)
        assert kind == "ok", got
        np.testing.assert_array_equal(got[0, 0], data)  # NaN == NaN here: assert_array_equal treats them so

    check()


def test_float64_nan_is_refused_by_training_with_a_clear_line(tmp_path):
    from napari_tower.data.normalise import compute_normalisation

    data = np.ones((32, 32), np.float64)
    data[3, 4] = np.nan
    path = tmp_path / "nan64.tif"
    tifffile.imwrite(path, data)
    with pytest.raises(TowerError, match="NaN or infinite"):
        compute_normalisation(read_image(path).data, "nan64.tif")


def test_int64_labels_with_huge_ids(tmp_path, reader, examples):
    @_hypothesis(examples)
    @given(ids=st.lists(st.integers(1, 2**63 - 1), min_size=1, max_size=5, unique=True))
    def check(ids):
        labels = np.zeros((32, 32), np.int64)
        for k, i in enumerate(ids):
            labels[k * 6: k * 6 + 5, 2:20] = i
        path = tmp_path / "labels64.tif"
        tifffile.imwrite(path, labels)
        assert_reads(reader.read(path, labels=True), path, labels[None])

    check()


def test_uint64_label_ids_beyond_int64_are_refused_clearly(tmp_path, reader):
    labels = np.zeros((16, 16), np.uint64)
    labels[2:5, 2:5] = 2**64 - 1
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, labels)
    kind, message = reader.read(path, labels=True)
    assert kind == "error" and "beyond 2^63 - 1" in message and "relabel" in message, message


def test_zarr_with_odd_chunking(tmp_path, reader, examples):
    import zarr

    @_hypothesis(examples)
    @given(shape=st.tuples(st.integers(1, 4), st.integers(8, 50), st.integers(8, 50)),
           chunks=st.tuples(st.integers(1, 5), st.integers(1, 60), st.integers(1, 60)))
    def check(shape, chunks):
        data = np.arange(int(np.prod(shape)), dtype=np.uint16).reshape(shape)
        path = tmp_path / "odd.zarr"
        z = zarr.open_array(str(path), mode="w", shape=shape, chunks=chunks, dtype=data.dtype)
        z[:] = data
        assert_reads(reader.read(path), path, data[:, None])

    check()


def test_stacks_with_empty_planes(tmp_path, reader, examples):
    @_hypothesis(examples)
    @given(empty=st.lists(st.booleans(), min_size=2, max_size=6), compression=st.sampled_from([None, "zlib"]))
    def check(empty, compression):
        data = np.stack([np.zeros((24, 24), np.uint16) if e else np.full((24, 24), k + 1, np.uint16)
                         for k, e in enumerate(empty)])
        path = tmp_path / "empty-planes.tif"
        tifffile.imwrite(path, data, compression=compression, photometric="minisblack")
        assert_reads(reader.read(path), path, data[:, None])

    check()

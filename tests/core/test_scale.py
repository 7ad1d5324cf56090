"""Out-of-core data and block-wise prediction (issue 6): lazy zarr/OME-Zarr/TIFF/dask, blocks with seams."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_tower.cli import main
from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig, PredictConfig, PretrainConfig
from napari_tower.data import PatchSampler, Source, compute_normalisation, from_array, read_image
from napari_tower.data.lazy import AxesView
from napari_tower.errors import TowerError
from napari_tower.samples import synthetic_nuclei
from napari_tower.segment import Predictor, finetune
from napari_tower.segment.blockwise import block_grid, predict_blockwise
from napari_tower.segment.metrics import dice, object_scores
from napari_tower.train import pretrain


class CountingArray:
    """A disk-like array (no transpose/reshape): counts the elements each read returns."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.ndim, self.size = data, data.shape, data.dtype, data.ndim, data.size
        self.reads: list[int] = []

    def __getitem__(self, key):  # noqa: ANN001
        out = self.data[key]
        self.reads.append(int(np.size(out)))
        return out


def _zarr_array(path, data, chunks, zarr_format=3):
    z = zarr.open_array(str(path), mode="w", shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=zarr_format)
    z[:] = data
    return z


# --- lazy data ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_is_opened_lazily_in_any_axis_order(tmp_path, zarr_format):
    data = np.arange(2 * 3 * 40 * 50, dtype=np.uint16).reshape(2, 40, 50, 3)  # ZYXC
    _zarr_array(tmp_path / "a.zarr", data, (1, 16, 16, 3), zarr_format)
    image = read_image(tmp_path / "a.zarr", axes="ZYXC")
    assert isinstance(image.data, AxesView) and image.shape == (2, 3, 40, 50)
    np.testing.assert_array_equal(image.data[1, :, 5:20, 7:9], np.moveaxis(data[1, 5:20, 7:9], -1, 0))
    np.testing.assert_array_equal(image.data[0, 2], data[0, ..., 2])
    np.testing.assert_array_equal(np.asarray(image.data), np.moveaxis(data, -1, 1))
    subset = image.select_planes([1])
    assert isinstance(subset.data, AxesView) and subset.shape == (1, 3, 40, 50)
    np.testing.assert_array_equal(subset.data[0, 1, :4, :4], data[1, :4, :4, 1])


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_multiscale_levels_and_axes(tmp_path, zarr_format):
    full = (np.random.default_rng(0).random((2, 3, 64, 96)) * 1000).astype(np.uint16)  # CZYX
    root = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w", zarr_format=zarr_format)
    for level, step in enumerate((1, 2)):
        root.create_array(str(level), data=full[:, :, ::step, ::step], chunks=(1, 1, 32, 32))
    axes = [{"name": "c", "type": "channel"}, {"name": "z", "type": "space"},
            {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    multiscales = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0"}, {"path": "1"}]}]
    if zarr_format == 2:
        root.attrs["multiscales"] = multiscales
    else:
        root.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    level0, level1 = read_image(tmp_path / "ome.zarr"), read_image(tmp_path / "ome.zarr", level=1)
    assert level0.axes == "CZYX" and level0.shape == (3, 2, 64, 96)  # 3 z-planes of 2 channels
    assert level1.shape == (3, 2, 32, 48)
    np.testing.assert_array_equal(level1.data[2, 1], full[1, 2, ::2, ::2])
    with pytest.raises(TowerError, match="2 resolution level"):
        read_image(tmp_path / "ome.zarr", level=2)


def test_tiff_memory_mapped_or_decoded_lazily(tmp_path, monkeypatch):
    from napari_tower.data import io

    data = (np.random.default_rng(1).random((3, 96, 80)) * 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "plain.tif", data, photometric="minisblack")
    plain = read_image(tmp_path / "plain.tif")
    assert isinstance(plain.data, AxesView) and isinstance(plain.data.base, np.memmap)
    np.testing.assert_array_equal(plain.data[2, 0, 10:20, 30:40], data[2, 10:20, 30:40])
    tifffile.imwrite(tmp_path / "tiled.tif", data, photometric="minisblack", compression="zlib", tile=(32, 32))
    monkeypatch.setattr(io, "EAGER_TIFF_BYTES", 1024)  # pretend the compressed file is huge
    tiled = read_image(tmp_path / "tiled.tif")
    assert isinstance(tiled.data, AxesView) and not isinstance(tiled.data.base, np.ndarray)
    np.testing.assert_array_equal(tiled.data[1, 0, 40:90, 3:70], data[1, 40:90, 3:70])


def test_sampling_and_normalisation_read_only_patches(monkeypatch):
    """A 'huge' on-disk stack: normalisation samples windows, the prior scores at most 64 planes, patches read patches."""
    from napari_tower.data import normalise

    rng = np.random.default_rng(2)
    base = CountingArray((rng.random((100, 512, 512)) * 1000).astype(np.uint16))
    image = from_array(base, "stack", axes="ZYX")
    monkeypatch.setattr(normalise, "_MAX_STRIDED_READ", 2**20)  # as if the stack were far larger than memory
    norm = compute_normalisation(image.data, "stack")
    norm_reads, base.reads = base.reads, []
    assert len(norm_reads) > 0 and max(norm_reads) <= 256 * 256 and sum(norm_reads) < 0.2 * base.size
    sampler = PatchSampler([Source(image, norm)], 64, structure_prior=True)
    assert len(sampler.scored) == 64 and len(base.reads) == 64
    base.reads = []
    batch = sampler.sample(8, np.random.default_rng(0))
    assert batch["image"].shape == (8, 1, 64, 64) and len(base.reads) == 8 and max(base.reads) == 64 * 64


def test_dask_array_is_never_computed_whole():
    """A dask stack far larger than memory (virtually 3.4 GB): pretraining reads only the chunks it samples."""
    da = pytest.importorskip("dask.array")
    computed = []

    def make(block_info=None):  # noqa: ANN001
        computed.append(block_info[None]["chunk-location"])
        rng = np.random.default_rng(abs(hash(block_info[None]["chunk-location"])) % 2**32)
        return (rng.random(block_info[None]["chunk-shape"]) * 1000).astype(np.float32)

    shape, chunks = (200, 2048, 2048), (1, 512, 512)
    stack = da.map_blocks(make, dtype=np.float32, chunks=tuple((c,) * (s // c) for s, c in zip(shape, chunks)))
    image = from_array(stack, "dask layer", axes="ZYX")
    cfg = PretrainConfig(method="tower-gen-only", steps=2, batch=4, val_every=0, checkpoint_every=0, device="cpu",
                         data=DataConfig(patch=64, structure_prior=False), model=ModelConfig(base=4, depth=2))
    result = pretrain([image], cfg)
    assert result.last.step == 2
    n_chunks = 200 * 4 * 4
    assert len(set(computed)) < 0.1 * n_chunks, f"{len(set(computed))} of {n_chunks} chunks were computed"


def test_pretrain_and_finetune_from_zarr(tmp_path):
    images, labels = zip(*(synthetic_nuclei((96, 96), 8, seed=s) for s in range(2)))
    _zarr_array(tmp_path / "s.zarr", np.stack(images), (1, 32, 32))
    image = read_image(tmp_path / "s.zarr")
    assert isinstance(image.data, AxesView)
    pre = pretrain([image], PretrainConfig(steps=2, batch=4, val_every=0, checkpoint_every=0, device="cpu",
                                           data=DataConfig(patch=32), model=ModelConfig(base=4, depth=2)))
    assert np.isfinite(pre.last.losses["loss"])
    ft = finetune([image], [np.stack(labels)], FinetuneConfig(steps=2, batch=2, val_every=0, checkpoint_every=0,
                                                            device="cpu", data=DataConfig(patch=32),
                                                            model=ModelConfig(base=4, depth=2)))
    assert np.isfinite(ft.last.losses["loss"])


# --- block-wise prediction -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segmenter():
    pairs = [synthetic_nuclei((128, 128), 14, seed=s) for s in range(3)]
    cfg = FinetuneConfig(steps=60, batch=4, lr=3e-3, seed=0, val_every=0, checkpoint_every=0, device="cpu",
                         data=DataConfig(patch=64), model=ModelConfig(base=8, depth=3))
    return finetune([from_array(im) for im, _ in pairs], [lab[None] for _, lab in pairs], cfg).checkpoint


@pytest.fixture(scope="module")
def nuclei_stack(tmp_path_factory):
    path = tmp_path_factory.mktemp("stack") / "stack.zarr"
    stack = np.stack([synthetic_nuclei((700, 650), 300, seed=10 + k)[0] for k in range(2)])
    _zarr_array(path, stack, (1, 128, 128))
    return path


def _blockwise_cfg(**kw) -> PredictConfig:
    return PredictConfig(tile=256, overlap=128, block=256, halo=64, device="cpu", **kw)


def test_block_grid_covers_each_plane_once_and_reads_full_tiles():
    blocks = block_grid((2, 1, 700, 650), core=256, halo=64, min_extent=256)
    cover = np.zeros((2, 700, 650), int)
    for b in blocks:
        y0, y1, x0, x1 = b.core
        cover[b.plane, y0:y1, x0:x1] += 1
        ey0, ey1, ex0, ex1 = b.ext
        assert ey0 <= max(0, y0 - 64) and ey1 >= min(700, y1 + 64) and ey1 - ey0 >= 256 and ex1 - ex0 >= 256
    assert (cover == 1).all()


def test_blockwise_instances_match_a_whole_image_run(tmp_path, segmenter, nuclei_stack):
    image = read_image(nuclei_stack)
    predictor = Predictor(segmenter, _blockwise_cfg(instances=True))
    whole = predictor.predict(image)
    ticks = []
    result = predict_blockwise(predictor, image, tmp_path / "out.zarr", chunk=128, workers=2, probabilities=True,
                               progress=lambda done, total: ticks.append((done, total)))
    labels = zarr.open_array(str(tmp_path / "out.zarr" / "labels"), mode="r")
    probs = zarr.open_array(str(tmp_path / "out.zarr" / "probabilities"), mode="r")
    assert labels.shape == (2, 700, 650) and labels.chunks == (1, 128, 128) and result.blocks == 18
    assert ticks[-1] == (36, 36)  # predict + relabel pass
    assert np.abs(probs[:] - whole.probabilities).max() < 0.1
    for k in range(2):
        lab = labels[k]
        ids = np.unique(lab)
        assert ids.tolist() == list(range(ids.max() + 1)), "ids are sequential per plane"
        assert result.objects[k] == ids.max() > 150
        f1 = object_scores(lab, whole.labels[k])["f1"]
        assert f1 >= 0.99, f"plane {k}: object F1 {f1:.4f} between block-wise and whole-image instances"


def test_blockwise_classes_and_rerun_replaces_output(tmp_path, segmenter, nuclei_stack):
    image = read_image(nuclei_stack)
    predictor = Predictor(segmenter, _blockwise_cfg())
    out = tmp_path / "classes.zarr"
    predict_blockwise(predictor, image, out, chunk=128)
    predict_blockwise(predictor, image, out, chunk=128)  # a second run replaces the first atomically
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.zarr"]
    whole = predictor.predict(image).labels
    got = zarr.open_array(str(out / "labels"), mode="r")[:]
    assert got.dtype == np.uint8 and dice(got > 0, whole > 0) > 0.999


def test_blockwise_on_a_dask_cluster_matches_threads(tmp_path, segmenter, nuclei_stack):
    distributed = pytest.importorskip("distributed")
    image = read_image(nuclei_stack)
    predictor = Predictor(segmenter, _blockwise_cfg(instances=True))
    predict_blockwise(predictor, image, tmp_path / "threads.zarr", chunk=128)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        predict_blockwise(predictor, image, tmp_path / "cluster.zarr", chunk=128, scheduler=client)
    a = zarr.open_array(str(tmp_path / "threads.zarr" / "labels"), mode="r")[:]
    b = zarr.open_array(str(tmp_path / "cluster.zarr" / "labels"), mode="r")[:]
    assert a.max() > 150 and (a != b).mean() < 1e-4


def test_blockwise_refuses_bad_settings(tmp_path, segmenter, nuclei_stack):
    image = read_image(nuclei_stack)
    with pytest.raises(TowerError, match="halo 0 cannot join"):
        predict_blockwise(Predictor(segmenter, _blockwise_cfg(instances=True)), image, tmp_path / "o.zarr", halo=0)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(TowerError, match="is not a napari-tower prediction"):
        predict_blockwise(Predictor(segmenter, _blockwise_cfg()), image, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(TowerError, match="is the input image itself"):
        predict_blockwise(Predictor(segmenter, _blockwise_cfg()), image, nuclei_stack)
    in_memory = from_array(np.full((3000, 3000), 5, np.uint16), "layer")  # 18 MB would go to every worker
    with pytest.raises(TowerError, match="save it as zarr"):
        predict_blockwise(Predictor(segmenter, _blockwise_cfg()), in_memory, tmp_path / "o.zarr",
                          scheduler="tcp://127.0.0.1:1")


def test_cli_predict_zarr_input_writes_zarr(tmp_path, segmenter, nuclei_stack, capsys):
    import dask

    model = tmp_path / "model.pt"
    segmenter.save(model)
    code = main(["predict", str(model), str(nuclei_stack), "--out", str(tmp_path / "pred"), "--instances",
                 "--tile", "256", "--overlap", "128", "--block", "256", "--halo", "64", "--workers", "2"])
    assert code == 0, capsys.readouterr().err
    labels = zarr.open_array(str(tmp_path / "pred" / "stack.zarr" / "labels"), mode="r")
    assert labels.shape == (2, 700, 650) and labels[0].max() > 150
    assert "wrote" in capsys.readouterr().err
    pytest.importorskip("distributed")
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        code = main(["predict", str(model), str(nuclei_stack), "--out", str(tmp_path / "pred2"),
                     "--scheduler", "tcp://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2 and "error: could not connect to the dask scheduler" in err and "Traceback" not in err, err
    assert not (tmp_path / "pred2" / "stack.zarr").exists()

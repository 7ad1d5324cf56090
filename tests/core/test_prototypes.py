"""The prototype dictionary: seeded clustering, pixel assignment, the ignore band, pseudo-labels and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_tower.config import DataConfig, ModelConfig, PretrainConfig, PrototypeConfig
from napari_tower.data import from_array, read_labels
from napari_tower.errors import TowerError
from napari_tower.prototypes import (
    Assignment,
    Prototypes,
    class_margin,
    find_prototypes,
    gallery_crops,
    gallery_mosaic,
    kmeans,
    majority_mapping,
    most_typical_image,
    parse_mapping,
    pseudo_labels,
)
from napari_tower.samples import synthetic_nuclei


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


@pytest.fixture(scope="module")
def nuclei():
    pairs = [synthetic_nuclei((96, 96), 14, seed=s) for s in range(3)]
    return [from_array(im, f"nuclei{s}") for s, (im, _) in enumerate(pairs)], [lab for _, lab in pairs]


@pytest.fixture(scope="module")
def tiny_model(nuclei):
    """A briefly pretrained small U-Net: enough for structured embeddings, seconds to make."""
    torch.set_num_threads(2)
    from napari_tower.train import pretrain

    cfg = PretrainConfig(steps=6, batch=4, val_every=0, checkpoint_every=0, device="cpu",
                         data=DataConfig(patch=32), model=ModelConfig(base=4, depth=2))
    return pretrain(nuclei[0], cfg).checkpoint


def _cfg(**kw) -> PrototypeConfig:
    return PrototypeConfig(**{"k": 5, "samples": 3000, "device": "cpu", "tile": 64, "overlap": 16, **kw})


# --------------------------------------------------------------------------- k-means


def test_kmeans_is_seeded_and_finds_separated_groups():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
    truth = rng.integers(0, 3, 600)
    x = torch.from_numpy(centres[truth] + rng.normal(0, 0.5, (600, 2)).astype(np.float32))
    a, b = kmeans(x, 3, seed=7), kmeans(x, 3, seed=7)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.labels, b.labels)
    # Every found group is one true group (up to renumbering).
    pairs = {(int(t), int(l)) for t, l in zip(truth, a.labels)}
    assert len(pairs) == 3
    assert a.inertia < 600 * 2 * 0.5**2 * 1.5


def test_kmeans_keeps_k_clusters_with_duplicate_points():
    x = torch.tensor([[0.0, 0.0]] * 50 + [[1.0, 1.0]] * 50)
    result = kmeans(x, 3, seed=0)
    assert result.centroids.shape == (3, 2) and torch.isfinite(result.centroids).all()
    with pytest.raises(ValueError):
        kmeans(x[:2], 3)


# --------------------------------------------------------------------------- the dictionary on images


def test_find_prototypes_is_deterministic_with_a_seed(nuclei, tiny_model):
    images, _ = nuclei
    a = find_prototypes(images, tiny_model, _cfg(seed=3))
    b = find_prototypes(images, tiny_model, _cfg(seed=3))
    assert np.array_equal(a.prototypes.centroids, b.prototypes.centroids)
    for x, y in zip(a.assignments, b.assignments):
        assert np.array_equal(x.nearest, y.nearest) and np.array_equal(x.gaps, y.gaps)
    other = find_prototypes(images, tiny_model, _cfg(seed=4))
    assert not np.array_equal(a.prototypes.centroids, other.prototypes.centroids)

    pmap = a.assignments[0].prototype_map()
    assert pmap.shape == (1, 96, 96) and pmap.min() >= 1 and pmap.max() <= 5
    shares = a.prototypes.shares
    assert np.isclose(shares.sum(), 1.0) and np.all(np.diff(shares) <= 0)  # id 1 is the commonest
    assert np.all(a.assignments[0].gaps >= 0)  # runners-up are never nearer than the nearest


def test_saved_prototypes_give_the_same_maps(nuclei, tiny_model, tmp_path):
    images, _ = nuclei
    first = find_prototypes(images, tiny_model, _cfg())
    path = first.prototypes.save(tmp_path / "p.npz")
    loaded = Prototypes.load(path)
    assert np.array_equal(loaded.centroids, first.prototypes.centroids) and loaded.config.k == 5
    again = find_prototypes(images[:1], tiny_model, PrototypeConfig(device="cpu"), prototypes=loaded)
    assert np.array_equal(again.assignments[0].nearest, first.assignments[0].nearest)
    (tmp_path / "junk.npz").write_bytes(b"no")
    with pytest.raises(TowerError, match="not a prototypes file"):
        Prototypes.load(tmp_path / "junk.npz")


def test_pseudo_labels_from_one_labelled_image(nuclei, tiny_model):
    """Naming prototypes by the majority class on image 0 labels the nuclei of the other images."""
    images, truths = nuclei
    result = find_prototypes(images, tiny_model, _cfg(k=6))
    mapping = majority_mapping(result.assignments[0].prototype_map()[0], truths[0] > 0)
    assert set(mapping.values()) == {1, 2}
    for a, truth in zip(result.assignments[1:], truths[1:]):
        dense = pseudo_labels(a, mapping, ignore=0.0)[0]
        banded = pseudo_labels(a, mapping, ignore=0.3)[0]
        assert set(np.unique(dense)) <= {0, 1, 2} and (dense > 0).mean() > 0.9
        known = banded > 0
        dense_dice = _dice(dense == 2, truth > 0)
        known_dice = _dice((banded == 2)[known], (truth > 0)[known])
        print(f"pseudo-label Dice {dense_dice:.3f}, on the annotated {known.mean():.0%}: {known_dice:.3f}")
        assert dense_dice > 0.6
        assert known_dice >= dense_dice  # the band drops mostly the clustering's mistakes


def test_gallery_shows_each_prototype(nuclei, tiny_model):
    images, _ = nuclei
    result = find_prototypes(images, tiny_model, _cfg(k=4))
    crops = gallery_crops(images, result.assignments, per_prototype=3, size=24)
    assert len(crops) == 4 and all(len(row) == 3 for row in crops)
    for proto, row in enumerate(crops):
        for crop in row:
            i, plane, y, x = crop.source
            assert result.assignments[i].nearest[plane, 0, y, x] == proto  # centred on its own pixel
            assert crop.image.shape == (24, 24) and crop.image.min() >= 0 and crop.image.max() <= 1
            assert crop.mask.any()
    mosaic = gallery_mosaic(crops, size=24)
    assert mosaic.dtype == np.uint8 and mosaic.shape == (4 * 28 + 4, 4 * 28 + 4, 3)


# --------------------------------------------------------------------------- the ignore band, exactly


def _assignment() -> Assignment:
    """One 1 x 8 plane, K = 4. Columns differ in their runner-ups and gaps."""
    nearest = np.zeros((1, 4, 1, 8), np.uint8)
    gaps = np.zeros((1, 3, 1, 8), np.float16)
    #          pixel:      0  1  2  3  4  5  6  7
    nearest[0, :, 0] = np.array([
        [0, 0, 0, 0, 1, 1, 1, 2],  # nearest
        [1, 2, 1, 2, 0, 2, 0, 0],
        [2, 1, 2, 1, 2, 0, 2, 1],
        [3, 3, 3, 3, 3, 3, 3, 3],
    ])
    gaps[0, :, 0] = np.array([
        [0.1, 0.1, 0.5, 0.1, 0.2, 0.1, 0.6, 0.1],
        [0.9, 0.3, 0.9, 0.2, 0.7, 0.8, 0.7, 0.5],
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
    ])
    return Assignment(nearest, gaps, k=4)


def test_class_margin_skips_runners_up_of_the_same_class():
    a = _assignment()
    lut = np.array([1, 2, 1, 0], np.uint8)  # prototypes 1, 3 = background; 2 = foreground; 4 unnamed
    margin = class_margin(a, lut)[0, 0]
    # pixel 1: nearest proto 0 (bg), runner-up proto 2 is bg too, so the margin is to proto 1 (fg) at 0.3.
    assert np.allclose(margin, [0.1, 0.3, 0.5, 0.2, 0.2, 0.1, 0.6, 0.5], atol=1e-3)


def test_ignore_band_leaves_the_least_certain_pixels_unannotated():
    a = _assignment()
    mapping = {1: 1, 2: 2, 3: 1}  # prototype ids are 1-based; 4 stays unnamed
    full = pseudo_labels(a, mapping, ignore=0.0)[0, 0]
    assert list(full) == [1, 1, 1, 1, 2, 2, 2, 1]
    banded = pseudo_labels(a, mapping, ignore=0.4)[0, 0]
    # background pixels 0,1,2,3,7 have margins .1 .3 .5 .2 .5: the least certain 40% (0 and 3) drop;
    # foreground pixels 4,5,6 have .2 .1 .6: the least certain (5) drops.
    assert list(banded) == [0, 1, 1, 0, 2, 0, 2, 1]
    unnamed = pseudo_labels(a, {2: 2}, ignore=0.0)[0, 0]
    assert list(unnamed) == [0, 0, 0, 0, 2, 2, 2, 0]  # pixels of unnamed prototypes are never annotated
    with pytest.raises(TowerError, match=r"ids 1\.\.4"):
        pseudo_labels(a, {5: 1})
    with pytest.raises(TowerError, match="no prototype has a class"):
        pseudo_labels(a, {1: 0})


def test_majority_mapping_and_parsing():
    pmap = np.array([[1, 1, 2, 2], [1, 3, 2, 2]])
    classes = np.array([[0, 0, 1, 1], [0, 2, 1, 0]])
    assert majority_mapping(pmap, classes) == {1: 1, 2: 2, 3: 3}
    assert majority_mapping(pmap, classes, min_pixels=2) == {1: 1, 2: 2}
    with pytest.raises(TowerError, match="same image"):
        majority_mapping(pmap, classes[:1])
    assert parse_mapping("1=bg, 2=fg,3=3,4=none", k=4) == {1: 1, 2: 2, 3: 3, 4: 0}
    for bad, message in (("1:bg", "PROTOTYPE=CLASS"), ("9=bg", "1..4"), ("1=cat", "unknown class"),
                         ("1=bg,1=fg", "named twice"), ("1=none", "names no prototype")):
        with pytest.raises(TowerError, match=message):
            parse_mapping(bad, k=4)


def test_most_typical_image_has_the_usual_mix_of_prototypes():
    def image(counts):  # a 1 x N plane holding prototype i counts[i] times
        nearest = np.repeat(np.arange(len(counts), dtype=np.uint8), counts)[None, None, None]
        return Assignment(nearest, np.zeros((1, 0, 1, nearest.shape[-1]), np.float16), k=len(counts))

    images = [image([9, 1, 0]), image([5, 3, 2]), image([1, 5, 4]), image([6, 2, 2])]
    assert most_typical_image(images) == 1  # mean mix (.525, .275, .2): image 1 (.5, .3, .2) is nearest


def test_config_checks():
    for bad in ({"k": 1}, {"ignore": 1.0}, {"samples": 5}, {"tile": 40}, {"levels": (9,)}):
        with pytest.raises(TowerError):
            PrototypeConfig(**bad).validate()


# --------------------------------------------------------------------------- command line


def test_cli_map_gallery_then_pseudo_labels_then_finetune(nuclei, tiny_model, tmp_path, capsys):
    import tifffile

    from napari_tower.cli import main

    images, truths = nuclei
    ckpt = tiny_model.save(tmp_path / "tower.pt")
    paths = []
    for i, im in enumerate(images):
        paths.append(tmp_path / "data" / f"img{i}.tif")
        paths[-1].parent.mkdir(exist_ok=True)
        tifffile.imwrite(paths[-1], np.asarray(im.data[0, 0]))
    out = tmp_path / "protos"
    common = [str(ckpt), str(tmp_path / "data"), "--out", str(out), "--samples", "3000", "--device", "cpu", "--quiet"]
    assert main(["prototypes", *common, "--k", "4"]) == 0
    assert {p.name for p in out.iterdir()} == {"img0_prototypes.tif", "img1_prototypes.tif", "img2_prototypes.tif",
                                               "gallery.png", "prototypes.npz", "prototypes.json"}
    pmap = tifffile.imread(out / "img0_prototypes.tif")
    assert pmap.shape == (96, 96) and set(np.unique(pmap)) <= {1, 2, 3, 4}
    summary = json.loads((out / "prototypes.json").read_text())
    assert summary["k"] == 4 and len(summary["shares"]) == 4

    mapping = majority_mapping(pmap, truths[0] > 0)
    assign = ",".join(f"{p}={'fg' if c == 2 else 'bg'}" for p, c in mapping.items())
    assert main(["prototypes", *common, "--prototypes", str(out / "prototypes.npz"), "--assign", assign]) == 0
    assert np.array_equal(tifffile.imread(out / "img0_prototypes.tif"), pmap)  # the same prototypes, reused
    pseudo = [out / f"img{i}_pseudo.tif" for i in range(3)]
    labels = read_labels(pseudo[1])[0]
    assert set(np.unique(labels)) <= {0, 1, 2} and (labels == 0).any() and (labels == 2).any()

    model = tmp_path / "seg.pt"
    assert main(["finetune", *map(str, paths), "--labels", *map(str, pseudo), "--target", "sparse",
                 "--init", str(ckpt), "--out", str(model), "--steps", "3", "--batch", "2", "--patch", "32",
                 "--device", "cpu", "--quiet"]) == 0
    assert model.exists()

    capsys.readouterr()
    assert main(["prototypes", *common, "--assign", "1=dog"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown class 'dog'")
    assert main(["prototypes", *common, "--k", "1"]) == 2
    assert "K = 1" in capsys.readouterr().err

"""Shape-aware instance heads (issue 20): targets round-trip, training, tuning, sparse painting, bundles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_tower.config import DataConfig, FinetuneConfig, ModelConfig, PredictConfig
from napari_tower.data import from_array
from napari_tower.errors import TowerError
from napari_tower.model_bundle import ModelBundle
from napari_tower.samples import synthetic_nuclei
from napari_tower.segment import Predictor, finetune
from napari_tower.segment.instance_heads import head_for, resolve_head
from napari_tower.segment.metrics import object_scores
from napari_tower.segment.shape_heads import CAP_PX, edge_distance, normalised_distance
from napari_tower.segment.shape_training import (
    ShapeObjective,
    choose_postprocess,
    instance_ids,
    score_postprocess_grid,
    tune_postprocess,
)
from napari_tower.segment.stardist import RAYS, candidate_centres, ray_distances

HEADS = ("distance", "capped", "stardist")


def _perfect_outputs(head, labels: np.ndarray) -> np.ndarray:
    """What a perfectly trained head would output: its activated maps from the true targets."""
    t = head.encode(labels)
    return np.concatenate([1.0 - t[:1], t])


@pytest.mark.parametrize("name", HEADS)
def test_decode_of_encode_recovers_touching_objects(name):
    _, labels = synthetic_nuclei((256, 256), 40, seed=3)  # touching elliptical nuclei
    head = head_for(name)
    outputs = _perfect_outputs(head, labels)
    # At the post-processing parameters tuning picks (a partly covered ellipse has two lobes above 0.5)
    params = tune_postprocess(head, [outputs], [labels])
    decoded = head.decode(outputs, params)
    assert params["f1"] == 1.0 and object_scores(decoded, labels)["f1"] == 1.0
    assert decoded.max() == len(np.unique(labels)) - 1


def test_a_flooded_plane_proposes_polygons_half_a_radius_apart_not_every_pixel():
    """A model that calls a whole plane foreground on a probability plateau: a 3 x 3 maximum made every pixel a
    candidate (minutes of NMS on a 1024 x 1024 image); centres must be at least half the ray length apart."""
    side, radius = 256, 12.0
    prob = np.full((side, side), 0.9)
    prob[::7, ::5] = 0.91  # a lattice of slightly higher pixels on the plateau: none is a real object centre
    rays = np.full((RAYS, side, side), radius)
    ys, xs = candidate_centres(prob, rays, 0.5)
    spacing = int(radius / 2)
    assert 0 < ys.size <= (side // spacing + 1) ** 2 < side * side // 20
    gaps = np.maximum(np.abs(ys[:, None] - ys[None]), np.abs(xs[:, None] - xs[None]))
    np.fill_diagonal(gaps, side)
    assert gaps.min() >= spacing
    assert np.all(np.diff(prob[ys, xs]) <= 0), "the most probable centres come first"
    outputs = np.concatenate([np.zeros((1, side, side)), np.ones((1, side, side)), prob[None], rays])
    labels = head_for("stardist").decode(outputs, {"seed_threshold": 0.5, "nms_threshold": 0.3, "min_size": 16})
    assert 0 < labels.max() <= ys.size


def test_normalised_distance_peaks_at_one_in_every_object():
    labels = np.zeros((40, 60), np.int32)
    labels[5:15, 5:15] = 1
    labels[5:15, 15:55] = 2  # touches object 1
    dist = normalised_distance(labels)
    for k in (1, 2):
        assert dist[labels == k].max() == pytest.approx(1.0)
    assert dist[labels == 0].max() == 0
    assert dist[10, 14] < 0.3 and dist[10, 15] < 0.3  # low on both sides of the shared edge


def test_capped_distance_is_the_same_near_the_edge_of_small_and_big_objects():
    """The capped target does not depend on object size: 3 px in is 3 / CAP_PX in a small and a big object
    alike, and only objects wider than twice the cap reach 1."""
    labels = np.zeros((80, 80), np.int32)
    labels[5:15, 5:15] = 1  # 10 x 10: its centre is 5 px in, below the cap
    labels[20:70, 20:70] = 2  # 50 x 50
    dist = edge_distance(labels, CAP_PX)
    assert dist[7, 10] == pytest.approx(dist[22, 45]) == pytest.approx(3 / CAP_PX)
    assert dist[labels == 1].max() == pytest.approx(5 / CAP_PX)
    assert dist[labels == 2].max() == 1.0 and (dist[labels == 2] == 1.0).sum() > 30 * 30
    normalised = normalised_distance(labels)
    assert normalised[7, 10] > 2 * normalised[22, 45]  # per object, the small one is "deeper" at 3 px in


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("flip", [False, True])
def test_augmented_rays_are_the_rays_of_the_turned_labels(k, flip):
    _, labels = synthetic_nuclei((96, 96), 8, seed=1)
    head = head_for("stardist")
    turned = np.rot90(labels, k)
    turned = np.ascontiguousarray(turned[:, ::-1] if flip else turned)
    # Rays are sampled on the pixel grid: turning moves sample points by under a pixel.
    assert np.abs(head.augment(head.encode(labels), k, flip) - head.encode(turned)).max() <= 1.01


def test_rays_measure_the_distance_to_the_edge():
    labels = np.zeros((50, 50), np.int32)
    labels[10:30, 20:40] = 1  # 20 x 20 square
    rays = ray_distances(labels)
    assert rays.shape == (RAYS, 50, 50)
    assert rays[0, 20, 25] == pytest.approx(15, abs=1)  # ray 0 points along +x: 39 - 25 + 1
    assert rays[RAYS // 4, 20, 25] == pytest.approx(10, abs=1)  # ray 8 points along +y: 29 - 20 + 1
    assert rays[:, labels == 0].max() == 0


def test_sparse_instance_painting_ignores_unpainted_pixels():
    painted = np.zeros((64, 64), np.int64)
    painted[:, :32] = 1  # background painted on the left half
    painted[10:20, 10:20] = 2  # two objects, each its own id
    painted[30:44, 8:22] = 3
    ids, annotated = instance_ids(painted, sparse=True)
    assert set(np.unique(ids)) == {0, 1, 2} and annotated.sum() == 64 * 32
    image = from_array(np.random.default_rng(0).random((1, 64, 64), np.float32))
    from napari_tower.data import compute_normalisation

    norm = compute_normalisation(image.data, "x", 1, 99.8)
    head = head_for("distance")
    obj = ShapeObjective(head, [(image, norm, ids, annotated.astype(np.float32))], 32)
    batch = obj.sample(8, np.random.default_rng(0))
    assert (batch["weights"] > 0).mean() > 0.5  # patches are drawn around the painted pixels
    logits = torch.randn(8, head.channels, 32, 32)
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
    scrambled = t["targets"].clone()
    unpainted = (t["weights"] == 0)[:, None].expand_as(scrambled)
    scrambled[unpainted] = torch.rand(int(unpainted.sum()))
    # Whatever the targets say where nothing is painted, the loss is the same: no gradient comes from there.
    assert head.loss(logits, scrambled, t["weights"]).item() == pytest.approx(
        head.loss(logits, t["targets"], t["weights"]).item(), rel=1e-6)


def test_sparse_instance_training_predicts_objects(tmp_path):
    image, labels = synthetic_nuclei((128, 128), 16, seed=2)
    painted = np.zeros(labels.shape, np.int64)  # only the left half painted: background 1, objects 2..
    painted[:, :64] = np.where(labels[:, :64] > 0, labels[:, :64] + 1, 1)
    cfg = FinetuneConfig(steps=6, batch=2, device="cpu", target="sparse_instance", instance_head="distance",
                         val_fraction=0.0,
                         data=DataConfig(patch=64), model=ModelConfig(base=8, depth=2))
    result = finetune([from_array(image)], [painted[None]], cfg, tmp_path / "m.pt")
    assert result.checkpoint.target == "instance" and result.checkpoint.instance_head == "distance"  # sparse: a shape head
    with pytest.raises(TowerError, match="shape-aware"):
        finetune([from_array(image)], [painted[None]],
                 FinetuneConfig(steps=1, device="cpu", target="sparse_instance", instance_head="boundary",
                                data=DataConfig(patch=64), model=ModelConfig(base=8, depth=2)))


def test_shape_patches_get_the_intensity_jitter_the_class_heads_get():
    """Without it a distance model keyed on the labelled image's background level: a -0.05 shift of a sparse
    Usiigaci frame took its predicted share from 0.11 to 0.98 (tests/core/test_density_shift.py)."""
    from napari_tower.data import compute_normalisation

    image, labels = synthetic_nuclei((96, 96), 10, seed=4)
    im = from_array(image)
    plane = [(im, compute_normalisation(im.data, "x", 1, 99.8), labels, np.ones(labels.shape, np.float32))]
    head = head_for("distance")
    for seed in range(6):  # one patch per draw: the jitter's numbers come after its location and turn
        plain = ShapeObjective(head, plane, 32).sample(1, np.random.default_rng(seed))
        jittered = ShapeObjective(head, plane, 32, intensity=0.4).sample(1, np.random.default_rng(seed))
        np.testing.assert_array_equal(plain["targets"], jittered["targets"])  # the same patch
        assert np.abs(plain["image"] - jittered["image"]).max() > 0.01
        assert jittered["image"].min() >= 0 and jittered["image"].max() <= 1


def test_auto_head_is_capped_for_planes_and_boundary_for_volumes(tmp_path):
    """auto is the capped distance head in 2D (it finds objects better and retrains safely; resolve_head's
    docstring) and the boundary head in 3D, where capped was level with it and alone cut objects along z."""
    assert FinetuneConfig().instance_head == "auto"
    assert resolve_head("auto", 2) == "capped" and resolve_head("auto", 3) == "boundary"
    assert resolve_head("stardist", 2) == "stardist" and resolve_head("boundary", 2) == "boundary"
    image, labels = synthetic_nuclei((64, 64), 6, seed=5)
    cfg = FinetuneConfig(steps=2, batch=2, device="cpu", target="instance", val_fraction=0.0,
                         data=DataConfig(patch=32), model=ModelConfig(base=4, depth=2))
    assert finetune([from_array(image)], [labels[None]], cfg).checkpoint.instance_head == "capped"


@pytest.mark.parametrize("name", HEADS)
def test_finetune_tunes_and_stores_postprocessing(tmp_path, name):
    pairs = [synthetic_nuclei((128, 128), 14, seed=s) for s in range(2)]
    cfg = FinetuneConfig(steps=8, batch=2, device="cpu", instance_head=name, val_fraction=0.0,
                         data=DataConfig(patch=64), model=ModelConfig(base=8, depth=2))
    result = finetune([from_array(im) for im, _ in pairs], [lab[None] for _, lab in pairs], cfg, tmp_path / "m.pt")
    bundle = ModelBundle.load(tmp_path / "m.pt")
    assert bundle.instance_head == name and bundle.classes == head_for(name).channels
    assert set(head_for(name).tuned) <= set(bundle.postprocess) and "f1" in bundle.postprocess
    assert bundle.postprocess == result.checkpoint.postprocess
    predictor = Predictor(bundle, PredictConfig(device="cpu", instances=True))
    out = predictor.predict(from_array(pairs[0][0]))
    assert out.probabilities.shape[1] == head_for(name).channels
    assert np.allclose(out.probabilities[0, :2].sum(0), 1.0, atol=1e-4)
    labels = out.labels[0]
    assert labels.dtype == np.int32 and np.array_equal(np.unique(labels), np.arange(labels.max() + 1))
    semantic = Predictor(bundle, PredictConfig(device="cpu")).predict(from_array(pairs[0][0])).labels[0]
    assert set(np.unique(semantic)) <= {0, 1}


def test_tuning_picks_the_threshold_that_splits_touching_objects():
    _, labels = synthetic_nuclei((192, 192), 30, seed=4)
    head = head_for("distance")
    outputs = _perfect_outputs(head, labels)
    outputs[2] = outputs[2] * 0.5  # a model whose distances peak at 0.5: a 0.5 threshold would find no seeds
    best = tune_postprocess(head, [outputs], [labels])
    assert best["seed_threshold"] < 0.5 and best["f1"] >= 0.95


def test_tied_thresholds_go_to_the_middle_of_the_tied_range():
    """One labelled image often ties several seed thresholds; the lowest (0.2, the first grid point) merges
    touching nuclei on other images, so ties go to the middle of the tied range."""
    from skimage.draw import disk

    labels = np.zeros((128, 128), np.int32)
    for k, (y, x) in enumerate([(30, 30), (30, 90), (90, 30), (90, 90)], start=1):
        labels[disk((y, x), 15)] = k  # apart and round: every seed threshold finds each object once
    head = head_for("capped")
    outputs = _perfect_outputs(head, labels)
    scores = score_postprocess_grid(head, [outputs], [labels])
    best = max(f1 for _, f1 in scores)
    tied = sorted({p["seed_threshold"] for p, f1 in scores if f1 == best})
    assert len(tied) >= 3  # perfect maps: a plateau of thresholds, the case the rule is for
    middle = choose_postprocess(scores)
    assert middle["seed_threshold"] not in (tied[0], tied[-1])
    assert abs(middle["seed_threshold"] - (tied[0] + tied[-1]) / 2) <= 0.05 + 1e-9
    assert choose_postprocess(scores, ties="first")["seed_threshold"] == tied[0]
    assert middle["f1"] == round(best, 4) == tune_postprocess(head, [outputs], [labels])["f1"]
    # a single best point wins whatever the rule
    lone = [({"seed_threshold": 0.2, "nms_threshold": 0.4, "min_size": 0}, 0.9),
            ({"seed_threshold": 0.5, "nms_threshold": 0.4, "min_size": 16}, 0.8)]
    assert choose_postprocess(lone)["seed_threshold"] == 0.2


def test_a_seed_threshold_set_at_prediction_overrides_the_tuned_one():
    """The user's lever where their images crowd more (or less) than the labelled ones: the tuned threshold is
    kept at 0, and a set one changes how touching objects split (decoded from the same maps)."""
    pairs = [synthetic_nuclei((128, 128), 24, seed=s) for s in range(2)]
    cfg = FinetuneConfig(steps=30, batch=4, device="cpu", instance_head="capped", val_fraction=0.0,
                         data=DataConfig(patch=64), model=ModelConfig(base=8, depth=2))
    bundle = finetune([from_array(im) for im, _ in pairs], [lab[None] for _, lab in pairs], cfg).checkpoint
    tuned = Predictor(bundle, PredictConfig(device="cpu", instances=True))
    assert tuned.postprocess()["seed_threshold"] == bundle.postprocess["seed_threshold"]
    counts = {}
    for t in (0.1, 0.95):
        predictor = Predictor(bundle, PredictConfig(device="cpu", instances=True, seed_threshold=t))
        assert predictor.postprocess()["seed_threshold"] == t
        out = predictor.predict(from_array(pairs[0][0]))
        np.testing.assert_array_equal(out.labels[0], head_for("capped").decode(out.probabilities[0],
                                                                             predictor.postprocess()))
        counts[t] = int(out.labels[0].max())
    assert counts[0.95] != counts[0.1]  # the threshold reaches the decoding


def test_boundary_models_keep_the_watershed(tiny_instance_model_file):
    bundle = ModelBundle.load(tiny_instance_model_file)  # the boundary head, as every model before issue 20
    assert bundle.instance_head is None and bundle.postprocess is None
    assert Predictor(bundle, PredictConfig(device="cpu")).head is None


@pytest.mark.parametrize("name", ["distance", "stardist"])
def test_blockwise_shape_head_instances_agree_across_seams(tmp_path, name):
    """Block-wise zarr prediction with a shape head: objects crossing block seams keep one id."""
    zarr = pytest.importorskip("zarr")
    from napari_tower.data import read_image
    from napari_tower.segment.blockwise import predict_blockwise

    pairs = [synthetic_nuclei((128, 128), 14, seed=s) for s in range(2)]
    cfg = FinetuneConfig(steps=30, batch=4, lr=3e-3, device="cpu", instance_head=name, val_fraction=0.0,
                         data=DataConfig(patch=64), model=ModelConfig(base=8, depth=3))
    model = finetune([from_array(im) for im, _ in pairs], [lab[None] for _, lab in pairs], cfg).checkpoint
    stack = synthetic_nuclei((520, 500), 160, seed=20)[0][None]
    z = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=stack.shape, chunks=(1, 128, 128),
                        dtype=stack.dtype)
    z[:] = stack
    image = read_image(tmp_path / "in.zarr")
    predictor = Predictor(model, PredictConfig(tile=256, overlap=128, block=256, halo=64, device="cpu",
                                               instances=True))
    whole = predictor.predict(image).labels[0]
    result = predict_blockwise(predictor, image, tmp_path / "out.zarr", chunk=128, workers=2)
    blocks = np.asarray(zarr.open_array(str(tmp_path / "out.zarr" / "labels"), mode="r")[:]).reshape(whole.shape)
    assert result.blocks > 1 and whole.max() > 50
    assert object_scores(blocks, whole)["f1"] >= 0.99

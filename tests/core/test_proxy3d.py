"""3D proxy tasks (issue 17): statistics and invariants of the volume corruptions, and 2D dispatch kept intact."""

from __future__ import annotations

import pytest
import torch
from scipy import ndimage

from napari_tower.errors import TowerError
from napari_tower.proxy import (
    block_mask3d,
    compose,
    compose3d,
    inpaint3d,
    local_shuffle3d,
    nonlinear_remap3d,
    outpaint3d,
    structure_weights,
    structure_weights3d,
)
from napari_tower.proxy import tasks as tasks2d
from napari_tower.proxy.tasks3d import _paint_mask3d, _permute_windows, _window_grid


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def volumes(n=8, c=1, d=16, h=32, w=32, seed=0, low=0.2, high=0.9) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, c, d, h, w, generator=gen(1000 + seed))


# ----------------------------------------------------------------------------------------------
# block masking


def test_block_mask_masks_the_ratio_in_whole_3d_cells():
    x = volumes(12, 2)
    out = block_mask3d(x, gen(1), cell=8, ratio=0.25)
    masked = out == 0
    assert torch.equal(masked[:, 0], masked[:, 1]), "all channels alike"
    cells = masked[:, 0].reshape(12, 2, 8, 4, 8, 4, 8).float().mean(dim=(2, 4, 6))  # (N, gz, gy, gx)
    assert set(cells.unique().tolist()) <= {0.0, 1.0}, "masked cells are whole 8 x 8 x 8 cells"
    assert torch.allclose(cells.flatten(1).mean(dim=1), torch.full((12,), 0.25)), "8 of 32 cells in every sample"
    assert torch.equal(out[~masked], x[~masked])


def test_block_mask_anisotropic_cells_and_other_ratio_over_a_batch():
    x = volumes(16, 1, 12, 40, 36)
    out = block_mask3d(x, gen(2), cell=8, cell_z=3, ratio=0.4)
    masked = (out == 0)[:, 0]
    # cells are 3 slices deep: within each group of 3 slices every slice is masked alike
    groups = masked.reshape(16, 4, 3, 40, 36)
    assert torch.equal(groups[:, :, 0], groups[:, :, 1]) and torch.equal(groups[:, :, 0], groups[:, :, 2])
    assert abs(masked.float().mean().item() - 0.4) < 0.03
    noisy = block_mask3d(x, gen(2), ratio=0.25, fill="noise")
    assert abs((noisy != x).float().mean().item() - 0.25) < 0.03 and noisy.min() >= 0 and noisy.max() <= 1


def test_block_mask_prefers_structured_cells_and_keeps_the_ratio():
    n = 32
    x = torch.full((n, 1, 16, 32, 32), 0.5)
    x[..., :16] = volumes(n, 1, 16, 32, 16)  # texture in the left half, flat on the right
    weights = structure_weights3d(x, cell=8)
    assert weights.shape == x.shape and torch.all(weights[..., 16:] == 0) and torch.all(weights[..., :16] > 0.2)
    per_cell = structure_weights(x, cell=8, per_cell=True)
    assert per_cell.shape == (n, 1, 2, 4, 4)
    masked = block_mask3d(x, gen(3), weights=per_cell) == 0
    left, right = masked[..., :16].float().mean().item(), masked[..., 16:].float().mean().item()
    assert abs((left + right) / 2 - 0.25) < 1e-6
    assert left > 2.5 * right > 0, (left, right)
    same = block_mask3d(x, gen(3), weights=weights) == 0  # voxel weights pool to the same cells
    assert torch.equal(masked, same)


def test_structure_weights_of_flat_volumes_are_zero():
    assert torch.count_nonzero(structure_weights3d(torch.full((2, 2, 8, 16, 16), 0.3))) == 0


# ----------------------------------------------------------------------------------------------
# non-linear remap


def test_remap_is_monotone_or_inverted_per_sample_and_same_in_every_channel():
    ramp = torch.linspace(0, 1, 8 * 16 * 16).reshape(1, 1, 8, 16, 16).repeat(24, 2, 1, 1, 1)
    out = nonlinear_remap3d(ramp, gen(4), p=1.0)
    assert out.shape == ramp.shape
    assert torch.equal(out[:, 0], out[:, 1])
    flat = out[:, 0].flatten(1)
    steps = flat.diff(dim=1)
    rising = torch.all(steps >= -1e-6, dim=1)
    falling = torch.all(steps <= 1e-6, dim=1)
    assert torch.all(rising | falling), "each sample's curve is monotone"
    assert 4 <= int(falling.sum()) <= 20 and 4 <= int(rising.sum()) <= 20, "about half inverted"
    assert torch.equal(nonlinear_remap3d(ramp, gen(4), p=0.0), ramp)
    # elementwise: the 3D remap is the 2D one on the slices laid side by side, draw for draw
    planes = nonlinear_remap(ramp.reshape(24, 2, 8 * 16, 16), gen(4))
    assert torch.equal(nonlinear_remap3d(ramp, gen(4)), planes.reshape(ramp.shape))


nonlinear_remap = tasks2d.nonlinear_remap


# ----------------------------------------------------------------------------------------------
# local shuffling


def test_each_window_keeps_its_multiset_and_untouched_windows_stay():
    m, shape, sides = 4, (8, 20, 20), (3, 6, 6)
    x = torch.rand(m, 2, *shape, generator=gen(5))
    values = x.reshape(m, 2, -1)
    wid, valid = _window_grid(gen(6), m, shape, sides, x.device)
    chosen = valid & (torch.rand(valid.shape, generator=gen(7)) < 0.5)
    out = _permute_windows(values, wid, chosen, gen(8))
    for i in range(m):
        for k in torch.unique(wid[i]).tolist():
            inside = wid[i] == k
            a, b = values[i, :, inside], out[i, :, inside]
            if chosen[i, k]:
                # the same permutation moves every channel: sort by channel 0 and compare both
                assert torch.equal(a[:, a[0].argsort()], b[:, b[0].argsort()])
            else:
                assert torch.equal(a, b)
    # windows are boxes of at most 3 x 6 x 6 voxels
    zyx = torch.stack(torch.meshgrid(*(torch.arange(s) for s in shape), indexing="ij")).reshape(3, -1)
    for k in torch.unique(wid[0]).tolist():
        extent = zyx[:, wid[0] == k]
        span = (extent.max(dim=1).values - extent.min(dim=1).values + 1).tolist()
        assert span[0] <= 3 and span[1] <= 6 and span[2] <= 6 and int((wid[0] == k).sum()) == span[0] * span[1] * span[2]


def test_shuffle_permutes_each_sample_locally_and_respects_p():
    x = volumes(6, 2, 16, 32, 32)
    out = local_shuffle3d(x, gen(9), p=1.0)
    assert torch.equal(out[:, 0].flatten(1).sort(dim=1).values, x[:, 0].flatten(1).sort(dim=1).values)
    assert (out != x).float().mean() > 0.5
    # single-slice windows never move a voxel across slices
    flat = local_shuffle3d(x, gen(9), p=1.0, max_side_z=1)
    assert torch.equal(flat.flatten(3).sort(dim=-1).values, x.flatten(3).sort(dim=-1).values)
    some = local_shuffle3d(volumes(60, 1, 4, 16, 16), gen(10), p=0.5)
    kept = (some == volumes(60, 1, 4, 16, 16)).flatten(1).all(dim=1).float().mean().item()
    assert 0.3 < kept < 0.7
    assert torch.equal(local_shuffle3d(x, gen(9), p=0.0), x)


# ----------------------------------------------------------------------------------------------
# in- and out-painting


def test_inpaint_changes_only_inside_boxes_within_the_margin():
    shape = (16, 48, 48)
    x = torch.full((32, 1, *shape), 0.5)
    out = inpaint3d(x, gen(11), p=1.0)
    changed = (out != x)[:, 0]
    # p = 1 draws no coin, so the mask is the one _paint_mask3d draws first from the same generator
    boxes = _paint_mask3d(gen(11), torch.ones(32, dtype=torch.bool), torch.zeros(32, dtype=torch.bool), shape)[:, 0]
    assert torch.equal(changed, boxes), "noise only inside the boxes (and uniform noise is never exactly 0.5)"
    assert changed.flatten(1).any(dim=1).float().mean() > 0.8, "0.95 coin for the first box"
    assert not changed[:, :, :3].any() and not changed[:, :, -3:].any() and not changed[:, :, :, :3].any()
    assert changed.flatten(1).float().mean(dim=1).max() <= 5 * (1 / 3) ** 3 + 1e-6
    # a box that overlaps no other is a connected cuboid with sides of a sixth to a third of each axis
    isolated = 0
    for sample in changed.numpy():
        labels, count = ndimage.label(sample)
        for k, box in enumerate(ndimage.find_objects(labels), start=1):
            if (labels[box] == k).all():
                isolated += 1
                sides = [sl.stop - sl.start for sl in box]
                assert all(size // 6 <= side <= size // 3 for side, size in zip(sides, shape)), sides
    assert isolated >= 10


def test_outpaint_keeps_boxes_and_fills_the_outside():
    x = torch.full((32, 1, 14, 42, 42), 0.5)
    out = outpaint3d(x, gen(12), p=1.0)
    changed = (out != x)[:, 0]
    kept = (~changed).flatten(1).float().mean(dim=1)
    # the kept boxes are at most 5 of (1 - 3/7) of each side: the outside is mostly filled
    assert torch.all(kept > 0) and torch.all(kept <= 5 * (4 / 7) ** 3 + 0.05)
    assert changed[:, 0].all() or changed[:, :, 0].all(), "the border is noise"
    none = outpaint3d(x, gen(12), p=0.0)
    assert torch.equal(none, x)


# ----------------------------------------------------------------------------------------------
# composition


@pytest.mark.parametrize("tasks", [("nonlinear", "masking"), ("nonlinear", "shuffle", "inpaint", "outpaint"),
                                   ("masking", "inpaint"), ()])
def test_compose_dispatches_on_ndim_and_is_reproducible(tasks):
    x = volumes(4, 2, 8, 16, 16)
    a = compose(x, tasks, gen(13), options={"masking": {"cell_z": 4}} if "masking" in tasks else None)
    b = compose3d(x, tasks, gen(13), options={"masking": {"cell_z": 4}} if "masking" in tasks else None)
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(x, volumes(4, 2, 8, 16, 16)), "input untouched"
    planes = torch.rand(4, 1, 32, 32, generator=gen(14))
    assert torch.equal(compose(planes, ("nonlinear", "masking"), gen(15)),
                       tasks2d.compose(planes, ("nonlinear", "masking"), gen(15))), "2D unchanged"


def test_compose3d_inside_bf16_autocast_is_float32():
    x = volumes(4, 1, 8, 16, 16)
    weights = structure_weights(x, cell=8, per_cell=True)
    plain = compose(x, ("nonlinear", "masking"), gen(16), weights=weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = compose(x, ("nonlinear", "masking"), gen(16), weights=weights)
        painted = compose(x, ("shuffle", "inpaint", "outpaint"), gen(17), force=True)
    assert inside.dtype == torch.float32 and painted.dtype == torch.float32
    assert torch.equal(plain, inside)


def test_bad_volumes_and_options_are_clear_errors():
    with pytest.raises(TowerError, match=r"\(N, C, Z, Y, X\)"):
        block_mask3d(torch.rand(2, 1, 16, 16), gen())
    with pytest.raises(TowerError, match="floating-point"):
        inpaint3d(torch.zeros(2, 1, 4, 8, 8, dtype=torch.uint8), gen())
    with pytest.raises(TowerError, match="cell"):
        block_mask3d(volumes(2), gen(), cell_z=0)
    with pytest.raises(TowerError, match="weights must have shape"):
        block_mask3d(volumes(2), gen(), weights=torch.ones(2, 1, 3, 3, 3))
    with pytest.raises(TowerError, match="unknown proxy task"):
        compose(volumes(2), ("blur",), gen())

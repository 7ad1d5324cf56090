"""Proxy-task corruptions (spec section 2): statistics, invariants, reproducibility, preview."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_tower.config import PROXY_TASKS
from napari_tower.errors import TowerError
from napari_tower.proxy import (
    GENESIS_TASKS,
    TOWER_TASKS,
    block_mask,
    compose,
    inpaint,
    local_shuffle,
    nonlinear_remap,
    outpaint,
    preview,
    structure_weights,
)
from napari_tower.proxy.remap import _bezier_lut, _lookup


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are small: on a busy machine waking a second thread costs more than it saves."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(n=8, c=1, h=128, w=128, seed=0, low=0.0, high=1.0) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, c, h, w, generator=gen(1000 + seed))


ALL_FUNCS = {
    "nonlinear": lambda x, g: nonlinear_remap(x, g, p=1.0),
    "masking": lambda x, g: block_mask(x, g),
    "masking-noise": lambda x, g: block_mask(x, g, fill="noise"),
    "shuffle": lambda x, g: local_shuffle(x, g, p=1.0),
    "inpaint": lambda x, g: inpaint(x, g, p=1.0),
    "outpaint": lambda x, g: outpaint(x, g, p=1.0),
}


# ----------------------------------------------------------------------------------------------
# block masking


def test_masking_masks_a_quarter_of_cells_per_sample():
    x = batch(16, 2, low=0.2, high=0.9)
    out = block_mask(x, gen(1))
    masked = out == 0
    assert torch.equal(masked[:, 0], masked[:, 1])  # all channels alike
    cells = masked[:, 0].reshape(16, 16, 8, 16, 8)
    per_cell = cells.float().mean(dim=(2, 4))
    assert set(per_cell.unique().tolist()) <= {0.0, 1.0}  # whole 8 px cells
    assert torch.allclose(per_cell.mean(dim=(1, 2)), torch.full((16,), 0.25))  # 64 of 256 cells each
    assert torch.equal(out[~masked], x[~masked])


def test_masking_fraction_with_partial_cells_and_other_ratio():
    x = batch(32, 1, 100, 90, low=0.2, high=0.9)
    out = block_mask(x, gen(2), ratio=0.4)
    assert abs((out == 0).float().mean().item() - 0.4) < 0.03
    noisy = block_mask(x, gen(2), ratio=0.25, fill="noise")
    changed = (noisy != x).float().mean().item()
    assert abs(changed - 0.25) < 0.03
    assert noisy.min() >= 0 and noisy.max() <= 1


def test_masking_prefers_structured_cells():
    n = 64
    x = torch.full((n, 1, 128, 128), 0.5)
    x[:, :, :, :64] = batch(n, 1, 128, 64, low=0.2, high=0.8)  # texture on the left, flat on the right
    weights = structure_weights(x)
    assert weights.shape == (n, 1, 128, 128)
    assert weights.min() >= 0 and weights.max() <= 1
    assert torch.all(weights[:, :, :, 64:] == 0) and torch.all(weights[:, :, :, :64] > 0.2)

    masked = block_mask(x, gen(3), weights=weights) == 0
    left, right = masked[..., :64].float().mean().item(), masked[..., 64:].float().mean().item()
    assert abs((left + right) / 2 - 0.25) < 1e-6  # the masked fraction is kept
    assert left > 2.5 * right > 0  # structure is preferred, background still masked (floor)

    uniform = block_mask(x, gen(3), weights=weights, floor=1.0) == 0
    left_u, right_u = uniform[..., :64].float().mean().item(), uniform[..., 64:].float().mean().item()
    assert abs(left_u - right_u) < 0.05


def test_structure_weights_of_flat_images_are_zero():
    x = torch.full((2, 3, 40, 40), 0.3)
    assert torch.count_nonzero(structure_weights(x)) == 0


# ----------------------------------------------------------------------------------------------
# non-linear remap


def _ramp(n: int, c: int = 1) -> torch.Tensor:
    return torch.linspace(0, 1, 32 * 32).reshape(1, 1, 32, 32).repeat(n, c, 1, 1)


def test_nonlinear_keeps_or_reverses_intensity_order():
    x = _ramp(32)
    up = nonlinear_remap(x, gen(4), p=1.0, invert_p=0.0).flatten(1)
    assert torch.all(up.diff(dim=1) >= -1e-6)
    assert torch.allclose(up[:, 0], torch.zeros(32), atol=1e-5)
    assert torch.allclose(up[:, -1], torch.ones(32), atol=1e-5)
    down = nonlinear_remap(x, gen(4), p=1.0, invert_p=1.0).flatten(1)
    assert torch.all(down.diff(dim=1) <= 1e-6)
    assert torch.allclose(down[:, 0], torch.ones(32), atol=1e-5)
    assert torch.allclose(down[:, -1], torch.zeros(32), atol=1e-5)
    # the default inverts about half of the curves; p is the share of samples transformed
    mixed = nonlinear_remap(x, gen(5), p=1.0).flatten(1)
    inverted = (mixed[:, 0] > mixed[:, -1]).sum().item()
    assert 6 <= inverted <= 26
    assert torch.equal(nonlinear_remap(x, gen(5), p=0.0), x)
    some = nonlinear_remap(_ramp(200), gen(6), p=0.5)
    untouched = (some == _ramp(200)).flatten(1).all(dim=1).float().mean().item()
    assert 0.35 < untouched < 0.65


def test_nonlinear_uses_one_curve_for_all_channels():
    x = batch(4, 1).repeat(1, 3, 1, 1)
    out = nonlinear_remap(x, gen(7), p=1.0)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    assert not torch.allclose(out, x, atol=1e-3)


def test_bezier_table_matches_models_genesis_interp():
    from math import comb

    rng = np.random.default_rng(0)
    pts = rng.random((6, 4))
    invert = np.array([False, True] * 3)
    lut = _bezier_lut(torch.tensor(pts, dtype=torch.float32), torch.tensor(invert), 1000, 1025).numpy()
    grid = np.linspace(0, 1, 1025)
    t = np.linspace(0.0, 1.0, 1000)
    for i in range(6):  # Models Genesis: bernstein_poly(i, n, t) = comb(n, i) t^(n-i) (1-t)^i
        points = [[0, 0], pts[i, :2], pts[i, 2:], [1, 1]]
        poly = np.array([comb(3, k) * t ** (3 - k) * (1 - t) ** k for k in range(4)])
        xv, yv = np.dot([p[0] for p in points], poly), np.dot([p[1] for p in points], poly)
        xv, yv = (np.sort(xv), yv) if invert[i] else (np.sort(xv), np.sort(yv))
        assert np.abs(lut[i] - np.interp(grid, xv, yv)).max() < 2e-3


def test_remapped_pixels_match_models_genesis_at_its_own_curve_resolution():
    """Pixels through the 1025-entry table vs np.interp on Genesis's 100,000-sample curve."""
    from math import comb

    rng = np.random.default_rng(3)
    pts, invert = rng.random((20, 4)), rng.random(20) < 0.5
    x = rng.random((20, 1, 32, 64)).astype(np.float32)
    lut = _bezier_lut(torch.from_numpy(pts).float(), torch.from_numpy(invert), 1000, 1025)  # nonlinear_remap's defaults
    out = _lookup(torch.from_numpy(x), lut).numpy()
    t = np.linspace(0.0, 1.0, 100_000)
    poly = np.array([comb(3, k) * t ** (3 - k) * (1 - t) ** k for k in range(4)])
    errors = []
    for i in range(20):
        xv, yv = np.dot([0, pts[i, 0], pts[i, 2], 1], poly), np.dot([0, pts[i, 1], pts[i, 3], 1], poly)
        xv, yv = (np.sort(xv), yv) if invert[i] else (np.sort(xv), np.sort(yv))
        errors.append(np.abs(out[i].ravel() - np.interp(x[i].ravel().astype(np.float64), xv, yv)))
    errors = np.concatenate(errors)
    assert errors.mean() < 1e-5 and np.percentile(errors, 99) < 1e-4  # measured 7e-7 and 5e-6


# ----------------------------------------------------------------------------------------------
# local pixel shuffling


def test_shuffle_is_a_local_permutation_shared_by_channels():
    n, h, w = 4, 64, 80
    ids = torch.arange(h * w, dtype=torch.float64).reshape(1, 1, h, w) / (h * w)
    x = torch.cat([ids, ids * 0.5], dim=1).repeat(n, 1, 1, 1)
    out = local_shuffle(x, gen(8), p=1.0)
    assert torch.equal(out.flatten(2).sort(dim=2).values, x.flatten(2).sort(dim=2).values)  # histogram kept
    assert torch.equal(out[:, 1], out[:, 0] * 0.5)  # same permutation in every channel
    src = torch.round(out[:, 0].flatten(1) * h * w).long()  # where each pixel came from
    moved = src != torch.arange(h * w)
    assert moved.float().mean() > 0.8
    dy = (src // w - torch.arange(h * w) // w).abs().float()
    dx = (src % w - torch.arange(h * w) % w).abs().float()
    assert dy.mean() < 8 and dx.mean() < 8  # local: pixels stay near home
    assert dy.max() <= 4 * 11 and dx.max() <= 4 * 11


def test_single_window_keeps_its_multiset_and_the_rest():
    x = batch(6, 1, 128, 128)
    for seed in range(3):
        out = local_shuffle(x, gen(seed), p=1.0, n_windows=1)
        for i in range(6):
            changed = (out[i, 0] != x[i, 0]).nonzero()
            if len(changed) == 0:
                continue  # a 1 x 1 window (or an identity draw) changes nothing
            (y0, x0), (y1, x1) = changed.min(dim=0).values.tolist(), changed.max(dim=0).values.tolist()
            assert y1 - y0 < 12 and x1 - x0 < 12
            box = (slice(y0, y1 + 1), slice(x0, x1 + 1))
            assert torch.equal(out[i, 0][box].flatten().sort().values, x[i, 0][box].flatten().sort().values)
            rest = torch.ones(128, 128, dtype=torch.bool)
            rest[box] = False
            assert torch.equal(out[i, 0][rest], x[i, 0][rest])


def test_shuffle_probability_and_window_count():
    x = batch(64, 1, 32, 32)
    out = local_shuffle(x, gen(9), p=0.5)
    touched = (out != x).flatten(1).any(dim=1).float().mean().item()
    assert 0.3 < touched < 0.7
    few = (local_shuffle(x, gen(9), p=1.0, n_windows=40) != x).float().mean()
    many = (local_shuffle(x, gen(9), p=1.0) != x).float().mean()
    assert few < many


# ----------------------------------------------------------------------------------------------
# in-painting and out-painting


def test_inpaint_fills_up_to_five_blocks_inside_the_margin():
    x = torch.full((64, 1, 128, 128), 0.5)
    out = inpaint(x, gen(10), p=1.0)
    changed = out[:, 0] != 0.5
    any_change = changed.flatten(1).any(dim=1)
    assert any_change.float().mean() > 0.85  # Genesis draws no block 5% of the time
    assert not changed[:, :3].any() and not changed[:, -3:].any()
    assert not changed[:, :, :3].any() and not changed[:, :, -3:].any()
    for i in torch.nonzero(any_change).flatten().tolist():
        ys, xs = changed[i].nonzero().unbind(1)
        assert ys.max() - ys.min() + 1 >= 21 and xs.max() - xs.min() + 1 >= 21
    frac = changed.flatten(1).float().mean(dim=1)
    assert frac.max() <= 5 * 42 * 42 / 128 ** 2
    noise = out[:, 0][changed]
    assert abs(noise.mean().item() - 0.5) < 0.02 and noise.min() >= 0 and noise.max() <= 1


def test_outpaint_keeps_one_to_five_windows():
    x = torch.full((64, 1, 128, 128), 0.5)
    out = outpaint(x, gen(11), p=1.0)
    kept = out[:, 0] == 0.5
    assert kept.flatten(1).any(dim=1).all()
    assert not kept[:, :3].any() and not kept[:, :, -3:].any()  # borders are always noise
    for i in range(64):
        ys, xs = kept[i].nonzero().unbind(1)
        assert ys.max() - ys.min() + 1 >= 55 and xs.max() - xs.min() + 1 >= 55
        assert kept[i].sum() >= 55 * 55
    assert torch.equal(outpaint(x, gen(11), p=0.0), x)


def test_painting_is_exclusive_in_compose():
    x = torch.full((400, 1, 64, 64), 0.5)
    out = compose(x, ("inpaint", "outpaint"), gen(12), force=True)
    border = (out[:, 0, 0] != 0.5).any(dim=1)  # only out-painting touches the first row
    assert 0.7 < border.float().mean().item() < 0.9  # 0.8 out-painting, 0.2 in-painting
    usual = compose(x, ("inpaint", "outpaint"), gen(13))
    untouched = (usual == 0.5).flatten(1).all(dim=1).float().mean().item()
    assert 0.05 < untouched < 0.2  # painted with probability 0.9 (in-painting can draw no block)


# ----------------------------------------------------------------------------------------------
# all tasks: contract


@pytest.mark.parametrize("name", list(ALL_FUNCS))
def test_shape_dtype_range_and_input_untouched(name):
    for dtype in (torch.float32, torch.float64):
        x = batch(3, 2, 48, 40).to(dtype)
        before = x.clone()
        out = ALL_FUNCS[name](x, gen(14))
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
        assert out is not x and torch.equal(x, before)
        assert out.min() >= 0 and out.max() <= 1
        assert not torch.equal(out, x)


@pytest.mark.parametrize("tasks", [TOWER_TASKS, GENESIS_TASKS, PROXY_TASKS])
def test_compose_is_reproducible_from_the_seed(tasks):
    x = batch(6, 1, 64, 64)
    weights = structure_weights(x)
    a = compose(x, tasks, gen(15), weights=weights)
    b = compose(x, tasks, gen(15), weights=weights)
    c = compose(x, tasks, gen(16), weights=weights)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("shape", [(16, 1, 128, 128), (5, 3, 64, 48), (4, 2, 36, 44)])
@pytest.mark.parametrize("prior", [False, True])
@pytest.mark.parametrize("force", [False, True])
def test_compose_remaps_and_masks_in_one_pass_exactly_like_the_two_steps(shape, prior, force):
    # values outside [0, 1] too: both paths clip them; (4, 2, 36, 44) is not a multiple of the
    # cell, where compose runs the two steps itself
    x = batch(*shape, low=-0.1, high=1.1)
    weights = structure_weights(x, per_cell=True) if prior else None
    fused = compose(x, TOWER_TASKS, gen(21), weights=weights, force=force)
    g = gen(21)
    steps = block_mask(nonlinear_remap(x, g, p=1.0 if force else 0.9), g, weights=weights).clamp(0, 1)
    assert torch.equal(fused, steps)
    # options the single pass does not take fall back to the two steps, which check them
    noisy = compose(x, TOWER_TASKS, gen(21), weights=weights, options={"masking": {"fill": "noise"}})
    g = gen(21)
    assert torch.equal(noisy, block_mask(nonlinear_remap(x, g), g, fill="noise", weights=weights).clamp(0, 1))
    with pytest.raises(TypeError):
        compose(x, TOWER_TASKS, gen(21), options={"masking": {"size": 8}})


def test_each_function_is_reproducible():
    x = batch(4, 1, 64, 64)
    for name, fn in ALL_FUNCS.items():
        assert torch.equal(fn(x, gen(17)), fn(x, gen(17))), name
        assert not torch.equal(fn(x, gen(17)), fn(x, gen(18))), name


def test_compose_rejects_unknown_tasks_and_bad_input():
    x = batch(2, 1, 32, 32)
    with pytest.raises(TowerError) as err:
        compose(x, ("nonlinear", "blur"), gen())
    message = str(err.value)
    assert "blur" in message and all(name in message for name in PROXY_TASKS)
    with pytest.raises(TowerError):
        compose(x[0], TOWER_TASKS, gen())
    with pytest.raises(TowerError):
        block_mask(x, gen(), fill="median")
    with pytest.raises(TowerError):
        block_mask(x, gen(), weights=torch.ones(2, 1, 16, 16))
    with pytest.raises(TowerError):
        nonlinear_remap(x, gen(), p=1.5)
    with pytest.raises(TowerError):
        compose(x.long(), TOWER_TASKS, gen())


def test_compose_applies_nothing_for_no_tasks_and_clamps():
    x = batch(2, 1, 32, 32) * 1.5 - 0.25
    out = compose(x, (), gen())
    assert torch.equal(out, x.clamp(0, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batch_with_cpu_generator_matches_cpu():
    x = batch(4, 2, 64, 64)
    for tasks in (TOWER_TASKS, PROXY_TASKS):
        cpu = compose(x, tasks, gen(19))
        cuda = compose(x.cuda(), tasks, gen(19))
        assert cuda.device.type == "cuda"
        assert torch.allclose(cuda.cpu(), cpu, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# preview


@pytest.mark.parametrize("shape", [(96, 80), (2, 64, 64)])
def test_preview_returns_every_task_view(shape):
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    views = preview(image, seed=3)
    assert set(views) == set(PROXY_TASKS) | {"tower"}
    for name, view in views.items():
        assert view.shape == image.shape and view.dtype == np.float32, name
        assert view.min() >= 0 and view.max() <= 1, name
        assert not np.array_equal(view, image), name
    again = preview(image, seed=3)
    assert all(np.array_equal(views[k], again[k]) for k in views)


def test_preview_rejects_non_images():
    with pytest.raises(TowerError):
        preview(np.zeros((2, 3, 4, 5)))


# ----------------------------------------------------------------------------------------------
# property: any batch shape


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(16, 80), w=st.integers(16, 80),
       seed=st.integers(0, 2 ** 31 - 1), force=st.booleans())
def test_compose_all_tasks_any_shape(n, c, h, w, seed, force):
    x = torch.rand(n, c, h, w, generator=gen(seed))
    weights = structure_weights(x)
    out = compose(x, PROXY_TASKS, gen(seed), weights=weights, force=force)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    shuffled = local_shuffle(x, gen(seed), p=1.0)
    assert torch.equal(shuffled.flatten(2).sort(dim=2).values, x.flatten(2).sort(dim=2).values)


def test_cell_grid_weights_mask_exactly_like_pixel_weights():
    """The training hot path passes the structure score on the cell grid; it must choose the same cells."""
    x = torch.rand(4, 1, 64, 64)
    x[:, :, :, :32] = 0.5  # flat left half
    full = block_mask(x, torch.Generator().manual_seed(3), weights=structure_weights(x))
    cells = block_mask(x, torch.Generator().manual_seed(3), weights=structure_weights(x, per_cell=True))
    assert structure_weights(x, per_cell=True).shape == (4, 1, 8, 8)
    assert torch.equal(full, cells)

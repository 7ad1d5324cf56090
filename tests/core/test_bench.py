"""`napari-tower bench` on a tiny synthetic dataset: the three outputs, every method, reproducible numbers."""

from __future__ import annotations

import json

import numpy as np
import tifffile

from napari_tower.cli import main
from napari_tower.samples import synthetic_nuclei


def _run(tmp_path, out):
    args = ["bench", "--data", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"), "--out", str(out),
            "--methods", "scratch,tower,tower-encoder-only", "--seeds", "2", "--fractions", "1",
            "--pretrain-steps", "3", "--finetune-steps", "4", "--base", "8", "--depth", "2", "--patch", "64",
            "--batch", "4", "--device", "cpu", "--quiet"]
    assert main(args) == 0
    return json.loads((out / "results.json").read_text())


def test_bench_writes_table_plot_json_and_is_reproducible(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for s in range(5):
        image, labels = synthetic_nuclei((96, 96), 8, seed=s)
        tifffile.imwrite(tmp_path / "img" / f"{s}.tif", image)
        tifffile.imwrite(tmp_path / "lab" / f"{s}.tif", labels.astype(np.uint16))
    first = _run(tmp_path, tmp_path / "a")
    assert len(first["cells"]) == 3 * 2
    table = (tmp_path / "a" / "results.md").read_text()
    for method in ("scratch", "tower", "tower-encoder-only"):
        assert f"| {method} |" in table
    assert {t["baseline"] for t in first["paired_tests"]} == {"scratch", "tower-encoder-only"}
    assert (tmp_path / "a" / "dice_vs_fraction.png").read_bytes()[:4] == b"\x89PNG"
    second = _run(tmp_path, tmp_path / "b")
    dice = lambda r: [c["mean"]["dice"] for c in r["cells"]]
    assert dice(first) == dice(second)

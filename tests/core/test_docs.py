"""The documentation site cannot rot: it builds without warnings, its CLI page matches the
parser, and every image in it exists and is written by a test in this repository.

Images are (re)made by running the tests with NAPARI_TOWER_SCREENSHOTS set, e.g.
`NAPARI_TOWER_SCREENSHOTS=1 xvfb-run -a -s "-screen 0 1920x1400x24" python -m pytest tests/test_docs.py
tests/test_tutorial.py tests/test_demo.py tests/test_widget.py -k "not slow"`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)")


def _gen_cli_docs():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_cli_docs
    finally:
        sys.path.pop(0)
    return gen_cli_docs


def test_cli_reference_is_up_to_date():
    expected = _gen_cli_docs().command_reference()
    assert (DOCS / "cli.md").read_text(encoding="utf-8") == expected, \
        "docs/cli.md is out of date: run python scripts/gen_cli_docs.py and commit it"


def test_cli_reference_lists_every_command_and_option():
    from napari_tower.cli import build_parser

    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, parser in sub.choices.items():
        assert f"\n## {name}\n" in page
        for action in parser._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert f"`{flag}" in page, f"{name} {flag} missing from docs/cli.md"


def test_site_builds_without_warnings(tmp_path):
    pytest.importorskip("mkdocs")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "WARNING" not in log, log
    for page in ("index", "installation", "tutorial", "widget", "cli", "method", "bioimageio", "benchmarks",
                 "bad-inputs"):
        built = tmp_path / "site" / (page if page != "index" else "") / "index.html"
        assert built.is_file(), f"{page} missing from the built site"


def _doc_images() -> dict[str, list[str]]:
    """Image path (relative to docs/) -> the pages showing it."""
    found: dict[str, list[str]] = {}
    for page in sorted(DOCS.rglob("*.md")):
        for link in IMAGE_LINK.findall(page.read_text(encoding="utf-8")):
            if "://" in link:
                continue
            target = os.path.normpath(page.parent.relative_to(DOCS) / link)
            found.setdefault(target, []).append(page.name)
    return found


def _files_written_by_tests() -> set[str]:
    """File names the tests write: `snap(viewer, widget, NAME)` writes NAME.png and NAME-widget.png;
    other outputs appear in the test as a quoted file name (the corruption figure below, bench's plot)."""
    names: set[str] = set()
    for test in (ROOT / "tests").rglob("test_*.py"):
        text = test.read_text(encoding="utf-8")
        # snap(viewer, widget, "name"), or a helper handing its `shot="name"` on to snap
        for name in re.findall(r"""snap\([^)]*?["']([\w.-]+)["']\)|\bshot=["']([\w.-]+)["']""", text):
            name = "".join(name)
            names |= {f"{name}.png", f"{name}-widget.png"}
        names |= set(re.findall(r"""["']([\w.-]+\.(?:png|jpg|svg|gif))["']""", text))
    return names


def test_every_image_in_the_docs_exists_and_is_made_by_a_test():
    images = _doc_images()
    assert images, "no images found in docs/"
    made = _files_written_by_tests()
    for path, pages in images.items():
        assert (DOCS / path).is_file(), f"{path} (shown in {pages}) does not exist"
        assert Path(path).name in made, f"{path} (shown in {pages}) is not written by any test"


FIGURES = DOCS / "images"


def test_corruption_previews_figure(tmp_path):
    """`napari-tower preview` on the sample: every corruption differs from the input; the figure in method.md."""
    import tifffile

    from napari_tower.cli import main
    from napari_tower.samples import synthetic_nuclei

    image, _ = synthetic_nuclei((192, 192), 30, seed=3)
    tifffile.imwrite(tmp_path / "nuclei.tif", image)
    assert main(["preview", str(tmp_path / "nuclei.tif"), "--out", str(tmp_path / "views"), "--seed", "1"]) == 0
    names = ["nonlinear", "masking", "shuffle", "inpaint", "outpaint", "tower"]
    views = {n: np.squeeze(tifffile.imread(tmp_path / "views" / f"{n}.tif")) for n in names}
    from napari_tower.data import compute_normalisation

    clean = compute_normalisation(image[None, None], "sample").apply(image[None, None].astype(np.float32))[0, 0]
    for name, view in views.items():
        assert view.shape == clean.shape and view.min() >= 0 and view.max() <= 1
        assert np.abs(view - clean).mean() > 1e-3, f"{name} left the image unchanged"
    if not os.environ.get("NAPARI_TOWER_SCREENSHOTS"):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 7, figsize=(14, 2.4), dpi=100)
    for ax, (title, view) in zip(axes, [("input", clean), *views.items()]):
        ax.imshow(view, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=11)
        ax.axis("off")
    fig.tight_layout()
    FIGURES.mkdir(exist_ok=True)
    fig.savefig(FIGURES / "corruptions.png")
    plt.close(fig)

"""Release hygiene: one version literal; the sdist and wheel build, pass `twine check`, and install.

The wheel is built from the sdist (what `python -m build` does), so a file missing from the
sdist is missing from the wheel too. It is then installed into a fresh virtual environment
(system site-packages visible, so torch and friends come from there and nothing downloads)
and the installed `napari-tower` command is run from it.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PACKAGE_DATA = ("napari/napari.yaml", "napari/sample_nuclei.tif", "napari/sample_nuclei_labels.tif")


def source_version() -> str:
    """`napari_tower.__version__` as written in `__init__.py` (read, not imported: no sys.path games)."""
    tree = ast.parse((SRC / "napari_tower" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("napari_tower/__init__.py defines no __version__ literal")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would point Python at this checkout or at user site-packages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    return {**env, "PYTHONNOUSERSITE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


def run(args: list[str | Path], **kwargs) -> subprocess.CompletedProcess:
    """Runs a command, failing the test with its output if it exits non-zero."""
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, **kwargs)
    shown = " ".join(map(str, args))
    assert result.returncode == 0, f"{shown} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@dataclass(frozen=True)
class Dists:
    """The built distributions."""

    wheel: Path
    sdist: Path | None  # None when the `build` package is missing (the wheel then comes from `pip wheel`)


def _setuptools_too_old() -> str | None:
    """Why a no-isolation build cannot run here, or None (PEP 639 `license` strings need setuptools 77)."""
    major = int(installed_version("setuptools").split(".")[0])
    return None if major >= 77 else f"setuptools {installed_version('setuptools')} < 77 installed"


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> Dists:
    """An sdist and a wheel built without network from a copy of the checkout (no build/ or egg-info left here)."""
    if reason := _setuptools_too_old():
        pytest.skip(reason)
    tree = tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "README.md", "LICENSE", "LICENSE.txt", "MANIFEST.in"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(SRC, tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    if importlib.util.find_spec("build") is not None:
        run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, tree], env=clean_env())
        (sdist,) = out.glob("*.tar.gz")
    else:
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", out, tree],
            env=clean_env())
        sdist = None
    (wheel,) = out.glob("*.whl")
    return Dists(wheel, sdist)


def test_version_has_one_source():
    """pyproject takes its version from `napari_tower.__version__`; no other file repeats the literal."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "napari_tower.__version__"}
    literal = source_version()
    repeats = [p.relative_to(ROOT).as_posix()
               for p in [ROOT / "pyproject.toml", *SRC.rglob("*.py"), *SRC.rglob("*.yaml")]
               if literal in p.read_text(encoding="utf-8") and p != SRC / "napari_tower" / "__init__.py"]
    assert not repeats, f"the version literal {literal!r} is repeated in {repeats}: derive it from __version__"


def test_dists_contents(dists):
    version = source_version()
    assert dists.wheel.name == f"napari_tower-{version}-py3-none-any.whl"
    with zipfile.ZipFile(dists.wheel) as whl:
        names = set(whl.namelist())
        entry_points = whl.read(f"napari_tower-{version}.dist-info/entry_points.txt").decode()
        metadata = whl.read(f"napari_tower-{version}.dist-info/METADATA").decode()
    assert {f"napari_tower/{p}" for p in PACKAGE_DATA} <= names
    assert not any(n.startswith(("tests/", "napari_tower/napari/__pycache__")) for n in names)
    assert "[console_scripts]\nnapari-tower = napari_tower.cli" in entry_points, entry_points
    assert "napari-tower = napari_tower.napari:napari.yaml" in entry_points
    assert "Description-Content-Type: text/markdown" in metadata and "License-Expression: BSD-3-Clause" in metadata
    if dists.sdist is not None:
        with tarfile.open(dists.sdist) as sdist:
            members = {m.split("/", 1)[1] for m in sdist.getnames() if "/" in m}
        assert {"README.md", "pyproject.toml", *(f"src/napari_tower/{p}" for p in PACKAGE_DATA)} <= members
        assert not (ROOT / "LICENSE").exists() or "LICENSE" in members


def test_twine_check(dists):
    if importlib.util.find_spec("twine") is None:
        pytest.skip("twine is not installed")
    files = [dists.wheel, *([dists.sdist] if dists.sdist else [])]
    result = run([sys.executable, "-m", "twine", "check", "--strict", *files], env=clean_env())
    assert result.stdout.count("PASSED") == len(files), result.stdout


def test_wheel_installs_and_runs(dists, tmp_path):
    """The installed wheel, not this checkout or the editable install, answers `--version` and `doctor`."""
    venv = tmp_path / "venv"
    # No pip inside: the system pip (visible through --system-site-packages) installs into the venv's prefix.
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], env=clean_env())
    python, command = venv / "bin" / "python", venv / "bin" / "napari-tower"
    env = clean_env()
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", dists.wheel],
        env=env, cwd=tmp_path)
    probe = ("import importlib.metadata as m, importlib.resources as r, napari_tower;"
             "print(napari_tower.__file__); print(napari_tower.__version__); print(m.version('napari-tower'));"
             "print(all((r.files('napari_tower') / p).is_file() for p in " + repr(PACKAGE_DATA) + "))")
    where, version, dist_version, data_ok = run([python, "-I", "-c", probe], env=env, cwd=tmp_path).stdout.split()
    assert Path(where).resolve().is_relative_to(venv.resolve()), f"imported {where}, not the venv's copy"
    assert version == dist_version == source_version()
    assert data_ok == "True"

    shown = run([command, "--version"], env=env, cwd=tmp_path).stdout.strip()
    assert shown == f"napari-tower {source_version()}"
    report = run([command, "doctor"], env=env, cwd=tmp_path).stdout
    assert report.startswith("torch ") and "device:" in report, report

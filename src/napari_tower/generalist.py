"""The built-in generalist checkpoint: TOWER pretrained on a multi-modality corpus, shipped in the package.

Tools microscopists compare us with start from generalist weights; so does napari-tower. The file lives in
`napari_tower/weights/` (float16, a few MB), so nothing is downloaded at run time. It is checked against the
SHA-256 recorded here before use: a damaged or swapped file is refused, never silently loaded. Its recipe
(`scripts/make_generalist.py`: corpus, steps, seed) is stored in its metadata and in docs/generalist.md.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import TowerError

if TYPE_CHECKING:
    from .model_bundle import ModelBundle

GENERALIST = "generalist"  # the value of `--init` / "Start from" that names the built-in checkpoint
GENERALIST_FILE = Path(__file__).resolve().parent / "weights" / "generalist.pt"
# Recorded when the file was packaged (`package_generalist`); a mismatch means a damaged or replaced file.
GENERALIST_SHA256 = "e5870c2ebc0163657d063e894517a3f3840a9991dd7c6f5540545f8407af310f"


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: str | os.PathLike, expected: str) -> Path:
    """`path` when its SHA-256 is `expected`; otherwise a TowerError naming the problem and the fix."""
    path = Path(path)
    if not path.is_file():
        raise TowerError(f"the built-in generalist checkpoint is missing ({path}): reinstall napari-tower "
                         "(pip install --force-reinstall napari-tower) or start from scratch")
    actual = sha256_of(path)
    if actual != expected:
        raise TowerError(f"the built-in generalist checkpoint {path} does not match its recorded hash "
                         f"({actual[:12]}... instead of {expected[:12]}...): it is damaged or was replaced; "
                         "reinstall napari-tower (pip install --force-reinstall napari-tower)")
    return path


def available() -> bool:
    """Whether this installation ships a generalist checkpoint."""
    return bool(GENERALIST_SHA256) and GENERALIST_FILE.is_file()


def generalist_path() -> Path:
    """The shipped generalist checkpoint, verified against its recorded hash."""
    if not GENERALIST_SHA256:
        raise TowerError("this napari-tower has no built-in generalist checkpoint: start from scratch "
                         "or from a pretraining checkpoint file")
    return verify(GENERALIST_FILE, GENERALIST_SHA256)


def resolve_init(value: str | os.PathLike | None) -> str | None:
    """A "start from" choice as a checkpoint path: 'generalist' -> the verified shipped file, 'scratch' -> None."""
    if value is None or str(value) in ("", "scratch"):
        return None
    if str(value) == GENERALIST:
        return str(generalist_path())
    return str(value)


def package_generalist(bundle: ModelBundle, out: str | os.PathLike, recipe: dict[str, Any]) -> str:
    """Write the shippable form of a finished pretraining run; returns its SHA-256 to record above.

    Float tensors become float16 (half the size; they are cast back when loaded into a model) and the
    optimiser state goes (a generalist is a starting point, not a run to resume). `recipe` is stored with it.
    """
    import dataclasses

    state = {k: v.half() if v.is_floating_point() else v for k, v in bundle.state.items()}
    shipped = dataclasses.replace(bundle, state=state, optimizer=None, extra={**bundle.extra, "recipe": recipe})
    shipped.save(out)
    return sha256_of(out)

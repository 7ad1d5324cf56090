"""Self-supervised pretraining methods, one module each, selected by name."""

from __future__ import annotations

from ..config import PretrainConfig
from ..errors import TowerError
from .base import Method
from .byol import BYOL
from .genesis import Genesis
from .pcrl import PCRL
from .simclr import SimCLR
from .tower import Tower, TowerConOnly, TowerGenOnly

METHOD_CLASSES: dict[str, type[Method]] = {
    cls.name: cls for cls in (Tower, TowerGenOnly, TowerConOnly, Genesis, SimCLR, BYOL, PCRL)
}


def build_method(cfg: PretrainConfig) -> Method:
    """The method named by `cfg.method`, with a fresh U-Net and heads."""
    try:
        return METHOD_CLASSES[cfg.method](cfg)
    except KeyError:
        raise TowerError(f"unknown method '{cfg.method}': choose one of {', '.join(METHOD_CLASSES)}") from None


__all__ = ["METHOD_CLASSES", "Method", "build_method"]

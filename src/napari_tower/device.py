"""Device doctor: which torch build is installed, which device napari-tower will use, how to get a GPU.

The napari widget shows this in its Model section and `napari-tower doctor` prints it,
so "why is training slow?" has an answer on screen: most often a CPU-only torch
on a machine that has a GPU.
"""

from __future__ import annotations

import platform
import shutil
import sys
from dataclasses import dataclass
from typing import Any

import torch

PYTORCH_INSTALL_PAGE = "https://pytorch.org/get-started/locally/"
# One example index; the right CUDA version depends on the driver (`nvidia-smi` shows the highest it supports).
CUDA_INDEX_EXAMPLE = "https://download.pytorch.org/whl/cu126"


@dataclass(frozen=True)
class DeviceReport:
    """What torch can compute on here, in words."""

    torch_version: str
    build: str  # "CPU only", "CUDA 12.6", "ROCm 6.2", "CPU + Apple MPS"
    device: str  # what `--device auto` picks, with the GPU's name
    gpu_in_use: bool
    hint: str  # one line: how to get (or check) GPU support; empty when nothing is to be done
    threads: int

    def lines(self) -> list[str]:
        out = [f"torch {self.torch_version} ({self.build})", f"device: {self.device}"]
        return out + ([self.hint] if self.hint else [])

    def text(self) -> str:
        return "\n".join(self.lines())


def _has_mps() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_built())


def _build() -> str:
    if getattr(torch.version, "hip", None):
        return f"ROCm {torch.version.hip.split('-')[0]}"
    if torch.version.cuda:
        return f"CUDA {torch.version.cuda}"
    if _has_mps():
        return "CPU + Apple MPS"
    return "CPU only"


def _gpu_name(index: int = 0) -> str:
    try:
        return torch.cuda.get_device_name(index)
    except Exception:  # noqa: BLE001 - a name is decoration; never fail the report over it
        return "GPU"


def device_report(nvidia_smi: Any = None) -> DeviceReport:
    """Describe the torch build, the device `auto` resolves to, and a hint for GPU support.

    `nvidia_smi` overrides the lookup of the `nvidia-smi` tool (a path or None), which is how
    the report notices a GPU that a CPU-only torch cannot use.
    """
    from .train.engine import resolve_device

    build = _build()
    device = resolve_device("auto")
    threads = torch.get_num_threads()
    smi = shutil.which("nvidia-smi") if nvidia_smi is None else nvidia_smi
    reinstall = (f"pip uninstall torch, then pip install torch --index-url {CUDA_INDEX_EXAMPLE} "
                 f"(the CUDA version for your driver: {PYTORCH_INSTALL_PAGE})")
    if device.type == "cuda":
        n = torch.cuda.device_count()
        name = _gpu_name() + (f" (+{n - 1} more)" if n > 1 else "")
        return DeviceReport(torch.__version__, build, f"cuda: {name}", True, "", threads)
    if device.type == "mps":
        return DeviceReport(torch.__version__, build, "mps: Apple GPU", True, "", threads)
    cpu = f"cpu ({threads} threads)"
    if torch.version.cuda or getattr(torch.version, "hip", None):
        hint = (f"torch was built for {build} but sees no GPU: check the driver (`nvidia-smi` or `rocm-smi`) "
                "and CUDA_VISIBLE_DEVICES")
    elif sys.platform == "darwin" and platform.machine() == "arm64":
        hint = "the Apple GPU (MPS) is not available: update macOS (12.3 or newer) and torch (pip install -U torch)"
    elif smi:
        hint = f"an NVIDIA GPU is present but this torch is CPU-only: {reinstall}"
    else:
        hint = f"no GPU found; with an NVIDIA GPU: {reinstall}"
    return DeviceReport(torch.__version__, build, cpu, False, hint, threads)


__all__ = ["DeviceReport", "device_report"]

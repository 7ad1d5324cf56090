"""The device doctor describes the torch that is really installed, and points to GPU support."""

from __future__ import annotations

import platform
import sys

import pytest
import torch

from napari_tower.device import CUDA_INDEX_EXAMPLE, device_report
from napari_tower.train.engine import resolve_device


def test_report_matches_the_installed_torch():
    report = device_report()
    assert report.torch_version == torch.__version__
    if torch.version.cuda:
        assert report.build == f"CUDA {torch.version.cuda}"
    elif not getattr(torch.version, "hip", None):
        assert report.build in ("CPU only", "CPU + Apple MPS")
    used = resolve_device("auto").type
    assert report.device.startswith(used)
    assert report.gpu_in_use == (used != "cpu")
    assert report.threads == torch.get_num_threads()
    text = report.text()
    assert text.splitlines()[0] == f"torch {torch.__version__} ({report.build})"
    if not report.gpu_in_use:  # a machine computing on its CPU is told how to change that
        assert report.hint and report.hint in text


CPU_ONLY_LINUX_OR_WINDOWS = (not torch.version.cuda and not getattr(torch.version, "hip", None)
                             and not (sys.platform == "darwin" and platform.machine() == "arm64"))


@pytest.mark.skipif(not CPU_ONLY_LINUX_OR_WINDOWS, reason="about CPU-only torch builds on Linux/Windows")
def test_cpu_only_torch_next_to_an_nvidia_gpu_gets_the_cuda_index():
    hint = device_report(nvidia_smi="/usr/bin/nvidia-smi").hint
    assert "NVIDIA GPU is present" in hint and CUDA_INDEX_EXAMPLE in hint
    assert "no GPU found" in device_report(nvidia_smi="").hint


def test_doctor_command_prints_the_report(capsys):
    from napari_tower.cli import main

    assert main(["doctor"]) == 0
    assert capsys.readouterr().out.strip() == device_report().text()

"""What machine a benchmark figure came from.

This project's machines differ 2-3x in speed (AMD EPYC and Intel Xeon VMs, with or without native bfloat16), and
`platform.processor()` says only "x86_64" on Linux, so every benchmark records the CPU's model name instead.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name, vCPU count, widest vector unit and native bfloat16 units.

    E.g. "AMD EPYC 9B14 (2 vCPU, AVX-512, AVX512-BF16)" or "AMD EPYC (2 vCPU, AVX2)".

    A virtual machine may report only a family name ("Intel(R) Xeon(R) Processor"), so the bfloat16 units are named
    from the CPU flags: where they are, bfloat16 training is native (`napari_tower.train.engine.cpu_has_native_bf16`
    decides that from torch's own checks; this reads the flags so that it needs no torch).
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    lines = text.splitlines()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())
    name = names[0] if names else (platform.processor() or platform.machine() or "unknown")
    # the widest vector unit too: an AVX2-only VM of the same model name runs float32 2-3x slower
    widest = next((label for flag, label in (("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), None)
    bf16 = [label for flag, label in (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16")) if flag in flags]
    units = ([widest] if widest else []) + bf16
    return f"{name} ({', '.join([f'{os.cpu_count()} vCPU', *units])})"


def keep_run_cpus(runs: list[dict], file_cpu: str | None) -> list[dict]:
    """Name the machine of each run in a resumed results file that predates per-run CPUs.

    A file's top-level CPU names the latest invocation's machine; once a run resumes on another machine, each run
    must keep its own, so runs recorded before that carry the file's CPU (or "unrecorded").
    """
    for run in runs:
        run.setdefault("cpu", file_cpu or "unrecorded")
    return runs

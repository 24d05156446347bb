"""The machine line: CPU model, cores, memory, Python, Pillow, libjpeg-turbo, simplejpeg."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import PIL
from PIL import features


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def describe() -> dict[str, object]:
    try:
        import simplejpeg

        simplejpeg_version = str(simplejpeg.__version__)
    except ImportError:
        simplejpeg_version = "not installed"
    turbo = features.version("libjpeg_turbo") if features.check_feature("libjpeg_turbo") else None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": _mem_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "libjpeg": features.version("jpg"),
        "libjpeg_turbo": turbo,
        "simplejpeg": simplejpeg_version,
    }


def line(info: dict[str, object]) -> str:
    return (
        f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; "
        f"Python {info['python']}, Pillow {info['pillow']} "
        f"(libjpeg-turbo {info['libjpeg_turbo'] or 'no'}), simplejpeg {info['simplejpeg']}; "
        f"Linux {info['kernel']}"
    )

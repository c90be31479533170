"""What a measurement ran on: CPU, cores, native bf16 / AMX and the load, for every speed or wall-time figure."""

from __future__ import annotations

import os
import platform
from typing import Any

from dissect_monai.utils.precision import cpu_has_amx, cpu_supports_bf16

__all__ = ["machine_state"]


def machine_state() -> dict[str, Any]:
    """CPU model, core count, native bf16 / AMX (``amx_bf16`` in ``/proc/cpuinfo``), and the 1-, 5- and 15-minute
    load averages right now."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return {
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "bf16": cpu_supports_bf16(),
        "amx": cpu_has_amx(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }

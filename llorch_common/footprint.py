"""How memory is measured, the same way by the pool that reports it and the worker that
measures itself (shared here: the three packages never import each other).

Device memory comes from NVML (bytes); a CPU worker's footprint is its resident set size.
"""

from __future__ import annotations

import os
from typing import Any


def rss_from_statm(statm: str) -> int:
    """Resident set size in bytes from the text of /proc/<pid>/statm."""
    return int(statm.split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_info(nvml: Any, handle: Any) -> Any:
    """NVML memory info, v2 when the driver and pynvml have it: v1 counts the driver's reserved
    memory as used (615 MiB on an idle H200 that nvidia-smi shows as 0 used). Same total and
    free either way."""
    version = getattr(nvml, "nvmlMemory_v2", None)
    if version is not None:
        try:
            return nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
        except (nvml.NVMLError, TypeError):  # old driver (no _v2 symbol) or old pynvml
            pass
    return nvml.nvmlDeviceGetMemoryInfo(handle)


def process_bytes(nvml: Any, handle: Any) -> dict[int, int]:
    """Device memory of each compute process on the device, by pid (empty where NVML cannot
    see pids, e.g. a container with its own pid namespace)."""
    return {
        int(p.pid): int(p.usedGpuMemory)
        for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        if p.usedGpuMemory
    }

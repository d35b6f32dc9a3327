"""Measured memory footprint of this worker: what the orchestrator budgets for the next one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def rss_bytes(statm: str | None = None) -> int:
    """Resident set size of this process (CPU workers), from /proc/self/statm."""
    text = statm if statm is not None else Path("/proc/self/statm").read_text()
    return int(text.split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_info(nvml: Any, handle: Any) -> Any:
    """NVML memory info, v2 when the driver and pynvml have it (v1 `used` also counts the
    driver's reserved memory), else v1. The pool has the same reader: packages share no code."""
    version = getattr(nvml, "nvmlMemory_v2", None)
    if version is not None:
        try:
            return nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
        except (nvml.NVMLError, TypeError):  # old driver (no _v2 symbol) or old pynvml
            pass
    return nvml.nvmlDeviceGetMemoryInfo(handle)


def gpu_used_bytes(index: int) -> int:
    """Device memory in use on NVML device `index` (all processes)."""
    import pynvml  # only GPU workers need NVML

    pynvml.nvmlInit()
    try:
        return int(memory_info(pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)).used)
    finally:
        pynvml.nvmlShutdown()


def gpu_process_bytes(index: int, pid: int, used_before: int) -> int:
    """This process's memory on NVML device `index`.

    NVML's per-process figure when it lists our pid; inside a container with its own pid
    namespace it does not, and the growth of the device's used memory since before the load
    (`used_before`) is the best measure left.
    """
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == pid and proc.usedGpuMemory:
                return int(proc.usedGpuMemory)
        return max(int(memory_info(pynvml, handle).used) - used_before, 0)
    finally:
        pynvml.nvmlShutdown()

"""Measured memory footprint of this worker: what the orchestrator budgets for the next one."""

from __future__ import annotations

from pathlib import Path

from llorch_common.footprint import memory_info, process_bytes, rss_from_statm


def rss_bytes() -> int:
    """Resident set size of this process (CPU workers)."""
    return rss_from_statm(Path("/proc/self/statm").read_text())


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
        own = process_bytes(pynvml, handle).get(pid)
        if own is not None:
            return own
        return max(int(memory_info(pynvml, handle).used) - used_before, 0)
    finally:
        pynvml.nvmlShutdown()

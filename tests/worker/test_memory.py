"""Measured footprint on CPU: this process's resident set."""

from __future__ import annotations

import os
from types import SimpleNamespace

from llorch_worker.memory import memory_info, rss_bytes


def test_rss_is_the_second_statm_field_in_pages() -> None:
    assert rss_bytes("1000 250 30 4 0 90 0\n") == 250 * os.sysconf("SC_PAGE_SIZE")


def test_rss_grows_with_memory_this_process_touches() -> None:
    before = rss_bytes()
    block = b"x" * (64 * 2**20)  # written: every page is touched
    assert rss_bytes() - before >= 32 * 2**20
    del block


class _Nvml:
    class NVMLError(Exception):
        pass

    nvmlMemory_v2 = 0x2000028

    def __init__(self, has_v2: bool) -> None:
        self.has_v2 = has_v2

    def nvmlDeviceGetMemoryInfo(self, handle: int, version: int | None = None) -> SimpleNamespace:
        if version is None:
            return SimpleNamespace(used=615)  # v1 counts the driver's reserved memory
        if not self.has_v2:
            raise self.NVMLError("Function Not Found")
        return SimpleNamespace(used=0)


def test_memory_info_reads_v2_when_the_driver_has_it() -> None:
    assert memory_info(_Nvml(has_v2=True), 0).used == 0
    assert memory_info(_Nvml(has_v2=False), 0).used == 615

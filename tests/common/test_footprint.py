"""Memory readings shared by the pool and the worker."""

import os
from types import SimpleNamespace

from llorch_common.footprint import memory_info, process_bytes, rss_from_statm


class FakeNvml:
    class NVMLError(Exception):
        pass

    nvmlMemory_v2 = 0x2000028

    def __init__(self, has_v2: bool) -> None:
        self.has_v2 = has_v2
        self.versions: list[int | None] = []

    def nvmlDeviceGetMemoryInfo(self, handle: int, version: int | None = None) -> SimpleNamespace:
        self.versions.append(version)
        if version is None:  # v1 counts the driver's reserved memory as used
            return SimpleNamespace(total=1000, free=900, used=100)
        if not self.has_v2:
            raise self.NVMLError("Function Not Found")
        return SimpleNamespace(total=1000, free=900, used=0)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        return [
            SimpleNamespace(pid=3, usedGpuMemory=42),
            SimpleNamespace(pid=4, usedGpuMemory=None),
        ]


def test_memory_info_prefers_v2_and_falls_back_to_v1() -> None:
    assert memory_info(FakeNvml(has_v2=True), 0).used == 0
    old_driver = FakeNvml(has_v2=False)
    assert memory_info(old_driver, 0).used == 100
    assert old_driver.versions == [FakeNvml.nvmlMemory_v2, None]


def test_process_bytes_skips_processes_nvml_cannot_measure() -> None:
    assert process_bytes(FakeNvml(has_v2=True), 0) == {3: 42}


def test_rss_is_the_second_statm_field_in_pages() -> None:
    assert rss_from_statm("1000 250 30 4 0 90 0\n") == 250 * os.sysconf("SC_PAGE_SIZE")

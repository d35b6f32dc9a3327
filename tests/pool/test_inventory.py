import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from llorch_pool.inventory import (
    Inventory,
    cpu_device,
    gpu_device,
    load_nvml,
    parse_cpu_name,
    parse_meminfo,
)

MEMINFO = """MemTotal:       24684084 kB
MemFree:        22558796 kB
MemAvailable:   23061024 kB
HugePages_Total:       0
"""
no_gpu_here = pytest.mark.skipif(
    Path("/dev/nvidiactl").exists(), reason="this host has an NVIDIA driver"
)


def test_nvml_values_become_a_gpu_device() -> None:
    device = gpu_device(1, b"GPU-abc", b"NVIDIA H100", 80 * 2**30, 70 * 2**30, 10 * 2**30)
    assert (device.index, device.uuid, device.name, device.kind) == (
        1,
        "GPU-abc",
        "NVIDIA H100",
        "gpu",
    )
    assert (device.total_bytes, device.free_bytes, device.used_bytes) == (
        80 * 2**30,
        70 * 2**30,
        10 * 2**30,
    )


def test_loading_workers_reduce_gpu_free_never_below_zero() -> None:
    assert gpu_device(0, "u", "n", 100, 60, 40, pending=25).free_bytes == 35
    assert gpu_device(0, "u", "n", 100, 60, 40, pending=90).free_bytes == 0


def test_cpu_device_bounded_by_capacity_and_available() -> None:
    small = cpu_device("p1", "cpu", capacity=1000, available=10**9, reserved=300)
    assert (small.index, small.uuid, small.kind) == (0, "cpu-p1", "cpu")
    assert (small.total_bytes, small.free_bytes, small.used_bytes) == (1000, 700, 300)
    tight_ram = cpu_device("p1", "cpu", capacity=1000, available=200, reserved=0)
    assert (tight_ram.free_bytes, tight_ram.used_bytes) == (200, 800)
    over = cpu_device("p1", "cpu", capacity=1000, available=10**9, reserved=5000)
    assert over.free_bytes == 0


def test_parse_meminfo_kib_to_bytes() -> None:
    assert parse_meminfo(MEMINFO) == (24684084 * 1024, 23061024 * 1024)
    assert parse_meminfo("MemTotal: 4 kB\nMemFree: 2 kB\n") == (4096, 2048)


def test_parse_cpu_name() -> None:
    assert parse_cpu_name("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n") == "AMD EPYC 7B13"
    assert parse_cpu_name("") == "cpu"


@no_gpu_here
def test_without_nvml_the_pool_reports_one_cpu_device() -> None:
    assert load_nvml() is None
    inventory = Inventory.probe("host-1", force_cpu=False, cpu_capacity=None)
    [device] = inventory.snapshot(pending={}, reserved={})
    total, _ = parse_meminfo(Path("/proc/meminfo").read_text())
    assert (device.kind, device.index, device.uuid) == ("cpu", 0, "cpu-host-1")
    assert device.total_bytes == total
    assert 0 < device.free_bytes <= total


def test_forced_cpu_with_capacity_counts_this_pools_workers() -> None:
    inventory = Inventory.probe("p", force_cpu=True, cpu_capacity=10**6)
    assert inventory.kind == "cpu"
    [device] = inventory.snapshot(pending={0: 4 * 10**5}, reserved={0: 4 * 10**5})
    assert (device.total_bytes, device.free_bytes) == (10**6, 6 * 10**5)


def test_device_memory_limit_caps_a_gpu_like_the_cpu_capacity() -> None:
    gib = 2**30
    # 141 GiB card, 140 free; limit 12 GiB, this pool's workers hold 9 on it: 3 GiB free
    capped = gpu_device(0, "u", "n", 141 * gib, 140 * gib, gib, limit=12 * gib, reserved=9 * gib)
    assert (capped.total_bytes, capped.free_bytes, capped.used_bytes) == (
        12 * gib,
        3 * gib,
        9 * gib,
    )
    # NVML's free (less the loading workers) still bounds it when the card is really full
    tight = gpu_device(0, "u", "n", 141 * gib, 2 * gib, 0, pending=gib, limit=12 * gib)
    assert (tight.total_bytes, tight.free_bytes) == (12 * gib, gib)
    # a limit above the card changes nothing but `used`'s meaning (total - free)
    big = gpu_device(0, "u", "n", 80 * gib, 70 * gib, 10 * gib, limit=200 * gib)
    assert (big.total_bytes, big.free_bytes, big.used_bytes) == (80 * gib, 70 * gib, 10 * gib)
    assert gpu_device(0, "u", "n", 100, 100, 0, limit=50, reserved=80).free_bytes == 0


class FakeNvml:
    """pynvml's surface that the inventory uses: two cards, v2 memory info optional."""

    class NVMLError(Exception):
        pass

    nvmlMemory_v2 = 0x2000028

    def __init__(self, has_v2: bool) -> None:
        self.has_v2 = has_v2
        self.versions: list[int | None] = []
        self.processes: dict[int, list[SimpleNamespace]] = {}

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        return self.processes.get(handle, [])

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-{handle}"

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA H200"

    def nvmlDeviceGetMemoryInfo(self, handle: int, version: int | None = None) -> SimpleNamespace:
        self.versions.append(version)
        if version is None:  # v1: the driver's reserved 615 MiB counted as used
            return SimpleNamespace(total=1000, free=900, used=100)
        if not self.has_v2:
            raise self.NVMLError("Function Not Found")
        return SimpleNamespace(total=1000, free=900, used=0, reserved=100)

    def nvmlShutdown(self) -> None:
        pass


def test_gpu_snapshot_applies_the_device_memory_limit_per_card() -> None:
    inventory = Inventory("p", FakeNvml(has_v2=True), gpu_limit=500)
    cards = inventory.snapshot(pending={1: 50}, reserved={0: 200, 1: 50})
    assert [(d.index, d.uuid, d.name, d.kind) for d in cards] == [
        (0, "GPU-0", "NVIDIA H200", "gpu"),
        (1, "GPU-1", "NVIDIA H200", "gpu"),
    ]
    assert [(d.total_bytes, d.free_bytes, d.used_bytes) for d in cards] == [
        (500, 300, 200),
        (500, 450, 50),
    ]
    unlimited = Inventory("p", FakeNvml(has_v2=True)).snapshot(pending={}, reserved={0: 200})
    assert [(d.total_bytes, d.free_bytes, d.used_bytes) for d in unlimited] == [(1000, 900, 0)] * 2


def test_worker_memory_on_the_cpu_is_each_pids_resident_set() -> None:
    inventory = Inventory("p", None)
    found = inventory.worker_memory([os.getpid(), 2**22 + 1])  # the second pid does not exist
    assert list(found) == [os.getpid()] and found[os.getpid()] > 10 * 2**20


def test_worker_memory_on_gpus_keeps_only_the_asked_pids() -> None:
    nvml = FakeNvml(has_v2=True)
    seen = SimpleNamespace
    nvml.processes = {
        0: [seen(pid=7, usedGpuMemory=5), seen(pid=8, usedGpuMemory=6)],
        1: [seen(pid=9, usedGpuMemory=None)],  # NVML reports None without permission
    }
    assert Inventory("p", nvml).worker_memory([7, 9]) == {7: 5}

from pathlib import Path

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

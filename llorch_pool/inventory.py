"""Device inventory: NVML GPUs when there are any, else ONE `cpu` device with RAM as capacity.

Pure converters (raw NVML numbers, /proc text -> `Device`) plus a thin probe. NVML memory
figures are bytes already, like every size on the wire.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llorch_common.footprint import memory_info, process_bytes, rss_from_statm
from schemas import Device


def _text(value: str | bytes) -> str:
    """Older pynvml releases return bytes for names and uuids."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def gpu_device(
    index: int,
    uuid: str | bytes,
    name: str | bytes,
    total: int,
    free: int,
    used: int,
    pending: int = 0,
    limit: int | None = None,
    reserved: int = 0,
) -> Device:
    """Pure: one NVML GPU as a `Device`. `pending` is memory promised to workers still loading
    (not yet visible to NVML), so two quick spawns do not both count the same free bytes.
    `limit` (`--device-memory-limit`) caps the card like `--cpu-memory-bytes` caps the CPU
    device: total = min(total, limit), free also bounded by limit - `reserved` (this pool's
    workers on the card)."""
    total, free, used = int(total), max(0, int(free) - pending), int(used)
    if limit is not None:
        total = min(total, limit)
        free = bounded_free(total, free, reserved)
        used = total - free
    return Device(
        index=index,
        uuid=_text(uuid),
        name=_text(name),
        kind="gpu",
        total_bytes=total,
        free_bytes=free,
        used_bytes=used,
    )


def bounded_free(capacity: int, available: int, reserved: int) -> int:
    """Pure: what the device says is free, but never more than a configured capacity leaves
    after this pool's workers (`reserved`: what they hold or will hold)."""
    return max(0, min(available, capacity - reserved))


def cpu_device(pool_id: str, name: str, capacity: int, available: int, reserved: int) -> Device:
    """Pure: the CPU device. `reserved` is what this pool's live workers hold or will hold;
    a configured capacity below RAM (`--cpu-memory-bytes`) therefore bounds what is free."""
    free = bounded_free(capacity, available, reserved)
    return Device(
        index=0,
        uuid=f"cpu-{pool_id}",
        name=name,
        kind="cpu",
        total_bytes=capacity,
        free_bytes=free,
        used_bytes=capacity - free,
    )


def parse_meminfo(text: str) -> tuple[int, int]:
    """Pure: (MemTotal, MemAvailable) in bytes from /proc/meminfo (which says kB = KiB)."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    total = fields["MemTotal"]
    return total, fields.get("MemAvailable", fields.get("MemFree", total))


def parse_cpu_name(text: str) -> str:
    """Pure: the first `model name` of /proc/cpuinfo, or `cpu`."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return "cpu"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def load_nvml() -> Any | None:
    """The initialised `pynvml` module, or None when NVML or its GPUs are absent."""
    try:
        import pynvml  # absent without NVIDIA drivers
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() > 0:
            return pynvml
        pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        pass
    return None


def _rss(pid: int) -> int | None:
    try:
        return rss_from_statm(Path(f"/proc/{pid}/statm").read_text())
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Inventory:
    """Probed once at start; `snapshot` reads live memory each call."""

    pool_id: str
    nvml: Any | None  # initialised pynvml, or None = CPU mode
    cpu_capacity: int | None = None  # --cpu-memory-bytes; None = RAM total
    gpu_limit: int | None = None  # --device-memory-limit: per-GPU capacity cap; None = none

    @classmethod
    def probe(
        cls, pool_id: str, force_cpu: bool, cpu_capacity: int | None, gpu_limit: int | None = None
    ) -> Inventory:
        return cls(pool_id, None if force_cpu else load_nvml(), cpu_capacity, gpu_limit)

    @property
    def kind(self) -> str:
        return "cpu" if self.nvml is None else "gpu"

    def snapshot(self, pending: Mapping[int, int], reserved: Mapping[int, int]) -> list[Device]:
        """`pending`: bytes promised to loading workers per device; `reserved`: bytes held or
        promised by all live workers per device (the CPU device's accounting)."""
        if self.nvml is None:
            return [self._cpu(reserved.get(0, 0))]
        nvml = self.nvml
        devices = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            mem = memory_info(nvml, handle)
            devices.append(
                gpu_device(
                    index,
                    nvml.nvmlDeviceGetUUID(handle),
                    nvml.nvmlDeviceGetName(handle),
                    mem.total,
                    mem.free,
                    mem.used,
                    pending.get(index, 0),
                    self.gpu_limit,
                    reserved.get(index, 0),
                )
            )
        return devices

    def worker_memory(self, pids: Iterable[int]) -> dict[int, int]:
        """Memory each worker process holds now, by pid: its NVML figure on a GPU, its RSS on
        the CPU. Pids NVML cannot see (or that just exited) are left out."""
        wanted = set(pids)
        if self.nvml is None:
            return {pid: rss for pid in wanted if (rss := _rss(pid)) is not None}
        found: dict[int, int] = {}
        for index in range(self.nvml.nvmlDeviceGetCount()):
            handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
            found.update(process_bytes(self.nvml, handle))
        return {pid: used for pid, used in found.items() if pid in wanted}

    def _cpu(self, reserved: int) -> Device:
        total, available = parse_meminfo(_read("/proc/meminfo"))
        capacity = self.cpu_capacity if self.cpu_capacity is not None else total
        name = parse_cpu_name(_read("/proc/cpuinfo"))
        return cpu_device(self.pool_id, name, capacity, available, reserved)

    def close(self) -> None:
        if self.nvml is not None:
            self.nvml.nvmlShutdown()

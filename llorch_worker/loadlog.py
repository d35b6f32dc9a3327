"""What llama.cpp's load log says about where the layers went and why a load failed. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from schemas import ErrorCode

# llama-model.cpp (load_tensors), one line per repeating layer plus one for the output layer.
# It names the device actually chosen, unlike "offloaded N/M layers", which echoes the request.
_LAYER = re.compile(r"layer\s+(\d+) assigned to device (\S+?),")
# What CUDA/ggml say when an allocation does not fit on the device.
_OOM = re.compile(r"out of memory|failed to allocate|unable to allocate|cudaMalloc failed", re.I)


@dataclass(frozen=True, slots=True)
class Placement:
    offloaded: int  # layers (repeating + output) placed on a non-CPU device
    total: int  # layers llama.cpp placed: n_layer + 1 (the output layer counts)

    @property
    def full(self) -> bool:
        return self.total > 0 and self.offloaded == self.total


def placement(lines: Iterable[str]) -> Placement:
    devices: dict[int, str] = {}
    for line in lines:
        if m := _LAYER.search(line):
            devices[int(m.group(1))] = m.group(2)
    on_gpu = sum(1 for dev in devices.values() if not dev.upper().startswith("CPU"))
    return Placement(offloaded=on_gpu, total=len(devices))


def load_failure_code(gpu: bool, lines: Iterable[str], error: str) -> ErrorCode:
    """A GPU load that ran out of device memory is INSUFFICIENT_VRAM; anything else failed."""
    if gpu and any(_OOM.search(text) for text in (*lines, error)):
        return ErrorCode.INSUFFICIENT_VRAM
    return ErrorCode.MODEL_LOAD_FAILED

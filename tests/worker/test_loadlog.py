"""Layer placement and load-failure codes from llama.cpp's load log."""

from __future__ import annotations

from llorch_worker.loadlog import Placement, load_failure_code, placement
from schemas import ErrorCode


def layer_lines(devices: list[str]) -> list[str]:
    return [
        f"load_tensors: layer {i:3d} assigned to device {dev}, is_swa = 0\n"
        for i, dev in enumerate(devices)
    ]


def test_all_layers_on_the_gpu_is_full_offload() -> None:
    lines = ["load_tensors: offloaded 3/3 layers to GPU\n", *layer_lines(["CUDA0"] * 3)]
    assert placement(lines) == Placement(offloaded=3, total=3)
    assert placement(lines).full


def test_layers_left_on_the_cpu_are_not_full_offload_even_if_the_summary_claims_so() -> None:
    # The "offloaded N/M" summary echoes the request; the per-layer lines say what happened.
    lines = ["load_tensors: offloaded 3/3 layers to GPU\n", *layer_lines(["CPU", "CUDA0", "CPU"])]
    assert placement(lines) == Placement(offloaded=1, total=3)
    assert not placement(lines).full


def test_no_placement_lines_is_never_full() -> None:
    assert not placement(["llama_model_loader: loaded meta data\n"]).full


def test_gpu_out_of_memory_is_insufficient_vram() -> None:
    lines = [
        "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 9000 MiB on device 0: "
        "cudaMalloc failed: out of memory\n"
    ]
    assert load_failure_code(True, lines, "Failed to load model") == ErrorCode.INSUFFICIENT_VRAM
    assert load_failure_code(True, [], "unable to allocate CUDA0 buffer") == (
        ErrorCode.INSUFFICIENT_VRAM
    )


def test_other_failures_and_cpu_failures_are_model_load_failed() -> None:
    assert load_failure_code(True, ["gguf: bad magic\n"], "Failed to load model") == (
        ErrorCode.MODEL_LOAD_FAILED
    )
    assert load_failure_code(False, [], "failed to allocate buffer") == ErrorCode.MODEL_LOAD_FAILED

"""llama_cpp must be imported before nats (a CUDA load segfaulted with the other order)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_the_entry_module_imports_llama_cpp_before_nats() -> None:
    out = python(
        "import json, sys; import llorch_worker.__main__; print(json.dumps(list(sys.modules)))"
    )
    assert out.returncode == 0, out.stderr
    modules = json.loads(out.stdout)
    assert "nats" in modules, "the entry module should load the service (and so nats)"
    assert modules.index("llama_cpp") < modules.index("nats")


@pytest.mark.parametrize("gpu", [True, False])
def test_engine_refuses_a_gpu_load_when_nats_came_first(gpu: bool, model_path: Path) -> None:
    out = python(
        "import asyncio, nats\n"
        "from llorch_worker.engine import Engine, LoadFailed\n"
        f"engine = Engine({str(model_path)!r}, 128, gpu={gpu}, threads=1)\n"
        "try:\n"
        "    print(asyncio.run(engine.load()))\n"
        "except LoadFailed as exc:\n"
        "    print(exc.code, exc.message)\n"
        "engine.close()\n"
    )
    assert out.returncode == 0, out.stderr
    if gpu:
        assert out.stdout.startswith("MODEL_LOAD_FAILED nats was imported before llama_cpp")
    else:  # a CPU worker loads whatever the order
        assert out.stdout.startswith("Loaded(layers_offloaded=0")


def test_imported_before_reads_the_import_order() -> None:
    from llorch_worker.engine import imported_before

    assert imported_before("nats", "llama_cpp", ["sys", "nats", "llama_cpp"])
    assert imported_before("nats", "llama_cpp", ["nats"])
    assert not imported_before("nats", "llama_cpp", ["llama_cpp", "nats"])
    assert not imported_before("nats", "llama_cpp", ["llama_cpp"])

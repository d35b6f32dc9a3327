"""The engine's load: a warm-up generation before the worker measures its memory."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import pytest

from llorch_worker.engine import Engine


async def test_load_warms_up_then_leaves_every_slot_empty(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached_after: list[list[int]] = []
    real = Engine._warm_up

    def spy(self: Engine) -> None:
        real(self)
        assert self._llama is not None
        memory = self._llama.memory
        cached_after.append([llama_cpp.llama_memory_seq_pos_max(memory, s) for s in range(3)])

    monkeypatch.setattr(Engine, "_warm_up", spy)
    engine = Engine(model_path, 128, gpu=False, threads=1, slots=3)
    try:
        loaded = await engine.load()
    finally:
        engine.close()
    assert loaded.layers_offloaded == 0
    # warmed once, then cleared: the first job of any slot starts from nothing
    assert cached_after == [[-1, -1, -1]]

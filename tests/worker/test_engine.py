"""The engine's load: a warm-up generation before the worker measures its memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from llorch_worker.engine import Engine


async def test_load_warms_up_then_leaves_an_empty_context(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens_after: list[int] = []
    real = Engine._warm_up

    def spy(self: Engine) -> None:
        real(self)
        assert self._llm is not None
        tokens_after.append(self._llm.n_tokens)

    monkeypatch.setattr(Engine, "_warm_up", spy)
    engine = Engine(model_path, 128, gpu=False, threads=1)
    try:
        loaded = await engine.load()
    finally:
        engine.close()
    assert loaded.layers_offloaded == 0
    assert tokens_after == [0]  # warmed once, then reset: the first job starts from nothing

"""Measured footprint on CPU: this process's resident set."""

from __future__ import annotations

from llorch_worker.memory import rss_bytes


def test_rss_grows_with_memory_this_process_touches() -> None:
    before = rss_bytes()
    block = b"x" * (64 * 2**20)  # written: every page is touched
    assert rss_bytes() - before >= 32 * 2**20
    del block

"""Measured footprint on CPU: this process's resident set."""

from __future__ import annotations

import os

from llorch_worker.memory import rss_bytes


def test_rss_is_the_second_statm_field_in_pages() -> None:
    assert rss_bytes("1000 250 30 4 0 90 0\n") == 250 * os.sysconf("SC_PAGE_SIZE")


def test_rss_grows_with_memory_this_process_touches() -> None:
    before = rss_bytes()
    block = b"x" * (64 * 2**20)  # written: every page is touched
    assert rss_bytes() - before >= 32 * 2**20
    del block

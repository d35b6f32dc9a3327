"""The running hash of a job's published text."""

from __future__ import annotations

import hashlib

from llorch_worker.texthash import RunningHash, text_hash


def test_blake2b_of_the_utf8_text_in_16_hex_digits() -> None:
    assert text_hash("héllo") == hashlib.blake2b("héllo".encode(), digest_size=8).hexdigest()
    assert len(text_hash()) == 16


def test_the_cut_into_events_does_not_matter_the_text_does() -> None:
    running = RunningHash()
    for piece in ("Par", "is", "."):
        running.update(piece)
    assert running.hexdigest() == text_hash("Paris.") == text_hash("P", "aris", "", ".")
    assert text_hash("Paris.") != text_hash("Paris!")

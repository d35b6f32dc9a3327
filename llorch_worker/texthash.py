"""The running hash of a job's published text: what a retried worker must regenerate exactly
before it may continue a client's stream. Pure.

BLAKE2b (8-byte digest, hex) over the UTF-8 bytes of every token text in seq order; events
carry no other text, so the hash at a seq is the hash of everything the client has read up to
it, however the text was cut into events."""

from __future__ import annotations

import hashlib


class RunningHash:
    __slots__ = ("_digest",)

    def __init__(self) -> None:
        self._digest = hashlib.blake2b(digest_size=8)

    def update(self, text: str) -> None:
        self._digest.update(text.encode("utf-8"))

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def text_hash(*texts: str) -> str:
    """The hash after `texts`, in order (`text_hash()` is a stream with no text yet)."""
    running = RunningHash()
    for text in texts:
        running.update(text)
    return running.hexdigest()

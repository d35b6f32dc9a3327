"""What the engine hands a job: one text per generated token, then exactly one Outcome; and the
per-token rule that decides them (end-of-generation, stop strings, max_tokens). Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llorch_worker.textstream import TextStream
from schemas import ErrorCode


@dataclass(frozen=True, slots=True)
class Finished:
    reason: Literal["stop", "length", "cancelled"]
    tokens_in: int
    tail: str  # text held back until the end (a partial stop match that never completed)


@dataclass(frozen=True, slots=True)
class Failed:
    code: ErrorCode
    message: str
    tokens_in: int = 0


Outcome = Finished | Failed
# What the engine thread hands to asyncio: one str per generated token ("" while text is held
# back), then exactly one Outcome.
Item = str | Outcome


def after_token(
    text: TextStream, piece: bytes | None, n_out: int, max_tokens: int, n_in: int
) -> tuple[str | None, Finished | None]:
    """One sampled token of a sequence: the text to deliver for it (None: nothing, it ended the
    sequence unseen) and the Outcome when the sequence ends with it. `piece` is the token's
    bytes, None for an end-of-generation token (never shown); `n_out` counts it."""
    if piece is None:
        return None, finish("stop", n_in, text)
    step = text.feed(piece)
    if step.stopped:
        return step.text, Finished("stop", n_in, "")
    if n_out >= max_tokens:
        return step.text, finish("length", n_in, text)
    return step.text, None


def finish(reason: Literal["stop", "length"], n_in: int, text: TextStream) -> Finished:
    """Generation ended: what the text still owes (a partial UTF-8 or stop match) as the tail."""
    last = text.finish()
    return Finished("stop" if last.stopped else reason, n_in, last.text)

"""OpenAI response objects, built from a job's events: the whole body (`stream: false`) and
the chunks of a stream, and their SSE frames. Pure: plain dicts, and bytes for the frames."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from schemas import CatalogEntry, End

from .mapping import Kind


@dataclass(frozen=True, slots=True)
class Head:
    """What every object of one response repeats."""

    kind: Kind
    id: str  # `chatcmpl-<job id>` / `cmpl-<job id>`: the job is findable from the response
    created: int  # unix seconds
    model: str

    @classmethod
    def of(cls, kind: Kind, job_id: str, created: int, model: str) -> Head:
        return cls(kind, f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{job_id}", created, model)

    def _object(self, chunk: bool) -> dict[str, Any]:
        name = "chat.completion" if self.kind == "chat" else "text_completion"
        if chunk and self.kind == "chat":
            name += ".chunk"
        return {"id": self.id, "object": name, "created": self.created, "model": self.model}


def usage(end: End) -> dict[str, int]:
    return {
        "prompt_tokens": end.tokens_in,
        "completion_tokens": end.tokens_out,
        "total_tokens": end.tokens_in + end.tokens_out,
    }


def _choice(
    kind: Kind, text: str | None, finish: str | None, first: bool = False
) -> dict[str, Any]:
    if kind == "completion":
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    delta: dict[str, Any] = {"role": "assistant"} if first else {}
    if text is not None:
        delta["content"] = text
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def whole(head: Head, text: str, end: End) -> dict[str, Any]:
    """The body of a `stream: false` response."""
    if head.kind == "chat":
        message = {"role": "assistant", "content": text, "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None}
    else:
        choice = {"index": 0, "text": text, "logprobs": None}
    choice["finish_reason"] = end.finish_reason
    return {**head._object(chunk=False), "choices": [choice], "usage": usage(end)}


def chunk(
    head: Head,
    text: str | None,
    include_usage: bool,
    finish: str | None = None,
    first: bool = False,
) -> dict[str, Any]:
    """One stream chunk: the role (chat, first), a piece of text, or the finish reason.
    With `include_usage` every chunk carries `usage: null` (OpenAI's shape)."""
    out = {**head._object(chunk=True), "choices": [_choice(head.kind, text, finish, first)]}
    if include_usage:
        out["usage"] = None
    return out


def sse(data: object) -> bytes:
    """One server-sent event holding `data` as JSON."""
    return b"data: " + msgspec.json.encode(data) + b"\n\n"


# Stands for a token's text while a frame is encoded: JSON-escaped, it cannot occur in the
# frame's other fields (ids and model names carry no control characters).
_TEXT = "\x00text\x00"


@dataclass(frozen=True, slots=True)
class TokenFrame:
    """The SSE frame of one token's chunk, `sse(chunk(head, text, include_usage))`, encoded
    once per response around its text: a token then costs the encoding of its text only."""

    before: bytes
    after: bytes

    @classmethod
    def of(cls, head: Head, include_usage: bool) -> TokenFrame:
        before, _, after = sse(chunk(head, _TEXT, include_usage)).partition(
            msgspec.json.encode(_TEXT)
        )
        return cls(before, after)

    def __call__(self, text: str) -> bytes:
        return self.before + msgspec.json.encode(text) + self.after


def usage_chunk(head: Head, end: End) -> dict[str, Any]:
    """The last chunk before `[DONE]` when `stream_options.include_usage`: no choices."""
    return {**head._object(chunk=True), "choices": [], "usage": usage(end)}


def models(entries: list[CatalogEntry], created: int) -> dict[str, Any]:
    """`GET /v1/models`: the catalog, in OpenAI's list shape."""
    return {"object": "list", "data": [model(e.model.name, created) for e in entries]}


def model(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "llorch"}

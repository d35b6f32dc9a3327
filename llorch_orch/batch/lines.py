"""Input lines of `llorch batch submit`: llorch's own job format or the OpenAI Batch API's.

Pure: a line becomes a BatchJob, or a LineError that names the line and, when the line still
names one, its custom_id (so the failure can be stored as that job's result).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from schemas import BatchJob, ProtocolError, check_id, decoder, encode

_job = decoder(BatchJob)
# body fields of an OpenAI request that map onto ours; others (n, logprobs, ...) are ignored
_OPENAI_FIELDS = ("model", "max_tokens", "temperature", "top_p", "seed", "stop")


@dataclass(frozen=True, slots=True)
class LineError:
    line: int  # 1-based line number in the file
    custom_id: str  # from the line when it has a valid one, else `line-<n>`
    message: str


def parse_line(text: str, line: int, default_model: str) -> BatchJob | LineError:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        return LineError(line, f"line-{line}", f"line {line}: malformed JSON: {exc}")
    if not isinstance(raw, dict):
        return LineError(line, f"line-{line}", f"line {line}: expected a JSON object")
    custom_id = raw.get("custom_id")
    if not isinstance(custom_id, str):
        return LineError(line, f"line-{line}", f"line {line}: custom_id (a string) is required")
    try:
        check_id(custom_id, "custom_id")
    except ProtocolError as exc:
        return LineError(line, f"line-{line}", f"line {line}: {exc.message}")
    try:
        fields = _openai_fields(raw) if "body" in raw else raw
        fields.setdefault("model", default_model)
        return _job(encode({**fields, "custom_id": custom_id}))
    except (ProtocolError, ValueError) as exc:
        message = exc.message if isinstance(exc, ProtocolError) else str(exc)
        return LineError(line, custom_id, f"line {line}: {message}")


def _openai_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """`{"custom_id", "method", "url", "body": {...}}`: completions or chat completions."""
    body = raw["body"]
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    fields = {k: body[k] for k in _OPENAI_FIELDS if body.get(k) is not None}
    if isinstance(fields.get("stop"), str):
        fields["stop"] = [fields["stop"]]
    if "prompt" in body:
        fields["prompt"] = body["prompt"]
    elif "messages" in body:
        fields["prompt"] = _concat_messages(body["messages"])
    else:
        raise ValueError("body needs `prompt` or `messages`")
    return fields


def _concat_messages(messages: Any) -> str:
    """Chat messages joined as plain text: the worker applies no chat template."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    parts = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise ValueError("each message needs a string `content`")
        parts.append(content)
    return "\n".join(parts)

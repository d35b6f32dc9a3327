"""Input lines of `llorch batch submit`: llorch's own job format or the OpenAI Batch API's.

Pure: a line becomes a BatchJob, or a LineError that names the line and, when the line still
names one, its custom_id (so the failure can be stored as that job's result).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, get_args

from schemas import BatchJob, ProtocolError, check_id, decoder, encode
from schemas.api import Role

_job = decoder(BatchJob)
# body fields of an OpenAI request that map onto ours; others (n, logprobs, ...) are ignored
_OPENAI_FIELDS = ("model", "max_tokens", "temperature", "top_p", "seed", "stop", "prompt")
# newer OpenAI names of our fields (chat completions deprecated `max_tokens` for this one)
_OPENAI_ALIASES = {"max_completion_tokens": "max_tokens"}
_ROLES: tuple[str, ...] = get_args(Role)


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
    """`{"custom_id", "method", "url", "body": {...}}`: completions (`body.prompt`, raw text)
    or chat completions (`body.messages`, rendered by the worker with the model's template).
    A body with both or neither is left for BatchJob's own check to refuse."""
    body = raw["body"]
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    renamed = {_OPENAI_ALIASES.get(k, k): v for k, v in body.items() if v is not None}
    fields = {k: renamed[k] for k in _OPENAI_FIELDS if k in renamed}
    if isinstance(fields.get("stop"), str):
        fields["stop"] = [fields["stop"]]
    if "messages" in renamed:
        fields["messages"] = _chat_messages(renamed["messages"])
    return fields


def _chat_messages(messages: Any) -> list[dict[str, str]]:
    """OpenAI chat messages as ours: `{role, content}` with the content as one string."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    return [_chat_message(n, m) for n, m in enumerate(messages, start=1)]


def _chat_message(n: int, message: Any) -> dict[str, str]:
    if not isinstance(message, dict):
        raise ValueError(f"message {n}: expected a JSON object")
    role = message.get("role")
    if role not in _ROLES:
        raise ValueError(f"message {n}: role {role!r} is not supported (use {', '.join(_ROLES)})")
    return {"role": role, "content": _text_content(n, message.get("content"))}


def _text_content(n: int, content: Any) -> str:
    """A string, or a list of text parts joined as they are (OpenAI splits text that way).
    Other parts (images, audio) are refused: dropping them would answer another question."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"message {n}: content must be a string or a list of text parts")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            unsupported = f"content part of type {kind!r} is not supported (text parts only)"
            raise ValueError(f"message {n}: {unsupported}")
        texts.append(part["text"])
    return "".join(texts)

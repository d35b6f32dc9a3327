"""OpenAI request bodies → llorch `GenerateRequest`s, field by field (docs/http.md#fields).

Pure: a decoded JSON body in, a `Plan` or an `ApiError` out. A field llorch maps is mapped; a
field that would change the answer and that llorch cannot honour (`n` > 1, `tools`,
`logprobs`, images…) is refused with a 400 that names it, never ignored; a field that changes
nothing about the generated text (`user`, `metadata`) is accepted. Defaults are OpenAI's
(temperature 1, top_p 1, no top-k), not llorch's, so the same request means the same sampling
here as elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from schemas import GenerateRequest

from .errors import ApiError, invalid, unsupported

Kind = Literal["chat", "completion"]

# OpenAI's ranges where they are narrower than the wire's (schemas/api.py)
MAX_TEMPERATURE = 2.0
MAX_SEED = 2**32 - 1


@dataclass(frozen=True, slots=True)
class Plan:
    """What one HTTP request asks for: the job, and how to answer."""

    kind: Kind
    request: GenerateRequest
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the usage


def _is_none(v: object) -> bool:
    return v is None


def _none_or(*neutral: object) -> Callable[[object], bool]:
    """A value that asks for nothing: absent, null, or one of `neutral` (compared by type too:
    `False == 0` in Python, and `logprobs: 0` does ask for something)."""
    return lambda v: v is None or any(type(v) is type(n) and v == n for n in neutral)


def _anything(_: object) -> bool:
    return True


# Fields that llorch cannot honour, accepted only at the value that asks for nothing.
_NEUTRAL: dict[str, Callable[[object], bool]] = {
    "n": _none_or(1),
    "best_of": _none_or(1),
    "echo": _none_or(False),
    "suffix": _none_or(""),
    "logprobs": _none_or(False),
    "top_logprobs": _none_or(0),
    "frequency_penalty": _none_or(0, 0.0),
    "presence_penalty": _none_or(0, 0.0),
    "logit_bias": _none_or({}),
    "tools": _none_or([]),
    "functions": _none_or([]),
    "tool_choice": _none_or("none"),
    "function_call": _none_or("none"),
    "parallel_tool_calls": _anything,  # without tools it says nothing
    "response_format": lambda v: v is None or v == {"type": "text"},
    "modalities": lambda v: v is None or v == ["text"],
    "audio": _is_none,
    "prediction": _is_none,
    "web_search_options": _is_none,
    "reasoning_effort": _is_none,
    "verbosity": _is_none,
    "store": _none_or(False),  # llorch keeps no completions to list later
    "service_tier": _none_or("auto", "default"),
    # informational: they change nothing about the text
    "user": _anything,
    "metadata": _anything,
    "safety_identifier": _anything,
    "prompt_cache_key": _anything,
}
_COMMON = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "stream_options",
}
_MAPPED: dict[Kind, set[str]] = {
    "chat": _COMMON | {"messages", "max_completion_tokens"},
    "completion": _COMMON | {"prompt"},
}
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_MESSAGE_FIELDS = {"role", "content", "refusal"}  # refusal: an assistant turn echoed back, null


def plan(kind: Kind, body: object) -> Plan:
    """The job an OpenAI `/v1/chat/completions` or `/v1/completions` body asks for."""
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    _refuse_unsupported(kind, body)
    fields: dict[str, Any] = {
        "model": _model(body.get("model")),
        "temperature": _number(body, "temperature", 1.0, 0.0, MAX_TEMPERATURE),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0),
        "top_k": 0,  # OpenAI has no top-k: off
        "stop": _stop(body.get("stop")),
        "priority": "interactive",
    }
    if (seed := _integer(body, "seed", 0, MAX_SEED)) is not None:
        fields["seed"] = seed
    limit = "max_completion_tokens" if body.get("max_completion_tokens") is not None else None
    if (max_tokens := _integer(body, limit or "max_tokens", 1, None)) is not None:
        fields["max_tokens"] = max_tokens
    if kind == "chat":
        fields["messages"] = _messages(body.get("messages"))
    else:
        fields["prompt"] = _prompt(body.get("prompt"))
    stream, include_usage = _stream(body)
    try:
        request = msgspec.convert(fields, GenerateRequest)
    except msgspec.ValidationError as exc:  # the wire's own bounds (lengths, counts)
        raise invalid(str(exc)) from None
    return Plan(kind, request, stream, include_usage)


def _refuse_unsupported(kind: Kind, body: Mapping[str, object]) -> None:
    for name, value in body.items():
        if name in _MAPPED[kind]:
            continue
        accepts = _NEUTRAL.get(name)
        if accepts is None:
            if value is not None:
                raise ApiError(
                    400,
                    f"unrecognized request argument supplied: {name}",
                    "unknown_parameter",
                    name,
                )
        elif not accepts(value):
            raise unsupported(name, f"only {_neutral_text(name)} is accepted")


def _neutral_text(name: str) -> str:
    return {
        "n": "1 (one choice per request)",
        "best_of": "1",
        "tools": "none (no tool calling)",
        "functions": "none (no function calling)",
        "tool_choice": '"none"',
        "function_call": '"none"',
        "response_format": '{"type": "text"}',
        "modalities": '["text"]',
        "logprobs": "false (no log probabilities)",
        "top_logprobs": "0",
        "frequency_penalty": "0",
        "presence_penalty": "0",
        "logit_bias": "none",
        "store": "false",
        "service_tier": '"auto"',
        "echo": "false",
        "suffix": "none",
    }.get(name, "null")


def _model(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise invalid("`model` is required: a model name from GET /v1/models", "model")
    return value


def _number(body: Mapping[str, object], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(f"`{name}` must be a number", name)
    if not lo <= value <= hi:
        raise invalid(f"`{name}` must be between {lo:g} and {hi:g}, got {value}", name)
    return float(value)


def _integer(body: Mapping[str, object], name: str, lo: int, hi: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"`{name}` must be an integer", name)
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise invalid(f"`{name}` must be {bound}, got {value}", name)
    return value


def _stop(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return list(value)
    raise invalid("`stop` must be a string or a list of strings", "stop")


def _stream(body: Mapping[str, object]) -> tuple[bool, bool]:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("`stream` must be true or false", "stream")
    options = body.get("stream_options")
    if options is None:
        return bool(stream), False
    if not stream:
        raise invalid("`stream_options` is only allowed when `stream` is true", "stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise unsupported("stream_options", 'only {"include_usage": bool} is accepted')
    include = options.get("include_usage")
    if include is not None and not isinstance(include, bool):
        raise invalid("`stream_options.include_usage` must be true or false", "stream_options")
    return True, bool(include)


def _prompt(value: object) -> str:
    """A string, or a list of exactly one string (a list of several asks for several
    choices; token ids need llorch's tokenizer, which lives in the worker)."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        raise unsupported("prompt", "send one prompt (a string) per request")
    raise invalid("`prompt` is required: a string", "prompt")


def _messages(value: object) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise invalid("`messages` is required: a non-empty list", "messages")
    return [_message(m, i) for i, m in enumerate(value)]


def _message(message: object, i: int) -> dict[str, str]:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise invalid(f"`{where}` must be an object", where)
    role = message.get("role")
    if role not in _ROLES:
        if isinstance(role, str) and role in ("tool", "function"):
            raise unsupported(f"{where}.role", f"no tool calling, so no {role!r} messages")
        raise invalid(f"`{where}.role` must be one of {', '.join(_ROLES)}", f"{where}.role")
    for name, extra in message.items():
        if name not in _MESSAGE_FIELDS and extra is not None:
            raise unsupported(f"{where}.{name}", "messages carry only `role` and `content`")
    return {"role": _ROLES[role], "content": _content(message.get("content"), where)}


def _content(content: object, where: str) -> str:
    """A string, or text parts joined by newlines; any other part (image, audio, file) is
    refused: the models llorch serves read text only."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(f"`{where}.content` must be a string or a list of text parts", where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            what = f"{where}.content[{j}]"
            raise unsupported(what, f"only text parts are accepted (got type {kind!r})")
        texts.append(part["text"])
    return "\n".join(texts)
